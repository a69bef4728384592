"""Rootless sandbox: user namespaces with a full id mapping, and processes in a root filesystem.

``ensure_userns()`` puts the whole kiln process into a user namespace where it is uid 0;
``run(ProcessSpec(...))`` then runs a build step in fresh mount/PID/IPC/UTS(/net) namespaces.
"""

from .idmap import IdRange, Mapping
from .process import run
from .spec import ExecFailedError, Mount, OverlayRootfs, ProcessResult, ProcessSpec
from .userns import ensure_userns, in_userns_mapping, run_in_userns

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
