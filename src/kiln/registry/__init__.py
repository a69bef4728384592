"""kiln's registry client (OCI distribution spec): references, auth, pull, push, copy.

The public API lives in :mod:`kiln.registry.transfer`; this package imports nothing eagerly so
that ``kiln.registry.reference`` stays cheap to import.
"""
