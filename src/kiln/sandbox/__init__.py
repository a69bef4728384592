"""Rootless sandbox: user namespaces with a full id mapping, and processes in a root filesystem.

``ensure_userns()`` puts the whole kiln process into a user namespace where it is uid 0;
``run(ProcessSpec(...))`` then runs a build step in fresh mount/PID/IPC/UTS(/net) namespaces.

Names are imported lazily: the sandbox helper processes import single submodules of this
package at every build step, and should not pay for the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .idmap import IdRange, Mapping
    from .process import run
    from .spec import ExecFailedError, Mount, OverlayRootfs, ProcessResult, ProcessSpec
    from .userns import ensure_userns, in_userns_mapping, run_in_userns

_EXPORTS = {
    "IdRange": "idmap",
    "Mapping": "idmap",
    "run": "process",
    "ExecFailedError": "spec",
    "Mount": "spec",
    "OverlayRootfs": "spec",
    "ProcessResult": "spec",
    "ProcessSpec": "spec",
    "ensure_userns": "userns",
    "in_userns_mapping": "userns",
    "run_in_userns": "userns",
}

__all__ = [
    "ExecFailedError",
    "IdRange",
    "Mapping",
    "Mount",
    "OverlayRootfs",
    "ProcessResult",
    "ProcessSpec",
    "ensure_userns",
    "in_userns_mapping",
    "run",
    "run_in_userns",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'kiln.sandbox' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
