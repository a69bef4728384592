"""Run an image's process rootless, the way podman run does, on kiln's snapshots and sandbox."""

from __future__ import annotations

import contextlib
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kiln.build.image import Image
from kiln.build.overlay import merged_view
from kiln.build.snapshots import Snapshots, discard
from kiln.build.users import resolve_process_user
from kiln.errors import UsageError
from kiln.sandbox.process import run as run_process
from kiln.sandbox.spec import Mount, OverlayRootfs, ProcessResult, ProcessSpec

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class RunSpec:
    """What the user asked for, over the image's defaults."""

    command: list[str] = field(default_factory=list)  # replaces Cmd
    entrypoint: list[str] | None = None  # replaces Entrypoint ([] clears it)
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    workdir: str | None = None
    volumes: list[Mount] = field(default_factory=list)
    network: str = "host"
    hostname: str | None = None
    remove: bool = True
    timeout: float | None = None
    stdin: bytes | None = None
    on_output: Callable[[bytes], None] | None = None


@dataclass
class RunOutcome:
    result: ProcessResult
    container_id: str
    kept_upper: Path | None


def parse_volume(text: str) -> Mount:
    """``-v HOST:CONTAINER[:ro|rw]`` as podman takes it."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise UsageError(f"-v {text!r}: expected HOST-DIR:CONTAINER-DIR[:ro]")
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise UsageError(f"-v {text!r}: mode must be ro or rw")
    host = Path(parts[0]).resolve()
    if not host.exists():
        raise UsageError(f"-v {text!r}: {host} does not exist")
    return Mount("bind", parts[1], str(host), readonly=mode == "ro")


def command_line(image: Image, spec: RunSpec) -> list[str]:
    cfg = image.config.config
    entrypoint = spec.entrypoint if spec.entrypoint is not None else (cfg.entrypoint or [])
    cmd = spec.command or ([] if spec.entrypoint is not None else (cfg.cmd or []))
    argv = [*entrypoint, *cmd]
    if not argv:
        raise UsageError("the image has no Entrypoint or Cmd: give a command")
    return argv


def run_container(snapshots: Snapshots, image: Image, spec: RunSpec) -> RunOutcome:
    cfg = image.config.config
    argv = command_line(image, spec)
    env = cfg.env_dict()
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOSTNAME", spec.hostname or "kiln")
    env.update(spec.env)
    lowers = snapshots.ensure(image.layers)
    container_id = secrets.token_hex(6)
    upper, work = snapshots.new_upper()
    with contextlib.ExitStack() as stack:
        with merged_view(lowers, snapshots.scratch) as view:
            user = resolve_process_user(view, spec.user or cfg.user or "0")
        env.setdefault("HOME", user.home)
        if not lowers:
            empty = upper.parent / "empty"
            empty.mkdir()
            lowers = [empty]
        process = ProcessSpec(
            rootfs=OverlayRootfs(tuple(str(p) for p in reversed(lowers)), str(upper), str(work)),
            argv=argv,
            env=env,
            cwd=spec.workdir or cfg.working_dir or "/",
            uid=user.uid,
            gid=user.gid,
            additional_gids=list(user.groups),
            mounts=list(spec.volumes),
            network="none" if spec.network == "none" else "host",
            hostname=spec.hostname or "kiln",
            timeout=spec.timeout,
            stdin=spec.stdin,
            on_output=spec.on_output,
        )
        if spec.remove:
            stack.callback(discard, upper.parent)
        result = run_process(process)
    kept = None
    if not spec.remove:
        kept = snapshots.scratch.parent / "containers" / container_id
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(upper), kept)
        discard(upper.parent)
    return RunOutcome(result, container_id, kept)
