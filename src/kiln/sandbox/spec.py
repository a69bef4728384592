"""What to run in a sandbox (ProcessSpec) and what came of it (ProcessResult).

The spec travels to the sandbox helper as JSON; everything here is standard library only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from kiln.errors import SandboxError

from .caps import DEFAULT_CAPABILITIES, unknown_capabilities

# Overlay mounts made by the sandbox use the `userxattr` option in every mode (real root or
# rootless), so opaque directories are marked with this xattr prefix and whiteouts are 0/0
# character devices. The snapshotter reads upper directories with this convention.
OVERLAY_XATTR_PREFIX = "user.overlay."

OutputCallback = Callable[[bytes], None]


class ExecFailedError(SandboxError):
    """The command could not be started in the sandbox (not found, not executable, bad cwd/uid)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Mount:
    """A mount inside the sandbox. ``bind``: host ``source`` (file or directory) on ``target``;
    ``tmpfs``: a fresh tmpfs, ``options`` such as ``size=64m`` or ``mode=1777``."""

    type: Literal["bind", "tmpfs"]
    target: str
    source: str | None = None
    readonly: bool = False
    options: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "target": self.target,
            "source": self.source,
            "readonly": self.readonly,
            "options": list(self.options),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Mount:
        kind: Literal["bind", "tmpfs"] = "tmpfs" if data["type"] == "tmpfs" else "bind"
        return cls(
            kind, data["target"], data.get("source"), bool(data.get("readonly", False)), tuple(data.get("options", ()))
        )


@dataclass(frozen=True)
class OverlayRootfs:
    """A root filesystem assembled by the sandbox as overlayfs.

    ``lowerdirs`` are listed top-most first (overlayfs order); writes land in ``upperdir``.
    ``workdir`` must be an empty directory on the same filesystem as ``upperdir``.
    """

    lowerdirs: tuple[str, ...]
    upperdir: str
    workdir: str

    def to_json(self) -> dict[str, Any]:
        return {"lowerdirs": list(self.lowerdirs), "upperdir": self.upperdir, "workdir": self.workdir}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OverlayRootfs:
        return cls(tuple(data["lowerdirs"]), data["upperdir"], data["workdir"])


@dataclass
class ProcessSpec:
    """A command to run as ``uid``:``gid`` in ``rootfs`` inside fresh mount/PID/IPC/UTS namespaces.

    ``env`` is the complete environment (nothing is inherited); its PATH is used to find argv[0].
    ``network``: ``host`` shares the host network, ``none`` gives a namespace with only loopback.
    ``capabilities``: what a uid-0 command keeps (None keeps all, e.g. to nest kiln inside).
    ``mask_proc``: when kiln is real root, make /proc/sys & co read-only (a nested kiln as real
    root's build step needs False: the kernel only lets it mount proc where proc is unmasked).
    ``etc_hosts``/``resolv_conf``: host files bind-mounted read-only (None: not mounted).
    """

    rootfs: str | OverlayRootfs
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: list[int] = field(default_factory=list)
    mounts: list[Mount] = field(default_factory=list)
    network: Literal["host", "none"] = "host"
    hostname: str = "kiln"
    timeout: float | None = None
    stdin: bytes | None = None
    on_output: OutputCallback | None = None
    read_only_rootfs: bool = False
    capabilities: tuple[str, ...] | None = DEFAULT_CAPABILITIES
    mask_proc: bool = True
    etc_hosts: str | None = "/etc/hosts"
    resolv_conf: str | None = "/etc/resolv.conf"
    tail_limit: int = 64 * 1024

    def validate(self) -> None:
        if not self.argv:
            raise SandboxError("sandbox: empty command")
        if self.network not in ("host", "none"):
            raise SandboxError(f"sandbox: network must be 'host' or 'none', not {self.network!r}")
        if not self.cwd.startswith("/"):
            raise SandboxError(f"sandbox: working directory {self.cwd!r} is not absolute")
        for m in self.mounts:
            if not m.target.startswith("/"):
                raise SandboxError(f"sandbox: mount target {m.target!r} is not absolute")
            if m.type == "bind" and not m.source:
                raise SandboxError(f"sandbox: bind mount on {m.target} has no source")
            if m.type not in ("bind", "tmpfs"):
                raise SandboxError(f"sandbox: unknown mount type {m.type!r} for {m.target}")
        if self.capabilities is not None and (bad := unknown_capabilities(self.capabilities)):
            raise SandboxError(f"sandbox: unknown capabilities {', '.join(bad)}")
        if isinstance(self.rootfs, OverlayRootfs) and not self.rootfs.lowerdirs:
            raise SandboxError("sandbox: an overlay root filesystem needs at least one lower directory")

    def to_json(self) -> dict[str, Any]:
        """The part of the spec the sandbox helper needs (no timeout, stdin or callback)."""
        rootfs: Any = self.rootfs.to_json() if isinstance(self.rootfs, OverlayRootfs) else self.rootfs
        return {
            "rootfs": rootfs,
            "argv": list(self.argv),
            "env": dict(self.env),
            "cwd": self.cwd,
            "uid": self.uid,
            "gid": self.gid,
            "additional_gids": list(self.additional_gids),
            "mounts": [m.to_json() for m in self.mounts],
            "network": self.network,
            "hostname": self.hostname,
            "read_only_rootfs": self.read_only_rootfs,
            "capabilities": None if self.capabilities is None else list(self.capabilities),
            "mask_proc": self.mask_proc,
            "etc_hosts": self.etc_hosts,
            "resolv_conf": self.resolv_conf,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessSpec:
        """Inverse of :meth:`to_json`; missing keys take their defaults, plus ``timeout``/``stdin``."""
        raw_root = data["rootfs"]
        rootfs = OverlayRootfs.from_json(raw_root) if isinstance(raw_root, dict) else str(raw_root)
        spec = cls(rootfs=rootfs, argv=[str(a) for a in data["argv"]])
        spec.env = {str(k): str(v) for k, v in data.get("env", {}).items()}
        spec.cwd = str(data.get("cwd", spec.cwd))
        spec.uid = int(data.get("uid", spec.uid))
        spec.gid = int(data.get("gid", spec.gid))
        spec.additional_gids = [int(g) for g in data.get("additional_gids", [])]
        spec.mounts = [Mount.from_json(m) for m in data.get("mounts", [])]
        spec.network = "none" if data.get("network") == "none" else "host"
        spec.hostname = str(data.get("hostname", spec.hostname))
        spec.read_only_rootfs = bool(data.get("read_only_rootfs", False))
        if "capabilities" in data:
            caps = data["capabilities"]
            spec.capabilities = None if caps is None else tuple(str(c) for c in caps)
        spec.mask_proc = bool(data.get("mask_proc", True))
        spec.etc_hosts = data.get("etc_hosts", spec.etc_hosts)
        spec.resolv_conf = data.get("resolv_conf", spec.resolv_conf)
        if data.get("timeout") is not None:
            spec.timeout = float(data["timeout"])
        if data.get("stdin") is not None:
            spec.stdin = str(data["stdin"]).encode()
        return spec

    def dumps(self) -> bytes:
        return json.dumps(self.to_json()).encode()


@dataclass(frozen=True)
class ProcessResult:
    """How a sandboxed command ended.

    ``exit_code`` is 128+signal when it was killed (``signal`` then says which). ``output_tail`` is
    the last ``tail_limit`` bytes of its combined stdout/stderr, for error messages.
    ``placeholders``: mount points that did not exist in the root filesystem (paths inside it),
    created for the run and removed again before ``run`` returned; with an overlay root they
    normally live in a scratch lower layer and never touch the upper directory.
    """

    exit_code: int
    signal: int | None
    timed_out: bool
    output_tail: bytes
    duration: float
    placeholders: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.exit_code == 0
