"""Registry transfer: kiln push / pull / copy against ``skopeo copy``, on a local CNCF registry.

The image: ``LAYERS`` gzip layers of ``LAYER_MIB`` MiB of incompressible random bytes (about
200 MiB), built as an OCI layout by bench/transfer_image.py. Both tools run as command-line
processes, so kiln's Python start-up counts just as skopeo's does.

* push: kiln pushes from its store (the layout imported with verified ingest), skopeo from the
  OCI layout, each run into a **new registry** (a fresh data directory): nothing exists there,
  so neither tool can skip a blob by HEAD or mount it from another repository. kiln's mount
  hints (``blob-sources.json``) are cleared before each run as well.
* pull: from one registry into an empty kiln store / an empty OCI layout directory.
* copy: registry → a **new second registry** per run, so nothing is mounted or skipped.

Every run is checked: the destination must hold the image under the expected manifest digest.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tests.fixtures.registry import Registry

from bench.harness import (
    BenchConfig,
    BenchError,
    Benchmark,
    Command,
    Result,
    Row,
    Trial,
    compare,
    kiln_command,
    kiln_python,
    timed,
)
from bench.transfer_image import BenchImage, build_image, import_into_store
from kiln.oci.store import Store
from kiln.registry.reference import Reference

LAYERS = 5
LAYER_MIB = 40
SOURCE_REPO = "bench/transfer"
#: The image's name in the kiln store that push reads from.
LOCAL_NAME = str(Reference.parse("kiln.bench/transfer:v1"))
CASES = ("push", "pull", "copy")
SKOPEO = ["skopeo", "--insecure-policy"]
MANIFEST_ACCEPT = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"


class Destinations(Protocol):
    """Where each push or copy run writes: ``fresh(label)`` returns an unused ``host/repository``."""

    def fresh(self, label: str) -> str: ...

    def close(self) -> None: ...


class FreshRegistries:
    """A new registry (new data directory) for every run; the previous one is stopped and deleted."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._current: Registry | None = None
        self._count = 0

    def fresh(self, label: str) -> str:
        self.close()
        self._count += 1
        self._current = Registry.plain(self.workdir / f"dest-{self._count}").start()
        return f"{self._current.host}/bench/{label}"

    def close(self) -> None:
        if self._current is not None:
            self._current.stop()
            shutil.rmtree(self._current.workdir, ignore_errors=True)
            self._current = None


class SharedRegistry:
    """Fresh repository names on one registry (cheap; for the smoke test, where mounts do not matter)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.handed_out: list[str] = []

    def fresh(self, label: str) -> str:
        ref = f"{self.host}/bench/{label}-{uuid.uuid4().hex[:10]}"
        self.handed_out.append(ref)
        return ref

    def close(self) -> None:
        pass


@dataclass
class TransferSetup:
    image: BenchImage
    #: ``host`` of the registry holding the image as ``SOURCE_REPO:v1`` (pull and copy read it).
    source_host: str
    #: A kiln store holding the image as ``LOCAL_NAME`` (push reads it).
    push_store: Path
    #: Scratch space for pull destinations.
    scratch: Path
    destinations: Destinations
    #: PYTHONPYCACHEPREFIX for kiln's runs (see bench.harness.kiln_command).
    pycache: Path | None = None

    @property
    def source_ref(self) -> str:
        return f"{self.source_host}/{SOURCE_REPO}:v1"


def skopeo_version() -> str:
    out = subprocess.run(["skopeo", "--version"], capture_output=True, text=True, check=False).stdout
    return out.strip().removeprefix("skopeo version ") or "unknown"


def registry_version() -> str:
    proc = subprocess.run(["docker-registry", "--version"], capture_output=True, text=True, check=False)
    words = (proc.stdout or proc.stderr).split()
    return " ".join(words[1:3]) if len(words) >= 3 else "unknown"


def manifest_digest_at(ref: str) -> str:
    """The manifest digest a plain-HTTP registry announces for ``host/repo:tag`` (HEAD)."""
    host, _, rest = ref.partition("/")
    repo, _, tag = rest.rpartition(":")
    req = urllib.request.Request(
        f"http://{host}/v2/{repo}/manifests/{tag}", method="HEAD", headers={"Accept": MANIFEST_ACCEPT}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(resp.headers.get("Docker-Content-Digest", ""))


def _expect(what: str, got: str, want: str) -> None:
    if got != want:
        raise BenchError(f"{what}: manifest digest {got or '(none)'}, expected {want}")


def push_image_with_skopeo(image: BenchImage, dest: str) -> None:
    """Put ``image`` at ``dest`` (``host/repo:tag``) with skopeo: the untimed setup of the source."""
    subprocess.run(
        [*SKOPEO, "copy", "--dest-tls-verify=false", f"oci:{image.layout}:{image.tag}", f"docker://{dest}"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    _expect(dest, manifest_digest_at(dest), image.manifest.digest)


def prepare(
    image: BenchImage,
    source_host: str,
    workdir: Path,
    destinations: Destinations,
    *,
    bytecode_cache: bool = True,
) -> TransferSetup:
    """Publish ``image`` on the source registry and import it into a kiln store (untimed).

    ``bytecode_cache``: run kiln with a bytecode cache under ``workdir`` (see kiln_command).
    """
    setup = TransferSetup(
        image=image,
        source_host=source_host,
        push_store=workdir / "push-store",
        scratch=workdir / "scratch",
        destinations=destinations,
        pycache=workdir / "pycache" if bytecode_cache else None,
    )
    push_image_with_skopeo(image, setup.source_ref)
    shutil.rmtree(setup.push_store, ignore_errors=True)
    import_into_store(image, setup.push_store, LOCAL_NAME)
    setup.scratch.mkdir(parents=True, exist_ok=True)
    return setup


def _check_remote(dest: str, image: BenchImage) -> Callable[[str], None]:
    return lambda _out: _expect(dest, manifest_digest_at(dest), image.manifest.digest)


def push_trials(setup: TransferSetup) -> tuple[Trial, Trial]:
    def kiln() -> tuple[Command, Callable[[str], None]]:
        dest = setup.destinations.fresh("push") + ":v1"
        # Mount hints from an earlier run would let kiln skip uploads on a reused host:port.
        (setup.push_store / "kiln" / "blob-sources.json").unlink(missing_ok=True)
        cmd = kiln_command(
            "push", "--progress", "quiet", LOCAL_NAME, dest, store=setup.push_store, pycache=setup.pycache
        )
        return cmd, _check_remote(dest, setup.image)

    def skopeo() -> tuple[Command, Callable[[str], None]]:
        dest = setup.destinations.fresh("push") + ":v1"
        src = f"oci:{setup.image.layout}:{setup.image.tag}"
        cmd = Command([*SKOPEO, "copy", "--dest-tls-verify=false", src, f"docker://{dest}"])
        return cmd, _check_remote(dest, setup.image)

    return kiln, skopeo


def pull_trials(setup: TransferSetup) -> tuple[Trial, Trial]:
    kiln_store = setup.scratch / "pull-kiln"
    skopeo_dir = setup.scratch / "pull-skopeo"

    def kiln() -> tuple[Command, Callable[[str], None]]:
        shutil.rmtree(kiln_store, ignore_errors=True)
        cmd = kiln_command(
            "pull", "--progress", "quiet", setup.source_ref, store=kiln_store, pycache=setup.pycache
        )

        def check(_out: str) -> None:
            name = str(Reference.parse(setup.source_ref))
            _expect(f"kiln store {name}", Store(kiln_store).resolve(name).digest, setup.image.manifest.digest)

        return cmd, check

    def skopeo() -> tuple[Command, Callable[[str], None]]:
        shutil.rmtree(skopeo_dir, ignore_errors=True)
        cmd = Command(
            [
                *SKOPEO,
                "copy",
                "--src-tls-verify=false",
                f"docker://{setup.source_ref}",
                f"oci:{skopeo_dir}:v1",
            ]
        )

        def check(_out: str) -> None:
            index = json.loads((skopeo_dir / "index.json").read_text())
            digests = [m.get("digest", "") for m in index.get("manifests", [])]
            _expect(f"oci:{skopeo_dir}", digests[0] if len(digests) == 1 else "", setup.image.manifest.digest)

        return cmd, check

    return kiln, skopeo


def copy_trials(setup: TransferSetup) -> tuple[Trial, Trial]:
    def kiln() -> tuple[Command, Callable[[str], None]]:
        dest = setup.destinations.fresh("copy") + ":v1"
        cmd = kiln_command("copy", "--progress", "quiet", setup.source_ref, dest, pycache=setup.pycache)
        return cmd, _check_remote(dest, setup.image)

    def skopeo() -> tuple[Command, Callable[[str], None]]:
        dest = setup.destinations.fresh("copy") + ":v1"
        cmd = Command(
            [
                *SKOPEO,
                "copy",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                f"docker://{setup.source_ref}",
                f"docker://{dest}",
            ]
        )
        return cmd, _check_remote(dest, setup.image)

    return kiln, skopeo


#: The operation through kiln's Python API, timed from inside: what the transfer itself costs.
ENGINE_SCRIPT = """
import sys, time
from pathlib import Path
from kiln.oci.store import Store
from kiln.registry.transfer import Reference, copy, pull, push
op, a, b, store = sys.argv[1:5]
start = time.perf_counter()
if op == "push":
    push(Store(Path(store)), a, Reference.parse(b))
elif op == "pull":
    pull(Reference.parse(a), Store(Path(store)))
else:
    copy(Reference.parse(a), Reference.parse(b))
print(time.perf_counter() - start)
"""


def engine_trial(setup: TransferSetup, case: str) -> Trial:
    """One run of ``case`` through kiln's API; its stdout is the in-process time in seconds."""

    def trial() -> tuple[Command, Callable[[str], None]]:
        pull_store = setup.scratch / "pull-engine"
        if case == "push":
            dest = setup.destinations.fresh("push") + ":v1"
            (setup.push_store / "kiln" / "blob-sources.json").unlink(missing_ok=True)
            args, check = ("push", LOCAL_NAME, dest, str(setup.push_store)), _check_remote(dest, setup.image)
        elif case == "pull":
            shutil.rmtree(pull_store, ignore_errors=True)
            args = ("pull", setup.source_ref, "-", str(pull_store))

            def check(_out: str) -> None:
                name = str(Reference.parse(setup.source_ref))
                _expect(
                    f"kiln store {name}", Store(pull_store).resolve(name).digest, setup.image.manifest.digest
                )

        else:
            dest = setup.destinations.fresh("copy") + ":v1"
            args, check = ("copy", setup.source_ref, dest, "-"), _check_remote(dest, setup.image)
        return kiln_python("-c", ENGINE_SCRIPT, *args, pycache=setup.pycache), check

    return trial


def engine_seconds(setup: TransferSetup, case: str, runs: int, *, warmup: bool = True) -> tuple[float, ...]:
    """In-process times of ``case`` (after a warm-up run), as reported by the engine script."""
    trial = engine_trial(setup, case)
    times = []
    for i in range(runs + 1 if warmup else runs):
        cmd, check = trial()
        _, out = timed(cmd)
        check(out)
        if i or not warmup:
            times.append(float(out.strip().splitlines()[-1]))
    return tuple(times)


TRIALS: dict[str, Callable[[TransferSetup], tuple[Trial, Trial]]] = {
    "push": push_trials,
    "pull": pull_trials,
    "copy": copy_trials,
}

DESCRIPTIONS = {
    "push": "kiln store → new registry  vs  skopeo oci: layout → new registry",
    "pull": "registry → empty kiln store  vs  skopeo → empty oci: layout",
    "copy": "registry → new registry (streaming)  vs  skopeo docker:// → docker://",
}


def measure(
    setup: TransferSetup,
    runs: int,
    cases: Sequence[str] = CASES,
    *,
    warmup: bool = True,
    engine: bool = True,
    log: Callable[[str], None] | None = None,
) -> tuple[Row, ...]:
    """Time every case ``runs`` times for each tool (after an untimed warm-up run); one Row per case.

    With ``engine`` each case is also timed through kiln's API inside one process (Row.kiln_engine).
    """
    rows = []
    for case in cases:
        kiln, skopeo = TRIALS[case](setup)
        row = compare(case, DESCRIPTIONS[case], kiln, skopeo, runs, warmup=warmup, log=log)
        if engine:
            row = dataclasses.replace(row, kiln_engine=engine_seconds(setup, case, runs, warmup=warmup))
            if log:
                log(f"  {case:<6} kiln engine (in-process) best {min(row.kiln_engine):7.3f} s")
        rows.append(row)
    return tuple(rows)


def startup_seconds(setup: TransferSetup, runs: int) -> tuple[float, float]:
    """Best wall time of a kiln command that starts and exits (``pull --help``) and of ``skopeo --version``."""
    kiln = kiln_command("pull", "--help", pycache=setup.pycache)
    skopeo = Command([*SKOPEO, "--version"])
    timed(kiln)  # fills the bytecode cache for the imports --help needs
    return (
        min(timed(kiln)[0].seconds for _ in range(max(runs, 3))),
        min(timed(skopeo)[0].seconds for _ in range(max(runs, 3))),
    )


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def run(config: BenchConfig, *, layers: int = LAYERS, layer_mib: float = LAYER_MIB) -> Result:
    if config.quick:
        layers, layer_mib = 2, 1
    workdir = config.workdir / "transfer"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    log = _log if config.verbose else None
    if log:
        log(f"transfer: building a {layers} x {layer_mib:g} MiB image")
    image = build_image(workdir / "layout", layers, int(layer_mib * (1 << 20)), seed=1)
    destinations = FreshRegistries(workdir)
    try:
        with Registry.plain(workdir / "source") as source:
            setup = prepare(image, source.host, workdir, destinations)
            rows = measure(setup, config.runs, log=log)
            kiln_start, skopeo_start = startup_seconds(setup, config.runs)
    finally:
        destinations.close()
        shutil.rmtree(workdir, ignore_errors=True)
    mib = image.total_size / (1 << 20)
    return Result(
        name="transfer",
        title="Registry transfer",
        peer="skopeo",
        rows=rows,
        runs=config.runs,
        notes=(
            f"Image: {layers} gzip layers of {layer_mib:g} MiB random (incompressible) data, "
            f"{mib:.0f} MiB in all; local CNCF distribution registry on 127.0.0.1, plain HTTP.",
            "Both tools run as command-line processes (kiln: `.venv/bin/python -m kiln … --progress quiet`), "
            "so start-up counts.",
            "push and copy write to a new registry (new data directory) every run: nothing can be skipped "
            "by HEAD or mounted from another repository. pull writes to an empty store / layout every run.",
            "Every run is checked: the destination holds the image under the expected manifest digest.",
            "kiln engine: the same operation through kiln's Python API, timed inside the process "
            "(no interpreter start-up, imports or exit), best of the same number of runs: what moving "
            "the image itself costs kiln.",
            f"Fixed start-up cost inside these times: kiln {kiln_start:.2f} s (`kiln pull --help`), "
            f"skopeo {skopeo_start:.2f} s (`skopeo --version`), best of {config.runs}.",
        ),
        facts={"skopeo": skopeo_version(), "registry": registry_version()},
    )


BENCHMARK = Benchmark(name="transfer", title="Registry transfer", peer="skopeo", run=run)
