"""Build (once) and cache the control-plane binaries: etcd, kube-apiserver, kube-controller-manager.

Both projects are built from source through the Go module proxy, in throwaway modules:

- `go install go.etcd.io/etcd/server/v3@v3.6.x` is refused by the go command because that module's
  go.mod carries `replace` directives (to sibling directories), so etcd is built from a temp module
  that requires it; its requirements already pin the matching etcd api/client/pkg modules.
- k8s.io/kubernetes requires its staging modules (`k8s.io/api`, ...) at `v0.0.0` and replaces them
  with `./staging/src/...`; replaces only apply in the main module, so the temp module replaces each
  staging module with its published `v0.X.Y`. The list of staging modules is read from the
  published go.mod of that kubernetes version, never hard-coded.

Binaries land in `~/.cache/kiln-testbin/<version>/` (override: KILN_TESTBIN_DIR) and are reused.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.37.2"
ETCD_VERSION = "v3.6.16"
GO = os.environ.get("KILN_GO", "/usr/local/go/bin/go")
BUILD_FLAGS = ["-trimpath", "-ldflags=-s -w"]
# A cold build of kube-apiserver + kube-controller-manager is ~15 min of CPU on 2 cores.
BUILD_TIMEOUT = float(os.environ.get("KILN_TESTBIN_TIMEOUT", "3600"))
# Bumped when the way binaries are built changes, so caches made the old way are rebuilt.
RECIPE = "2"


class TestbinUnavailable(RuntimeError):
    """The binaries are not cached and cannot be built here (no Go toolchain, no network, build error)."""


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path


def cache_root() -> Path:
    override = os.environ.get("KILN_TESTBIN_DIR")
    if override:
        return Path(override)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kiln-testbin"


def _say(msg: str) -> None:
    print(f"[testbin] {msg}", file=sys.stderr, flush=True)


def staging_version(kubernetes_version: str) -> str:
    """k8s.io/kubernetes v1.X.Y publishes its staging modules as v0.X.Y."""
    m = re.fullmatch(r"v1\.(\d+)\.(\d+)", kubernetes_version)
    if m is None:
        raise ValueError(f"not a stable kubernetes version: {kubernetes_version}")
    return f"v0.{m.group(1)}.{m.group(2)}"


def staging_modules(gomod_text: str) -> list[str]:
    """Module paths that kubernetes' go.mod replaces with a directory under ./staging/."""
    found = re.findall(r"^\s*(?:replace\s+)?(k8s\.io/[\w.\-/]+)\s*=>\s*\./staging/", gomod_text, re.M)
    return sorted(set(found))


def version_ldflags(version: str) -> str:
    """What hack/lib/version.sh stamps, so /version and the components report the real version."""
    major, minor = version.lstrip("v").split(".")[:2]
    stamps = {"gitVersion": version, "gitMajor": major, "gitMinor": minor, "gitTreeState": "clean",
              "buildDate": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return " ".join(
        f"-X {pkg}.{key}={value}"
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version")
        for key, value in stamps.items()
    )


def _go_env(work: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GOFLAGS="-mod=mod",
        GOTOOLCHAIN="local",  # module go.mods ask for a newer patch toolchain; the local 1.26 builds them
        GOWORK="off",
        CGO_ENABLED="0",
        GOPROXY=os.environ.get("GOPROXY", "https://proxy.golang.org"),
        GONOSUMDB=os.environ.get("GONOSUMDB", ""),
    )
    env.setdefault("GOPATH", str(Path.home() / "go"))
    env["PWD"] = str(work)
    return env


def _run_go(args: list[str], work: Path, what: str, timeout: float = 600.0) -> str:
    if not Path(GO).exists() and shutil.which(GO) is None:
        raise TestbinUnavailable(f"no Go toolchain at {GO}")
    start = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(30):
            _say(f"  ... {what}: {time.monotonic() - start:.0f}s")

    ticker = threading.Thread(target=heartbeat, daemon=True)
    ticker.start()
    try:
        proc = subprocess.run(
            [GO, *args], cwd=work, env=_go_env(work), capture_output=True, text=True, check=False, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise TestbinUnavailable(f"{what} did not finish in {timeout:.0f}s (network?)") from exc
    finally:
        done.set()
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        tail = "\n".join(lines[-25:])
        raise TestbinUnavailable(f"{what} failed: {lines[-1]}\n{tail}")
    _say(f"  {what}: done in {time.monotonic() - start:.0f}s")
    return proc.stdout


def _write_module(work: Path, requires: dict[str, str], replaces: dict[str, str]) -> None:
    lines = ["module kiln.dev/testbin", "", "go 1.26", ""]
    lines += [f"require {mod} {ver}" for mod, ver in requires.items()]
    lines += [""] + [f"replace {mod} => {mod} {ver}" for mod, ver in replaces.items()]
    (work / "go.mod").write_text("\n".join(lines) + "\n")


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder (make + pytest) waits, then reuses
        yield


def _install(built: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(built, tmp)
    tmp.chmod(0o755)
    os.replace(tmp, dest)


def _fresh(*paths: Path) -> bool:
    """All ``paths`` exist and were built with the current RECIPE."""
    marker = paths[0].parent / ".recipe"
    return all(p.exists() for p in paths) and marker.exists() and marker.read_text().strip() == RECIPE


def _mark(directory: Path) -> None:
    (directory / ".recipe").write_text(RECIPE + "\n")


def build_etcd(version: str = ETCD_VERSION) -> Path:
    dest = cache_root() / version / "etcd"
    if _fresh(dest):
        return dest
    with _locked(cache_root()):
        if _fresh(dest):
            return dest
        with tempfile.TemporaryDirectory(prefix="kiln-testbin-etcd-") as tmp:
            work = Path(tmp)
            _say(f"building etcd {version} (go.etcd.io/etcd/server/v3)")
            _write_module(work, {"go.etcd.io/etcd/server/v3": version}, {})
            _run_go(["build", *BUILD_FLAGS, "-o", str(work / "etcd"), "go.etcd.io/etcd/server/v3"],
                    work, "etcd build", BUILD_TIMEOUT)
            _install(work / "etcd", dest)
            _mark(dest.parent)
    return dest


def build_kubernetes(version: str = KUBERNETES_VERSION) -> tuple[Path, Path]:
    root = cache_root() / version
    apiserver, kcm = root / "kube-apiserver", root / "kube-controller-manager"
    if _fresh(apiserver, kcm):
        return apiserver, kcm
    with _locked(cache_root()):
        if _fresh(apiserver, kcm):
            return apiserver, kcm
        with tempfile.TemporaryDirectory(prefix="kiln-testbin-k8s-") as tmp:
            work = Path(tmp)
            (work / "go.mod").write_text("module kiln.dev/probe\n\ngo 1.26\n")
            _say(f"reading the published go.mod of k8s.io/kubernetes@{version}")
            info = json.loads(_run_go(["mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
                                      work, "go mod download"))
            if "GoMod" not in info:
                raise TestbinUnavailable(f"module proxy has no go.mod for k8s.io/kubernetes@{version}: {info}")
            staging = staging_modules(Path(info["GoMod"]).read_text())
            if not staging:
                raise TestbinUnavailable(f"no staging modules found in k8s.io/kubernetes@{version} go.mod")
            sv = staging_version(version)
            _say(f"{len(staging)} staging modules pinned at {sv}")
            _write_module(work, {"k8s.io/kubernetes": version}, dict.fromkeys(staging, sv))
            out = work / "bin"
            out.mkdir()
            _say(f"building kube-apiserver and kube-controller-manager {version} (takes minutes the first time)")
            _run_go(["build", "-trimpath", f"-ldflags=-s -w {version_ldflags(version)}", "-o", str(out) + "/",
                     "k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kube-controller-manager"],
                    work, "kubernetes build", BUILD_TIMEOUT)
            _install(out / "kube-apiserver", apiserver)
            _install(out / "kube-controller-manager", kcm)
            _mark(root)
    return apiserver, kcm


def ensure_binaries() -> Binaries:
    """Cached binaries, building what is missing. Raises TestbinUnavailable when that is impossible."""
    start = time.monotonic()
    etcd = build_etcd()
    apiserver, kcm = build_kubernetes()
    elapsed = time.monotonic() - start
    if elapsed > 5:
        _say(f"binaries ready in {elapsed:.0f}s under {cache_root()}")
    return Binaries(etcd=etcd, kube_apiserver=apiserver, kube_controller_manager=kcm)


def cached_binaries() -> Binaries | None:
    b = Binaries(
        etcd=cache_root() / ETCD_VERSION / "etcd",
        kube_apiserver=cache_root() / KUBERNETES_VERSION / "kube-apiserver",
        kube_controller_manager=cache_root() / KUBERNETES_VERSION / "kube-controller-manager",
    )
    return b if _fresh(b.etcd) and _fresh(b.kube_apiserver, b.kube_controller_manager) else None


if __name__ == "__main__":
    try:
        bins = ensure_binaries()
    except TestbinUnavailable as e:
        _say(str(e))
        sys.exit(1)
    for p in (bins.etcd, bins.kube_apiserver, bins.kube_controller_manager):
        print(p)
