"""Build speed and cache: ``kiln build`` against ``buildah bud --layers``, both rootless as ``builder``.

The context: ``FILES`` files of 1-4 KiB in ``DIRS`` directories plus one ``BIG_MIB`` MiB
incompressible file; the Dockerfile (outside the context) is ``FROM`` a busybox image on a
loopback registry, ``COPY . /app``, ``RUN find /app -type f | wc -l > /count``.

* cold: empty store / empty buildah storage every run (the base image is pulled each time).
* unchanged: the same build again on the store the cold build left; must be all cache hits
  (kiln: the same manifest digest; buildah: the same image id).
* changed: one small file gets new content before each run; COPY and RUN run again.
* push: the last image to a **new registry** (fresh data directory) every run, so no blob can
  be skipped by HEAD or mounted from another repository (kiln's blob-sources.json and buildah's
  blob info cache are cleared too). kiln pushes the gzip blobs it wrote while building;
  buildah compresses its uncompressed vfs layers during the push.
* 1gib: a cold build of ``FROM base`` + ``COPY big.bin`` where big.bin is 1 GiB of random
  bytes, with the process tree's memory polled (bench/build_rss.py): the peak RSS table.

More builders (BuildKit, kaniko) go through bench/build_peers.py when they can run here.

Besides bench/run.py's build.csv/.png (kiln vs buildah) the run writes build_peers.csv/.png
(every builder) and build_memory.csv (the 1 GiB runs) to bench/results/ (``run`` does not see
run.py's --results; ``--quick`` writes none of them). The kiln measured is a copy of src/kiln
taken when the run starts; its commit is in the report's facts.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.fixtures.images import make_busybox_oci_layout, push_with_skopeo
from tests.fixtures.registry import Registry
from tests.fixtures.rootless import Rootless

from bench.build_context import Context, dockerfile_text, touch_one, write_context
from bench.build_peers import PEERS_BIN, BuildkitTool, buildkit_available
from bench.build_report import (
    KANIKO_NOTE,
    goal_lines,
    memory_lines,
    peers_markdown,
    write_memory_csv,
    write_peers_chart,
    write_peers_csv,
)
from bench.build_rss import MemorySample, run_polled
from bench.build_tools import BuildahTool, KilnTool, Tool
from bench.harness import (
    REPO_ROOT,
    BenchConfig,
    BenchError,
    Benchmark,
    Command,
    Result,
    Row,
    Sample,
    Trial,
    timed,
)
from bench.transfer import FreshRegistries, manifest_digest_at, registry_version

FILES = 5000
DIRS = 50
BIG_MIB = 50
HUGE_MIB = 1024
BASE_REPO = "bench/busybox:1"
RESULTS_DIR = REPO_ROOT / "bench" / "results"
MIB = 1 << 20

DESCRIPTIONS = {
    "cold": "empty store, base pulled, COPY + RUN",
    "unchanged": "same context again: every step cached",
    "changed": "one small file edited: COPY + RUN again",
    "push": "built image → new registry",
    "1gib": "cold build of COPY of a 1 GiB random file",
}


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Setup:
    rootless: Rootless
    context: Context
    huge: Context
    base_ref: str
    kiln: KilnTool
    buildah: BuildahTool
    destinations: FreshRegistries
    #: Further builders (BuildKit) that could run here.
    others: list[Tool] = field(default_factory=list)
    last: dict[str, str] = field(default_factory=dict)
    memory: dict[str, list[MemorySample]] = field(default_factory=dict)

    @property
    def tools(self) -> list[Tool]:
        return [self.kiln, self.buildah, *self.others]


# -- checks -----------------------------------------------------------------------------------


def _file_in_gzip_layer(path: Path, name: str) -> bytes | None:
    with gzip.open(path, "rb") as raw, tarfile.open(fileobj=io.BufferedReader(raw), mode="r|") as tar:
        for member in tar:
            if member.name.lstrip("./") == name:
                f = tar.extractfile(member)
                return f.read() if f is not None else None
    return None


def check_kiln_count(kiln: KilnTool, expected: int) -> None:
    """The RUN layer (the last) holds /count with the number of files COPY brought."""
    layers = kiln.layers()
    got = _file_in_gzip_layer(kiln.blob(str(layers[-1]["digest"])), "count")
    if got is None or got.strip() != str(expected).encode():
        raise BenchError(f"kiln image {kiln.built_id()}: /count is {got!r}, expected {expected}")


# -- trials -----------------------------------------------------------------------------------


def _build_trial(setup: Setup, tool: Tool, *, reset: bool, expect: str, edit: bool = False) -> Trial:
    """``expect``: "new" (an image id unlike the last one) or "same" (the last one: all cached)."""

    def trial() -> tuple[Command, Callable[[str], None]]:
        if reset:
            tool.reset()
        if edit:
            touch_one(setup.context, f"{tool.name}-{uuid.uuid4().hex}")
        cmd = tool.build(setup.context.directory, setup.context.dockerfile)

        def check(_out: str) -> None:
            got = tool.built_id()
            before = setup.last.get(tool.name)
            if expect == "same" and got != before:
                raise BenchError(f"{tool.name}: unchanged rebuild made {got}, not {before}: the cache missed")
            if expect == "new" and got == before:
                raise BenchError(f"{tool.name}: the build after an edit gave the old image {got}")
            if tool is setup.kiln and expect == "new":
                check_kiln_count(setup.kiln, setup.context.files)
            setup.last[tool.name] = got

        return cmd, check

    return trial


def _push_trial(setup: Setup, tool: Tool) -> Trial:
    def trial() -> tuple[Command, Callable[[str], None]]:
        dest = setup.destinations.fresh(f"{tool.name}-push") + ":v1"
        tool.before_push()
        cmd = tool.push(dest)

        def check(_out: str) -> None:
            got = manifest_digest_at(dest)
            if not got:
                raise BenchError(f"{tool.name} push: {dest} has no manifest")
            if tool is setup.kiln and got != setup.kiln.built_id():
                raise BenchError(f"kiln push: {dest} holds {got}, kiln built {setup.kiln.built_id()}")

        return cmd, check

    return trial


def measure_memory(
    setup: Setup, tool: Tool, runs: int, log: Callable[[str], None] | None
) -> list[MemorySample]:
    """Cold builds of the 1 GiB context with the process tree polled (not through harness.timed)."""
    samples = []
    for i in range(runs):
        tool.reset()
        got, _ = run_polled(tool.build(setup.huge.directory, setup.huge.dockerfile))
        tool.built_id()
        samples.append(got)
        if log:
            log(
                f"  1gib   run {i + 1}/{runs} {tool.name:<7} {got.sample.seconds:7.3f} s "
                f"peak tree RSS {got.tree_peak / MIB:6.1f} MiB, largest process {got.process_peak / MIB:6.1f} MiB"
            )
    tool.reset()  # a GiB of snapshots and blobs is not needed any more
    return samples


def measure_case(
    case: str, trials: dict[str, Trial], runs: int, log: Callable[[str], None] | None, *, warmup: bool = True
) -> dict[str, tuple[Sample, ...]]:
    """Like bench.harness.compare for any number of tools: one untimed (but checked) warm-up run
    each, then ``runs`` timed runs each, the order rotating so no tool always goes first."""
    names = list(trials)
    for name in names if warmup else ():
        cmd, check = trials[name]()
        check(timed(cmd)[1])
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    for i in range(runs):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            cmd, check = trials[name]()
            sample, out = timed(cmd)
            check(out)
            samples[name].append(sample)
            if log is not None:
                log(
                    f"  {case:<9} run {i + 1}/{runs} {name:<8} {sample.seconds:7.3f} s (cpu {sample.cpu_seconds:.2f} s)"
                )
    return {name: tuple(got) for name, got in samples.items()}


def measure(
    setup: Setup, runs: int, *, log: Callable[[str], None] | None = None, warmup: bool = True
) -> dict[str, dict[str, tuple[Sample, ...]]]:
    """Seconds per case, per tool, per run (case "1gib" from the memory runs)."""
    tools = setup.tools
    trials: dict[str, dict[str, Trial]] = {
        "cold": {t.name: _build_trial(setup, t, reset=True, expect="new") for t in tools},
        "unchanged": {t.name: _build_trial(setup, t, reset=False, expect="same") for t in tools},
        "changed": {t.name: _build_trial(setup, t, reset=False, expect="new", edit=True) for t in tools},
        "push": {t.name: _push_trial(setup, t) for t in tools},
    }
    times = {case: measure_case(case, by_tool, runs, log, warmup=warmup) for case, by_tool in trials.items()}
    for tool in tools:
        setup.memory[tool.name] = measure_memory(setup, tool, runs, log)
    times["1gib"] = {name: tuple(m.sample for m in got) for name, got in setup.memory.items()}
    return times


def rows_against(times: dict[str, dict[str, tuple[Sample, ...]]], peer: str) -> tuple[Row, ...]:
    return tuple(
        Row(case, DESCRIPTIONS[case], by_tool["kiln"], by_tool[peer]) for case, by_tool in times.items()
    )


# -- the benchmark ---------------------------------------------------------------------------


def freeze_code(rootless: Rootless) -> None:
    """Replace the hard-linked copy of src/kiln that Rootless makes with a real one: a source
    file edited in place during a long run must not change the kiln being measured."""
    dest = rootless.code / "kiln"
    shutil.rmtree(dest)
    shutil.copytree(REPO_ROOT / "src" / "kiln", dest, ignore=shutil.ignore_patterns("__pycache__"))
    for root, _dirs, files in os.walk(dest):
        os.chmod(root, 0o755)
        for name in files:
            os.chmod(os.path.join(root, name), 0o644)


def kiln_revision() -> str:
    """The commit measured, with "+changes" when src/kiln differs from it."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--", "src/kiln") else "")


def _others(host: str, work: Path, rootless: Rootless, log: Callable[[str], None] | None) -> list[Tool]:
    others: list[Tool] = []
    if buildkit_available():
        others.append(BuildkitTool(rootless, work / "buildkit", http_hosts=[host]))
    elif log:
        log(
            f"build: BuildKit not found in {PEERS_BIN} (python bench/build_peers.py install): kiln vs buildah only"
        )
    return others


def run(
    config: BenchConfig, *, extras_dir: Path | None = None, peers: bool = True, warmup: bool = True
) -> Result:
    """``extras_dir``: where build_peers.csv/.png and build_memory.csv go (default bench/results/,
    none with --quick). ``peers``: also measure BuildKit when it is installed. ``warmup``: an
    untimed run of each tool before each case's timed runs."""
    files, dirs, big, huge = (FILES, DIRS, BIG_MIB * MIB, HUGE_MIB * MIB)
    if config.quick:
        files, dirs, big, huge = 50, 5, 1 * MIB, 8 * MIB
    if extras_dir is None and not config.quick:
        extras_dir = RESULTS_DIR
    log = _log if config.verbose else None
    load_before = os.getloadavg()[0]
    revision = kiln_revision()
    # builder must reach its directories under the harness's scratch directory.
    os.chmod(config.workdir, 0o711)
    work = config.workdir / "build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(mode=0o755)
    rootless = Rootless(work)
    freeze_code(rootless)
    owner = (rootless.uid, rootless.gid)
    destinations = FreshRegistries(work / "registries")
    (work / "registries").mkdir()
    try:
        with Registry.plain(work / "base-registry") as registry:
            layout = make_busybox_oci_layout(work / "base-layout", tag="1")
            push_with_skopeo(layout.layout, registry, BASE_REPO)
            base_ref = f"{registry.host}/{BASE_REPO}"
            data = rootless.builder_tmpdir("contexts-")
            if log:
                log(
                    f"build: writing a context of {files} files in {dirs} dirs + {big / MIB:g} MiB, and one of {huge / MIB:g} MiB"
                )
            context = write_context(
                data / "ctx",
                dockerfile_text(base_ref),
                n_files=files,
                n_dirs=dirs,
                big_bytes=big,
                owner=owner,
            )
            huge_ctx = write_context(
                data / "huge",
                dockerfile_text(base_ref, run=None, dest="/data/"),
                n_files=0,
                n_dirs=1,
                big_bytes=huge,
                owner=owner,
            )
            setup = Setup(
                rootless=rootless,
                context=context,
                huge=huge_ctx,
                base_ref=base_ref,
                kiln=KilnTool(rootless, work / "kiln"),
                buildah=BuildahTool(rootless, work / "buildah"),
                destinations=destinations,
                others=_others(registry.host, work, rootless, log) if peers else [],
            )
            times = measure(setup, config.runs, log=log, warmup=warmup)
            versions = {t.name: t.version() for t in setup.tools if t.name != "kiln"}
    finally:
        destinations.close()
        shutil.rmtree(work, ignore_errors=True)
    rows = rows_against(times, "buildah")
    load = f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    if extras_dir is not None:
        write_memory_csv(extras_dir / "build_memory.csv", setup.memory)
        write_peers_csv(extras_dir / "build_peers.csv", times)
        write_peers_chart(extras_dir / "build_peers.png", times, config.runs)
    notes = [
        f"Context: {files} files of 1-4 KiB (random bytes) in {dirs} directories plus one {big / MIB:g} MiB "
        "random file; Dockerfile `FROM busybox` (loopback registry) + `COPY . /app` + "
        "`RUN find /app -type f | wc -l > /count`.",
        "Every builder runs rootless as the unprivileged user `builder`: kiln via `python3 -m kiln build "
        "--progress quiet` (bytecode cached, as installed); buildah via `buildah bud --layers "
        "--isolation chroot --storage-driver vfs` with builder-owned --root/--runroot/HOME/XDG_RUNTIME_DIR"
        + (
            "; BuildKit via `buildctl-daemonless.sh` (rootlesskit + buildkitd --rootless, started and "
            "stopped in every run)"
            if setup.others
            else ""
        )
        + ".",
        "cold = empty store / storage each run, base image pulled; unchanged = same build again (checked: "
        "same digest / image id); changed = one small file edited before each run (checked: new image).",
        "push = each run into a **new registry** (fresh data directory): nothing can be skipped by HEAD or "
        "cross-repo mounted (kiln's blob-sources.json and buildah's blob info cache are cleared; on one "
        "shared registry both would mount earlier runs' blobs). kiln uploads the gzip blobs it wrote "
        "while building; buildah gzips its uncompressed vfs layers during the push"
        + (
            "; BuildKit has no push command, so its push is the cached build again exporting with push=true"
            if setup.others
            else ""
        )
        + ".",
        f"1gib = cold build of `COPY big.bin` ({huge / MIB:g} MiB random) with the process tree's memory polled "
        "every 10 ms (VmRSS summed over the tree; VmHWM per process).",
        *memory_lines(setup.memory),
        "Goals (kiln / buildah, best runs): " + "; ".join(goal_lines(rows, setup.memory)) + ".",
        f"Load average (1 min) of the machine: {load}. On a shared 2-core machine wall times stretch with "
        "load; the CPU columns (user + system of the command and its children) are steadier.",
        KANIKO_NOTE,
    ]
    if setup.others:
        notes.append(
            "All builders, best run each (s), and kiln's ratio to each:\n\n"
            + peers_markdown(times, indent="  ")
        )
    return Result(
        name="build",
        title="Build cache and speed",
        peer="buildah",
        rows=rows,
        runs=config.runs,
        notes=tuple(notes),
        facts={"kiln": revision, **versions, "registry": registry_version()},
    )


BENCHMARK = Benchmark(name="build", title="Build cache and speed", peer="buildah", run=run)
