"""More builders for the build benchmark, where they can run here: BuildKit (rootless, daemonless).

BuildKit is built from the Go module proxy (``python bench/build_peers.py install``, about 15
minutes on 2 cores): buildkitd and buildctl from github.com/moby/buildkit (its go.mod has
``exclude`` directives, so ``go install pkg@version`` refuses it and the module is built in a
copy of its directory), rootlesskit from github.com/rootless-containers/rootlesskit/v2, and
buildkit's own ``examples/buildctl-daemonless/buildctl-daemonless.sh``. The binaries go to
``$KILN_BENCH_PEERS_BIN`` (default /var/cache/kiln-bench/bin, world-readable so ``builder``
can run them).

Each BuildKit run is ``buildctl-daemonless.sh build ...`` as ``builder``: the script starts
``rootlesskit buildkitd --rootless`` (OCI worker, runc, overlayfs in the user namespace), waits
for its socket, runs buildctl and stops the daemon, so daemon start-up is timed as kiln's and
buildah's process start-up is. The state directory (``--root``) persists between runs like a
store; ``reset()`` empties it. BuildKit has no push command: "push" is the same build again
(fully cached) exporting with ``push=true``.

kaniko: its module (github.com/GoogleContainerTools/kaniko, and the forks tried) is refused by
the Go module proxy here (403 "not available"), so it cannot be built; see docs/performance.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (`python bench/build_peers.py install`): make `bench` and `tests` importable.
    _root = Path(__file__).resolve().parent.parent
    for _p in (_root, _root / "src"):
        if str(_p) not in sys.path:
            sys.path.insert(0, str(_p))

from tests.fixtures.rootless import Rootless

from bench.build_tools import as_builder, builder_dir
from bench.harness import BenchError, Command

PEERS_BIN = Path(os.environ.get("KILN_BENCH_PEERS_BIN", "/var/cache/kiln-bench/bin"))
BUILDKIT_VERSION = "v0.34.2"
ROOTLESSKIT = "github.com/rootless-containers/rootlesskit/v2/cmd/rootlesskit"
ROOTLESSKIT_VERSION = "v2.3.6"
BUILDKIT_FILES = ("buildctl-daemonless.sh", "buildctl", "buildkitd", "rootlesskit")


def buildkit_available(bin_dir: Path = PEERS_BIN) -> bool:
    return (
        all(os.access(bin_dir / name, os.X_OK) for name in BUILDKIT_FILES)
        and shutil.which("runc") is not None
    )


@dataclass
class BuildkitTool:
    rootless: Rootless
    home: Path
    bin_dir: Path = PEERS_BIN
    tag: str = "bench/app:latest"
    name: str = "buildkit"
    #: registry hosts (host:port) reached over plain HTTP; written into buildkitd.toml per run.
    http_hosts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        builder_dir(self.rootless, self.home)
        self.reset()

    def reset(self) -> None:
        for name in ("root", "xdg", "home"):
            builder_dir(self.rootless, self.home / name)
        (self.home / "metadata.json").unlink(missing_ok=True)

    def _config(self, extra_host: str | None = None) -> Path:
        hosts = [*self.http_hosts, *([extra_host] if extra_host else [])]
        text = "".join(f'[registry."{h}"]\n  http = true\n  insecure = true\n' for h in hosts)
        path = self.home / "buildkitd.toml"
        path.write_text(text)
        os.chmod(path, 0o644)
        return path

    def _buildctl(self, context: Path, dockerfile: Path, output: str, config: Path) -> Command:
        flags = (
            f"--rootless --root {self.home / 'root'} --config {config} "
            f"--otel-socket-path {self.home / 'xdg' / 'buildkit' / 'otel.sock'}"
        )
        env = {
            "HOME": str(self.home / "home"),
            "XDG_RUNTIME_DIR": str(self.home / "xdg"),
            "PATH": f"{self.bin_dir}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "BUILDKITD_FLAGS": flags,
        }
        argv = [
            str(self.bin_dir / "buildctl-daemonless.sh"),
            "build",
            "--progress",
            "plain",
            "--frontend",
            "dockerfile.v0",
            "--local",
            f"context={context}",
            "--local",
            f"dockerfile={dockerfile.parent}",
            "--opt",
            f"filename={dockerfile.name}",
            "--metadata-file",
            str(self.home / "metadata.json"),
            "--output",
            output,
        ]
        return as_builder(self.rootless, argv, env)

    def build(self, context: Path, dockerfile: Path) -> Command:
        (self.home / "metadata.json").unlink(missing_ok=True)
        self._last = (context, dockerfile)
        return self._buildctl(context, dockerfile, f"type=image,name={self.tag},push=false", self._config())

    def built_id(self) -> str:
        try:
            meta = json.loads((self.home / "metadata.json").read_text())
        except FileNotFoundError:
            raise BenchError("buildctl wrote no --metadata-file") from None
        return str(meta.get("containerimage.digest", ""))

    def before_push(self) -> None:
        pass

    def push(self, dest: str) -> Command:
        context, dockerfile = self._last
        host = dest.split("/", 1)[0]
        return self._buildctl(
            context,
            dockerfile,
            f"type=image,name={dest},push=true,registry.insecure=true",
            self._config(host),
        )

    def version(self) -> str:
        return BUILDKIT_VERSION


# -- install ------------------------------------------------------------------------------------


def _go(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        ["go", *args], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BenchError(f"go {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def install_buildkit(bin_dir: Path = PEERS_BIN) -> None:
    """Build buildkitd, buildctl and rootlesskit from the Go module proxy into ``bin_dir``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kiln-bench-go-") as tmp:
        info = json.loads(_go("mod", "download", "-json", f"github.com/moby/buildkit@{BUILDKIT_VERSION}"))
        src = Path(tmp) / "buildkit"
        shutil.copytree(info["Dir"], src)
        for root, dirs, files in os.walk(src):
            for name in dirs + files:
                os.chmod(os.path.join(root, name), 0o755 if name in dirs else 0o644)
        _go("build", "-o", f"{bin_dir}/", "./cmd/buildkitd", "./cmd/buildctl", cwd=src)
        script = src / "examples" / "buildctl-daemonless" / "buildctl-daemonless.sh"
        shutil.copy(script, bin_dir / "buildctl-daemonless.sh")
    _go("install", f"{ROOTLESSKIT}@{ROOTLESSKIT_VERSION}", env={"GOBIN": str(bin_dir)})
    for name in BUILDKIT_FILES:
        os.chmod(bin_dir / name, 0o755)
    os.chmod(bin_dir, 0o755)


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit(
            "usage: bench/build_peers.py install   (builds BuildKit and rootlesskit into $KILN_BENCH_PEERS_BIN)"
        )
    install_buildkit()
    print(f"installed {', '.join(BUILDKIT_FILES)} into {PEERS_BIN}")
