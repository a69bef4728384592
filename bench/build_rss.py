"""Peak memory of a command and everything it starts, by polling /proc while it runs.

Two numbers per run:

* ``tree_peak``: the largest sum of VmRSS over the whole process tree seen at one poll (every
  10 ms). Shared pages (the Python binary, libraries) count once per process, so this is an
  upper bound of what the tree really holds.
* ``process_peak``: the largest VmHWM (the kernel's own high-water mark, so a peak between two
  polls is not missed) of any single process of the tree. wait4's ``ru_maxrss`` (what
  ``/usr/bin/time -v`` reports) is not used: exec records the pre-exec memory of the forked
  child, which here is a copy of this Python process, so it says more about the benchmark
  than about the command.

The tree is followed through ``/proc/PID/task/TID/children``; the command runs as the builder
user, in user namespaces, and its processes still show up in the host's /proc with host PIDs.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.harness import BenchError, Command, Sample

POLL_SECONDS = 0.01
KIB = 1024


@dataclass(frozen=True)
class MemorySample:
    sample: Sample
    #: bytes: the largest sum of RSS over the process tree at one instant.
    tree_peak: int
    #: bytes: the largest VmHWM of one process, and wait4's ru_maxrss (max over the tree).
    process_peak: int
    processes: int


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{tid}/children").read_text()
        except OSError:
            continue
        out.extend(int(c) for c in text.split())
    return out


def _tree(root: int) -> list[int]:
    seen = [root]
    i = 0
    while i < len(seen):
        seen.extend(c for c in _children(seen[i]) if c not in seen)
        i += 1
    return seen


def _status_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB; (0, 0) for a process that is gone or has no memory (a zombie)."""
    rss = hwm = 0
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return rss, hwm


def run_polled(cmd: Command, *, timeout: float = 1800.0) -> tuple[MemorySample, str]:
    """Run ``cmd`` while polling its process tree; its time, CPU, memory peaks and stdout."""
    env = dict(cmd.env) if cmd.env is not None else None
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd.argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    # Pipes are drained by threads so a chatty command cannot block on a full pipe.
    chunks: dict[str, list[bytes]] = {"out": [], "err": []}

    def drain(stream: object, key: str) -> None:
        assert hasattr(stream, "read")
        for block in iter(lambda: stream.read(65536), b""):
            chunks[key].append(block)

    readers = [
        threading.Thread(target=drain, args=(proc.stdout, "out"), daemon=True),
        threading.Thread(target=drain, args=(proc.stderr, "err"), daemon=True),
    ]
    for t in readers:
        t.start()
    tree_peak = 0
    hwm: dict[int, int] = {}
    status: int | None = None
    rusage = None
    while True:
        total = 0
        for pid in _tree(proc.pid):
            rss, high = _status_kib(pid)
            total += rss
            if high > hwm.get(pid, 0):
                hwm[pid] = high
        tree_peak = max(tree_peak, total)
        waited, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if waited == proc.pid:
            break
        if time.perf_counter() - start > timeout:
            proc.kill()
            raise BenchError(f"{' '.join(cmd.argv)} ran longer than {timeout:.0f} s")
        time.sleep(POLL_SECONDS)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    for t in readers:
        t.join()
    out = b"".join(chunks["out"]).decode(errors="replace")
    err = b"".join(chunks["err"]).decode(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd.argv)} exited with {proc.returncode}:\n{err.strip()[-2000:]}")
    assert rusage is not None
    cpu = rusage.ru_utime + rusage.ru_stime
    peak = max(hwm.values(), default=0) * KIB
    return MemorySample(Sample(seconds, cpu), tree_peak * KIB, peak, len(hwm)), out
