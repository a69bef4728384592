"""Rootless entry: re-execute kiln as uid 0 inside a new user namespace with a full id mapping.

Like ``buildah unshare``: an unprivileged kiln starts a child through :mod:`kiln.sandbox.bootstrap`,
which unshares a user namespace and waits; this process writes the child's uid/gid maps (through
the setuid ``newuidmap``/``newgidmap`` when /etc/subuid grants a range), then the child becomes
uid 0 and execs the real command. Everything kiln does afterwards (unpacking layers with chown,
mounting overlayfs, running build steps) happens as root of that namespace.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from kiln.errors import SandboxError

from . import caps, launch
from .idmap import (
    IdRange,
    Mapping,
    identity_ranges,
    map_text,
    newidmap_args,
    parse_subid,
    read_mapping,
    rootless_ranges,
)

ENV_MARKER = "KILN_IN_USERNS"
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
_SI_KERNEL = 0x80  # si_code of signals the kernel generates, e.g. ^C from the terminal


@dataclass(frozen=True)
class MappingPlan:
    """How the maps of a new user namespace will be written."""

    uids: tuple[IdRange, ...]
    gids: tuple[IdRange, ...]
    method: str  # "newidmap" (setuid helpers), "direct" (we write the files), "single" (own id only)
    warning: str | None = None


def in_userns_mapping() -> Mapping:
    """The uid/gid maps of the user namespace this process runs in."""
    return read_mapping("self")


def needs_userns() -> bool:
    """True unless this process can already create mount namespaces (real root, or inside ours).

    The capability, not the uid, decides: uid 0 of a container or of a kiln build step lacks
    CAP_SYS_ADMIN and gets a nested namespace of its own, where it has every capability again.
    """
    return not caps.has_capability("CAP_SYS_ADMIN")


def plan_mapping(uid: int | None = None, gid: int | None = None) -> MappingPlan:
    """Choose the maps for a new user namespace created by this process."""
    uid = os.getuid() if uid is None else uid
    gid = os.getgid() if gid is None else gid
    if uid == 0 and caps.has_capability("CAP_SETUID") and caps.has_capability("CAP_SETGID"):
        # A privileged root without CAP_SYS_ADMIN (a container's root, or a kiln build step):
        # it may map every id it has to itself.
        here = read_mapping("self")
        return MappingPlan(identity_ranges(here.uids), identity_ranges(here.gids), "direct")
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    sub_uids = parse_subid(_read("/etc/subuid"), user, uid)
    sub_gids = parse_subid(_read("/etc/subgid"), user, uid)
    helpers = shutil.which("newuidmap") and shutil.which("newgidmap")
    if helpers and sub_uids and sub_gids:
        return MappingPlan(rootless_ranges(uid, sub_uids), rootless_ranges(gid, sub_gids), "newidmap")
    reason = "newuidmap/newgidmap not installed" if not helpers else f"no /etc/subuid and /etc/subgid range for {user}"
    warning = (
        f"kiln: warning: {reason}; mapping only uid {uid} to root: chown to other uids, "
        "useradd and package managers will not work"
    )
    return MappingPlan((IdRange(0, uid, 1),), (IdRange(0, gid, 1),), "single", warning)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _write_maps(pid: int, plan: MappingPlan) -> None:
    if plan.method == "newidmap":
        for tool, ranges in (("newuidmap", plan.uids), ("newgidmap", plan.gids)):
            done = subprocess.run(
                [tool, str(pid), *newidmap_args(ranges)], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise SandboxError(f"{tool} {pid} failed: {done.stderr.strip() or done.returncode}")
        return
    try:
        if plan.method == "single":
            # Without CAP_SETGID in the parent namespace the kernel only accepts a gid_map once
            # setgroups(2) is disabled for the namespace.
            with open(f"/proc/{pid}/setgroups", "w") as f:
                f.write("deny")
        with open(f"/proc/{pid}/uid_map", "w") as f:
            f.write(map_text(plan.uids))
        with open(f"/proc/{pid}/gid_map", "w") as f:
            f.write(map_text(plan.gids))
    except OSError as exc:
        raise SandboxError(f"cannot write the id maps of user namespace process {pid}: {exc}") from exc


def _spawn(argv: Sequence[str], env: dict[str, str] | None, plan: MappingPlan) -> subprocess.Popen[bytes]:
    """Start ``argv`` as uid 0 in a new user namespace mapped by ``plan``; return the child."""
    ready_r, ready_w = os.pipe()  # child -> us: "namespace created"
    go_r, go_w = os.pipe()  # us -> child: "maps written" (or EOF: give up)
    child_env = dict(os.environ if env is None else env)
    child_env[ENV_MARKER] = "1"
    try:
        proc = subprocess.Popen(
            launch.python_argv("kiln.sandbox.bootstrap", str(ready_w), str(go_r), str(os.getpid()), *argv),
            env=child_env,
            pass_fds=(ready_w, go_r),
        )
    except OSError as exc:
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
        raise SandboxError(f"cannot start the user namespace bootstrap: {exc}") from exc
    os.close(ready_w)
    os.close(go_r)
    try:
        status = os.read(ready_r, 512)
        if not status.startswith(b"ok"):
            proc.wait()
            detail = status.decode(errors="replace").strip() or f"exit status {proc.returncode}"
            raise SandboxError(f"cannot create a user namespace: {detail}")
        try:
            _write_maps(proc.pid, plan)
        except SandboxError:
            proc.kill()
            proc.wait()
            raise
        os.write(go_w, b"go")
    finally:
        os.close(ready_r)
        os.close(go_w)
    return proc


def run_in_userns(
    argv: Sequence[str], *, env: dict[str, str] | None = None, plan: MappingPlan | None = None
) -> int:
    """Run ``argv`` as uid 0 in a new user namespace, forwarding signals; return its exit code.

    ``argv[0]`` is looked up in PATH. Signals are 128+n. Usable for helper commands (e.g. removing
    or reading files owned by mapped subordinate ids), like `buildah unshare`.
    """
    plan = plan or plan_mapping()
    if plan.warning:
        print(plan.warning, file=sys.stderr, flush=True)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {*_FORWARDED, signal.SIGCHLD})
    try:
        proc = _spawn(argv, env, plan)
        return _wait_forwarding(proc)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _wait_forwarding(proc: subprocess.Popen[bytes]) -> int:
    same_group = os.getpgid(proc.pid) == os.getpgrp()
    while True:
        code = proc.poll()
        if code is not None:
            return 128 - code if code < 0 else code
        info = signal.sigtimedwait({*_FORWARDED, signal.SIGCHLD}, 1.0)
        if info is None or info.si_signo == signal.SIGCHLD:
            continue
        if info.si_code == _SI_KERNEL and same_group:
            continue  # the terminal already sent it to the child's process group too
        try:
            os.kill(proc.pid, info.si_signo)
        except ProcessLookupError:
            pass


def ensure_userns(argv: list[str] | None = None) -> None:
    """Make sure this process runs as root of a user namespace able to mount; re-exec if not.

    Returns at once if this process already has CAP_SYS_ADMIN (real root, or uid 0 inside the
    namespace kiln made). Otherwise the current program (``sys.orig_argv`` unless ``argv`` is given)
    runs again inside a new user namespace and this process exits with its exit status; this
    function then never returns.
    """
    if not needs_userns():
        return
    if argv is None:
        argv = [sys.executable, *sys.orig_argv[1:]]
    sys.stdout.flush()
    sys.stderr.flush()
    code = run_in_userns(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
