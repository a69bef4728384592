"""Fixtures for sandbox tests: tiny busybox root filesystems and process-table checks."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

BUSYBOX = Path("/bin/busybox")
APPLETS = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
PATH_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def make_busybox_rootfs(root: Path, *, mountpoints: bool = True, owner: tuple[int, int] | None = None) -> Path:
    """bin/busybox plus a symlink per applet, /etc/passwd and /etc/group, /tmp.

    ``mountpoints=False`` leaves out /proc, /dev, /sys and /etc/hosts-style files so the sandbox
    has to create (and later remove) them.
    """
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for applet in APPLETS:
        if applet != "busybox":
            os.symlink("busybox", root / "bin" / applet)
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nuser:x:1000:\nextra:x:2000:user\n")
    tmp = root / "tmp"
    tmp.mkdir()
    tmp.chmod(0o1777)
    if mountpoints:
        for d in ("proc", "dev", "sys"):
            (root / d).mkdir()
    if owner is not None:
        for dirpath, dirnames, filenames in os.walk(root):
            os.lchown(dirpath, *owner)
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), *owner)
    return root


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A busybox root filesystem owned by root (for tests that run the sandbox in-process)."""
    return make_busybox_rootfs(tmp_path / "rootfs")


@pytest.fixture
def marker() -> str:
    """A unique string to recognise this test's processes in the host's process table."""
    return f"kilnmark{uuid.uuid4().hex[:12]}"


def unique_sleep(marker: str) -> str:
    """A sleep argument whose digits make the process findable; sleeps about 1000 s."""
    digits = "".join(c for c in marker if c.isdigit())[:6] or "1"
    return f"1000.{digits}"


def host_processes_matching(needle: str) -> list[int]:
    """PIDs of host processes whose command line contains ``needle`` (zombies included)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry))
    return found


def host_mounts_matching(pattern: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line for line in f if re.search(pattern, line)]


def wait_until(check: Callable[[], bool], attempts: int = 200) -> bool:
    """Poll ``check`` (every 50 ms, 10 s at most) for effects that are asynchronous by design."""
    import time

    for _ in range(attempts):
        if check():
            return True
        time.sleep(0.05)
    return check()


@pytest.fixture
def tcp_server() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP server on host 127.0.0.1 that records what each connection sent."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    received: list[bytes] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                data = b""
                try:
                    while chunk := conn.recv(1024):
                        data += chunk
                except OSError:
                    pass
                received.append(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], received
    stop.set()
    server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
    server.close()
    thread.join(5)


def make_python_rootfs(root: Path, inner_spec: dict[str, object], owner: tuple[int, int] | None = None) -> Path:
    """A root for running kiln itself: the host's /usr is bind-mounted in (see nested_mounts)."""
    root.mkdir()
    for d in ("usr", "etc", "proc", "dev", "sys", "kiln-code", "inner"):
        (root / d).mkdir()
    for link in ("bin", "lib", "lib64", "sbin"):
        os.symlink(f"usr/{link}", root / link)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\n")
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    (root / "inner-spec.json").write_text(json.dumps(inner_spec))
    if owner is not None:
        for dirpath, dirnames, filenames in os.walk(root):
            os.lchown(dirpath, *owner)
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), *owner)
    return root


NESTED_SCRIPT = "echo nested-ok; cat /proc/self/uid_map; ls /proc | grep -c '^[0-9]'"
NESTED_INNER_SPEC: dict[str, object] = {"rootfs": "/inner", "argv": ["sh", "-c", NESTED_SCRIPT], "env": PATH_ENV}
NESTED_ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": "/kiln-code"}
NESTED_ARGV = ["/usr/bin/python3", "-m", "kiln.sandbox", "run", "/inner-spec.json"]


def nested_mounts(kiln_code: Path, inner_rootfs: Path) -> list[dict[str, object]]:
    return [
        {"type": "bind", "source": "/usr", "target": "/usr", "readonly": True},
        {"type": "bind", "source": str(kiln_code), "target": "/kiln-code", "readonly": True},
        {"type": "bind", "source": str(inner_rootfs), "target": "/inner"},
    ]
