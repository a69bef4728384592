"""kiln: a daemonless, rootless container image builder."""

import os

__version__ = "0.1.0"

# pydantic scans every installed distribution's entry points for plugins on first import
# (tens of milliseconds of CLI start-up); kiln uses none.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
