"""Command lines that start kiln's own sandbox helper modules in a fresh interpreter.

Helpers run as ``python -I -S -c <stub>``: isolated from PYTHONPATH, the user site and the current
directory, and without site-packages, so they start fast and import nothing but the standard
library and kiln's sandbox modules (found through the path kiln itself was imported from).
"""

from __future__ import annotations

import sys
from pathlib import Path

import kiln

# The directory that contains the `kiln` package (src/ in a checkout, site-packages when installed).
KILN_PARENT = str(Path(kiln.__file__).resolve().parent.parent)


def python_argv(module: str, *args: str) -> list[str]:
    """argv running ``module.main()`` in a new interpreter; ``args`` become sys.argv[1:]."""
    stub = f"import sys; sys.path.insert(0, {KILN_PARENT!r}); from {module} import main; main()"
    return [sys.executable, "-I", "-S", "-c", stub, *args]
