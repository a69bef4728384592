"""The benchmark contract and the timing loop shared by every benchmark module.

A benchmark module defines ``BENCHMARK = Benchmark(name=..., title=..., peer=..., run=...)``;
``run(config)`` returns a :class:`Result`: one :class:`Row` per case, each holding kiln's and
the peer's time for every run. ``bench/run.py`` finds such modules by itself, so a new
benchmark is one new file.

Times are wall-clock seconds of whole commands (process start to exit). The best run counts:
the minimum is the least disturbed by the rest of the machine, which is what a comparison of two
tools on one box needs. CPU seconds (user + system of the command and its children) are kept
beside it, because on a small machine the client's CPU competes with the registry's.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"


class BenchError(RuntimeError):
    """A benchmark could not run (a command failed, a result did not verify)."""


@dataclass(frozen=True)
class Sample:
    """One timed run of one tool."""

    seconds: float
    cpu_seconds: float


@dataclass(frozen=True)
class Row:
    """One case (e.g. ``push``) measured for kiln and for the peer tool."""

    case: str
    description: str
    kiln: tuple[Sample, ...]
    peer: tuple[Sample, ...]
    #: Optional diagnostic: seconds of the same operation through kiln's Python API, timed inside
    #: the process, i.e. without interpreter start-up, imports and exit.
    kiln_engine: tuple[float, ...] = ()

    @property
    def kiln_best(self) -> Sample:
        return min(self.kiln, key=lambda s: s.seconds)

    @property
    def peer_best(self) -> Sample:
        return min(self.peer, key=lambda s: s.seconds)

    @property
    def kiln_engine_best(self) -> float | None:
        return min(self.kiln_engine) if self.kiln_engine else None

    @property
    def ratio(self) -> float:
        """kiln's best time over the peer's: below 1.0 means kiln was faster."""
        return self.kiln_best.seconds / self.peer_best.seconds


@dataclass(frozen=True)
class Result:
    name: str
    title: str
    peer: str
    rows: tuple[Row, ...]
    runs: int
    #: What was measured and how, as short lines for the report (image size, registry, caveats).
    notes: tuple[str, ...] = ()
    #: Tool versions and parameters that shaped the numbers.
    facts: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchConfig:
    runs: int
    workdir: Path
    #: Print a line per run to stderr.
    verbose: bool = True
    #: Tiny inputs: checks that the benchmark works, the numbers mean nothing.
    quick: bool = False


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    peer: str
    run: Callable[[BenchConfig], Result]


@dataclass(frozen=True)
class Command:
    """A command to time, with the environment it needs."""

    argv: Sequence[str]
    env: Mapping[str, str] | None = None


def timed(cmd: Command, *, timeout: float = 900.0) -> tuple[Sample, str]:
    """Run ``cmd`` to completion; its wall time, CPU time and stdout. Raises BenchError on failure.

    CPU time comes from RUSAGE_CHILDREN, so nothing else may be reaped meanwhile (the harness is
    single-threaded and stops its services outside the timed part).
    """
    env = dict(cmd.env) if cmd.env is not None else None
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        list(cmd.argv),
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise BenchError(
            f"{' '.join(cmd.argv)} exited with {proc.returncode}:\n{proc.stderr.strip()[-2000:]}"
        )
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Sample(seconds=seconds, cpu_seconds=cpu), proc.stdout


#: One run of one tool: set up (untimed), run the returned command (timed), check (untimed).
#: ``prepare()`` returns the command and a ``check(stdout)`` callback that raises on a bad result.
Trial = Callable[[], tuple[Command, Callable[[str], None]]]


def compare(
    case: str,
    description: str,
    kiln: Trial,
    peer: Trial,
    runs: int,
    *,
    warmup: bool = True,
    log: Callable[[str], None] | None = None,
) -> Row:
    """Time ``kiln`` and ``peer`` ``runs`` times each, alternating which goes first.

    With ``warmup`` each tool first runs once untimed (checked all the same), so both start the
    timed runs with warm page caches and kiln with its bytecode cache filled.
    """
    if warmup:
        for trial in (kiln, peer):
            cmd, check = trial()
            check(timed(cmd)[1])
    kiln_samples: list[Sample] = []
    peer_samples: list[Sample] = []
    for i in range(runs):
        order = [("kiln", kiln, kiln_samples), ("peer", peer, peer_samples)]
        if i % 2:
            order.reverse()
        for who, trial, samples in order:
            cmd, check = trial()
            sample, out = timed(cmd)
            check(out)
            samples.append(sample)
            if log is not None:
                log(
                    f"  {case:<6} run {i + 1}/{runs} {who:<4} {sample.seconds:7.3f} s (cpu {sample.cpu_seconds:.2f} s)"
                )
    return Row(case=case, description=description, kiln=tuple(kiln_samples), peer=tuple(peer_samples))


def kiln_python(*args: str, store: Path | None = None, pycache: Path | None = None) -> Command:
    """``.venv/bin/python ARGS`` in the environment kiln is measured in (see :func:`kiln_command`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pycache)
    if store is not None:
        env["KILN_STORE"] = str(store)
    python = VENV_PYTHON if VENV_PYTHON.exists() else Path(sys.executable)
    return Command(argv=[str(python), *args], env=env)


def kiln_command(*args: str, store: Path | None = None, pycache: Path | None = None) -> Command:
    """``.venv/bin/python -m kiln ARGS`` with ``KILN_STORE`` set: the CLI as a user runs it.

    An installed kiln has its bytecode compiled; under PYTHONDONTWRITEBYTECODE (set in some
    shells and CI) every run would recompile kiln's sources, a quarter of a second no user pays.
    With ``pycache`` that variable is dropped and bytecode goes to PYTHONPYCACHEPREFIX=pycache,
    outside the source tree (a warm-up run fills it). Without it the environment is left as is.
    """
    return kiln_python("-m", "kiln", *args, store=store, pycache=pycache)
