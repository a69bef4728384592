"""The registry client's public API, as the CLI and the build engine use it.

    pull(ref, store, *, platform=None, options, progress) -> Descriptor   # tagged manifest
    push(store, src, dest, *, options, progress) -> Descriptor            # pushed manifest
    copy(src, dest, *, options, progress, platform=None) -> Descriptor    # top manifest at dest
    fetch_manifest(ref, options) -> (raw bytes, media type, digest)
    head_manifest(ref, options) -> Descriptor | None

``options`` is a :class:`RegistryOptions` (defaults apply when omitted); ``progress`` any
:class:`ProgressSink` (thread-safe; :class:`NullProgress` when omitted). Failures raise
``RegistryError`` / ``AuthError`` / ``DigestMismatchError`` / ``ManifestError`` /
``ImageNotFoundError`` with one line naming the reference.
"""

from __future__ import annotations

from kiln.registry.copy import copy
from kiln.registry.options import RegistryOptions
from kiln.registry.progress import NullProgress, ProgressSink
from kiln.registry.pull import INDEX_ANNOTATION, fetch_manifest, head_manifest, pull
from kiln.registry.push import push
from kiln.registry.reference import Reference

__all__ = [
    "INDEX_ANNOTATION",
    "NullProgress",
    "ProgressSink",
    "Reference",
    "RegistryOptions",
    "copy",
    "fetch_manifest",
    "head_manifest",
    "pull",
    "push",
]
