"""RUN: one command in the sandbox on an overlay of the stage's snapshots, with its mounts.

Secrets reach the command only as a read-only file (or an env var of that one process); they
are never in the plan, the cache key, the layer (the mount point is a placeholder outside the
upper directory) or the log.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.build.overlay import merged_view, mount_overlay, umount
from kiln.build.plan import ImageSource, RunMount, RunStep, StageSource
from kiln.build.snapshots import discard
from kiln.build.users import resolve_process_user
from kiln.errors import BuildError
from kiln.oci.digest import Digest
from kiln.sandbox.process import run as run_process
from kiln.sandbox.rootpath import resolve_in_root
from kiln.sandbox.spec import Mount, OverlayRootfs, ProcessSpec

if TYPE_CHECKING:
    from concurrent.futures import Future

    from kiln.build.executor import Executor, StageResult
    from kiln.build.image import Image
    from kiln.build.log import StepLog

#: Where a RUN step runs: overlay layers (top-most first) with an upper dir, or a plain directory.
RootfsSetup = OverlayRootfs | Path

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class RunFailedError(BuildError):
    """A RUN command exited non-zero; ``tail`` holds the end of its output."""

    def __init__(self, message: str, tail: str) -> None:
        super().__init__(message)
        self.tail = tail


def run_step(
    ex: Executor,
    step: RunStep,
    image: Image,
    rootfs: RootfsSetup,
    futures: dict[int, Future[StageResult]],
    steplog: StepLog,
) -> None:
    """Run ``step`` on ``rootfs``: an overlay of snapshots (the normal case) or a plain directory
    (the walk-and-compare fallback where overlayfs is not available)."""
    with contextlib.ExitStack() as stack:
        spec_user = step.user or image.config.config.user or "0"
        if isinstance(rootfs, Path):
            user = resolve_process_user(rootfs, spec_user)
        else:
            with merged_view([Path(p) for p in reversed(rootfs.lowerdirs)], ex.snapshots.scratch) as view:
                user = resolve_process_user(view, spec_user)
        env = dict(step.env)
        env.setdefault("PATH", DEFAULT_PATH)
        env.setdefault("HOME", user.home)
        mounts = [m for rm in step.mounts if (m := _mount(ex, stack, rm, step, env, futures)) is not None]
        spec = ProcessSpec(
            rootfs=str(rootfs) if isinstance(rootfs, Path) else rootfs,
            argv=list(step.argv),
            env=env,
            cwd=step.workdir or "/",
            uid=user.uid,
            gid=user.gid,
            additional_gids=list(user.groups),
            mounts=mounts,
            network="none" if step.network == "none" else "host",
            timeout=ex.options.step_timeout,
            on_output=steplog.output,
        )
        result = run_process(spec)
    if not result.ok:
        cmd = shlex.join(step.argv)
        why = "timed out" if result.timed_out else f"exit code: {result.exit_code}"
        raise RunFailedError(
            f"{ex.where(step.line)}: process \"{cmd}\" did not complete successfully: {why}",
            result.output_tail.decode("utf-8", "replace")[-2000:],
        )


def _mount(
    ex: Executor,
    stack: contextlib.ExitStack,
    rm: RunMount,
    step: RunStep,
    env: dict[str, str],
    futures: dict[int, Future[StageResult]],
) -> Mount | None:
    where = f"{ex.where(step.line)}: RUN --mount=type={rm.type}"
    if rm.type == "tmpfs":
        opts = (f"size={rm.size}",) if rm.size else ()
        return Mount("tmpfs", _target(rm, where), options=opts)
    if rm.type == "cache":
        path = stack.enter_context(_cache_dir(ex, rm))
        return Mount("bind", _target(rm, where), str(path), readonly=rm.readonly)
    if rm.type == "secret":
        return _secret(ex, stack, rm, env, where)
    if rm.type == "bind":
        root = _bind_root(ex, stack, rm, step, futures)
        rel = resolve_in_root(str(root), rm.source or "/")
        source = root / rel
        if not source.exists():
            raise BuildError(f"{where}: source {rm.source or '/'!r} does not exist")
        if rm.readonly or (rm.source_from is None and not _rw(rm)):
            return Mount("bind", _target(rm, where), str(source), readonly=True)
        # rw binds see their writes only during this step (as BuildKit): an overlay with a throwaway upper.
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=ex.snapshots.scratch)))
        for d in ("upper", "work", "merged"):
            (scratch / d).mkdir()
        mount_overlay(scratch / "merged", [source], scratch / "upper", scratch / "work")
        stack.callback(discard, scratch / "work")
        stack.callback(umount, scratch / "merged")
        return Mount("bind", _target(rm, where), str(scratch / "merged"))
    raise BuildError(f"{where}: not supported by kiln yet")


def _rw(rm: RunMount) -> bool:
    return not rm.readonly


def _target(rm: RunMount, where: str) -> str:
    if not rm.target:
        raise BuildError(f"{where}: target is required")
    return rm.target if rm.target.startswith("/") else "/" + rm.target


def _bind_root(ex: Executor, stack: contextlib.ExitStack, rm: RunMount, step: RunStep, futures: dict[int, Future[StageResult]]) -> Path:
    src = rm.source_from
    if isinstance(src, StageSource):
        layers = futures[src.stage].result().image.layers
        return stack.enter_context(merged_view(ex.snapshots.ensure(layers), ex.snapshots.scratch))
    if isinstance(src, ImageSource):
        raise BuildError(f"{ex.where(step.line)}: RUN --mount from an image is resolved by the frontend into a stage")
    if ex.options.context_dir is None:
        raise BuildError(f"{ex.where(step.line)}: RUN --mount=type=bind needs a build context")
    return ex.options.context_dir


@contextlib.contextmanager
def _cache_dir(ex: Executor, rm: RunMount) -> Iterator[Path]:
    """A cache mount lives in the store between builds; ``sharing`` says how builds share it."""
    cache_id = rm.id or rm.target
    root = ex.store.state_dir / "cache-mounts"
    path = root / Digest.of(cache_id.encode()).hex
    root.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(root / f".{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if rm.sharing == "locked":
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
        elif rm.sharing == "private":
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # in use by another build: this one gets a throwaway directory of its own
                with tempfile.TemporaryDirectory(dir=ex.snapshots.scratch) as private:
                    _init_cache_dir(Path(private), rm)
                    yield Path(private)
                return
        if not path.is_dir():
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=".new-"))
            _init_cache_dir(tmp, rm)
            with contextlib.suppress(OSError):
                os.rename(tmp, path)
            if tmp.exists():
                tmp.rmdir()
        yield path
    finally:
        os.close(lock_fd)


def _init_cache_dir(path: Path, rm: RunMount) -> None:
    os.chmod(path, rm.mode if rm.mode is not None else 0o755)
    if os.geteuid() == 0:
        os.chown(path, rm.uid or 0, rm.gid or 0)


def _secret(ex: Executor, stack: contextlib.ExitStack, rm: RunMount, env: dict[str, str], where: str) -> Mount | None:
    secret_id = rm.id or os.path.basename(rm.target)
    value: bytes | None = None
    if secret_id in ex.options.secrets:
        try:
            value = ex.options.secrets[secret_id].read_bytes()
        except OSError as e:
            raise BuildError(f"{where}: secret {secret_id!r}: cannot read its source file: {e.strerror}") from None
    elif secret_id in ex.options.secret_envs:
        raw = os.environ.get(ex.options.secret_envs[secret_id])
        value = raw.encode() if raw is not None else None
    if value is None:
        if rm.required:
            raise BuildError(f"{where}: secret {secret_id!r} is required but was not given (--secret id={secret_id},src=FILE)")
        return None
    if rm.env:
        env[rm.env] = value.decode("utf-8", "replace")
        if not rm.target:
            return None
    holder = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=ex.snapshots.scratch, prefix="secret-")))
    os.chmod(holder, 0o700)
    file = holder / "secret"
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "wb") as f:
        f.write(value)
    os.chmod(file, rm.mode if rm.mode is not None else 0o400)
    if os.geteuid() == 0:
        os.chown(file, rm.uid or 0, rm.gid or 0)
    target = rm.target or f"/run/secrets/{secret_id}"
    return Mount("bind", target if target.startswith("/") else "/" + target, str(file), readonly=True)
