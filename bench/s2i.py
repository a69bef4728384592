"""S2I incremental builds: the second build of an app with many dependencies, with and without
``--incremental``, both ``kiln s2i build`` rootless as ``builder``.

The classic Maven/pip re-download problem, simulated: a dependency server on 127.0.0.1 serves
``DEPS`` files, each answer delayed by ``DELAY`` seconds (a remote repository's latency). The
builder (busybox) has an assemble that fetches every dependency the app's ``deps.txt`` lists
into ``/opt/app/.deps`` unless it is already there, and a save-artifacts that tars that cache.

Each timed run edits the app's source first (so assemble runs again: an unchanged source would
come from kiln's step cache in both cases), then builds it:

* **kiln** (``--incremental``): save-artifacts of the previous image restores the cache, so
  assemble downloads nothing;
* **peer** (no ``--incremental``): assemble downloads every dependency again.

Each run is verified by the dependency server's request count (0 vs ``DEPS``). The ratio
incremental / clean is the point; ``python bench/run.py s2i`` prints it.
"""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.fixtures.rootless import Rootless

from bench.build_tools import as_builder, builder_dir
from bench.harness import BenchConfig, BenchError, Benchmark, Command, Result, Trial, compare

DEPS = 100
DELAY = 0.3
QUICK_DEPS = 5
QUICK_DELAY = 0.05
BUILDER = "kiln.bench/s2i-builder:1"
INCREMENTAL_TAG = "kiln.bench/s2i-app:incremental"
CLEAN_TAG = "kiln.bench/s2i-app:clean"

BUILDER_DOCKERFILE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && mkdir -p /etc /tmp /opt/app && chmod 1777 /tmp && echo root:x:0:0:root:/root:/bin/sh > /etc/passwd && echo app:x:1001:0::/opt/app:/bin/sh >> /etc/passwd && echo root:x:0: > /etc/group && chown 1001:0 /opt/app"]
COPY s2i/ /usr/libexec/s2i/
RUN chmod 755 /usr/libexec/s2i/*
ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/opt/app
LABEL io.openshift.s2i.scripts-url=image:///usr/libexec/s2i
USER 1001
WORKDIR /opt/app
"""
ASSEMBLE = """#!/bin/sh
set -e
mkdir -p /opt/app/.deps
if [ -d /tmp/artifacts/.deps ]; then cp -R /tmp/artifacts/.deps/. /opt/app/.deps/; fi
fetched=0
for dep in $(cat /tmp/src/deps.txt); do
  if [ ! -f /opt/app/.deps/$dep ]; then wget -q -O /opt/app/.deps/$dep "$DEPS_URL/$dep"; fetched=$((fetched + 1)); fi
done
echo "fetched $fetched dependencies"
cp -R /tmp/src/. /opt/app/
"""
SAVE_ARTIFACTS = "#!/bin/sh\ncd /opt/app && tar cf - .deps\n"
RUN = "#!/bin/sh\nexec cat /opt/app/app.txt\n"


class _DepsHandler(http.server.BaseHTTPRequestHandler):
    server: DepsServer

    def do_GET(self) -> None:
        time.sleep(self.server.delay)
        body = (self.path.strip("/") + "\n").encode() * 256  # 2-3 KiB per dependency
        with self.server.lock:
            self.server.requests += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class DepsServer(http.server.ThreadingHTTPServer):
    """A slow dependency repository on 127.0.0.1 that counts its requests."""

    def __init__(self, delay: float) -> None:
        super().__init__(("127.0.0.1", 0), _DepsHandler)
        self.delay = delay
        self.requests = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> DepsServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


@dataclass
class Setup:
    rootless: Rootless
    home: Path
    app: Path
    deps: int
    server: DepsServer
    env: dict[str, str] = field(default_factory=dict)

    def kiln(self, *args: str) -> Command:
        return as_builder(self.rootless, self.rootless.kiln_argv(*args), self.env)


def _chown(rootless: Rootless, path: Path) -> None:
    subprocess.run(["chown", "-R", f"{rootless.uid}:{rootless.gid}", str(path)], check=True)


def prepare(rootless: Rootless, workdir: Path, deps: int, server: DepsServer) -> Setup:
    home = builder_dir(rootless, workdir / "s2i")
    pycache = builder_dir(rootless, home / "pycache")
    env = {
        "KILN_STORE": str(home / "store"),
        "PYTHONDONTWRITEBYTECODE": "",
        "PYTHONPYCACHEPREFIX": str(pycache),
    }
    builder_ctx = home / "builder"
    (builder_ctx / "s2i").mkdir(parents=True)
    (builder_ctx / "Dockerfile").write_text(BUILDER_DOCKERFILE)
    shutil.copy2("/bin/busybox", builder_ctx / "busybox")
    for name, text in (("assemble", ASSEMBLE), ("save-artifacts", SAVE_ARTIFACTS), ("run", RUN)):
        (builder_ctx / "s2i" / name).write_text(text)
    app = home / "app"
    app.mkdir()
    (app / "deps.txt").write_text("".join(f"dep-{i:04d}.jar\n" for i in range(deps)))
    (app / "app.txt").write_text("version 0\n")
    _chown(rootless, home)
    setup = Setup(rootless, home, app, deps, server, env)
    cmd = setup.kiln("build", "--progress", "quiet", "-t", BUILDER, str(builder_ctx))
    done = subprocess.run(
        list(cmd.argv), env=dict(cmd.env or {}), capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"building the S2I builder image failed:\n{done.stderr[-2000:]}")
    return setup


def _build_trial(setup: Setup, *, incremental: bool) -> Trial:
    tag = INCREMENTAL_TAG if incremental else CLEAN_TAG

    def trial() -> tuple[Command, Callable[[str], None]]:
        (setup.app / "app.txt").write_text(f"version {uuid.uuid4().hex}\n")
        _chown(setup.rootless, setup.app)
        flags = ["--incremental"] if incremental else []
        cmd = setup.kiln("s2i", "build", "--progress", "quiet", "-e", f"DEPS_URL={setup.server.url}", *flags,
                         str(setup.app), BUILDER, tag)  # fmt: skip
        before = setup.server.requests

        def check(out: str) -> None:
            if not out.strip().startswith("sha256:"):
                raise BenchError(f"kiln s2i build printed no digest: {out!r}")
            fetched = setup.server.requests - before
            # the first (warm-up) incremental build has no previous image and fetches everything
            expected = (0, setup.deps) if incremental else (setup.deps,)
            if fetched not in expected:
                raise BenchError(f"{tag}: assemble fetched {fetched} dependencies, expected {expected}")

        return cmd, check

    return trial


def run(config: BenchConfig) -> Result:
    deps, delay = (QUICK_DEPS, QUICK_DELAY) if config.quick else (DEPS, DELAY)
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if config.verbose else None
    os.chmod(config.workdir, 0o711)  # builder must reach the code copy below it
    base = config.workdir / "s2i-rootless"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(mode=0o755)
    rootless = Rootless(base)
    with DepsServer(delay) as server:
        setup = prepare(rootless, config.workdir, deps, server)
        # the warm-up builds leave a previous image for --incremental (and a cached builder)
        row = compare(
            "second-build",
            f"source edited, {deps} dependencies at {delay:.2f} s each: --incremental vs a clean build",
            _build_trial(setup, incremental=True),
            _build_trial(setup, incremental=False),
            config.runs,
            log=log,
        )
    ratio = row.kiln_best.seconds / row.peer_best.seconds
    print(
        f"s2i: second build with --incremental {row.kiln_best.seconds:.2f} s, without {row.peer_best.seconds:.2f} s: "
        f"{1 / ratio:.1f}x faster (ratio {ratio:.3f})",
        file=sys.stderr,
        flush=True,
    )
    return Result(
        name="s2i",
        title="S2I: second build of an app with many dependencies, --incremental vs clean",
        peer="kiln s2i without --incremental",
        rows=(row,),
        runs=config.runs,
        notes=(
            f"{deps} dependencies from a loopback HTTP server answering each request after {delay:.2f} s, "
            "fetched one by one by assemble (busybox wget), as Maven or pip would",
            "both builds run assemble again (the source changed); --incremental restores the dependency "
            "cache through save-artifacts of the previous image",
            "kiln column: with --incremental; peer column: without (the ratio is incremental / clean)",
        ),
        facts={"dependencies": str(deps), "delay_seconds": f"{delay:.2f}"},
    )


BENCHMARK = Benchmark(
    name="s2i", title="S2I incremental builds", peer="kiln s2i without --incremental", run=run
)
