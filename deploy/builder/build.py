"""Build the kiln builder image without Docker Hub: a Debian base made with debootstrap, then the Dockerfile.

    python deploy/builder/build.py REGISTRY/REPO:TAG [--base REF] [--store DIR]

1. The base ``REGISTRY/kiln/debian:bookworm`` (unless ``--base`` names one, or it is already in
   the registry): ``debootstrap --variant=minbase --include=python3,python3-venv,git,ca-certificates``
   from the mirror the host's apt uses, packed once into ~/.cache/kiln-builder/ (reused), then
   ``FROM scratch`` + ``ADD rootfs.tar.gz /`` built and pushed by kiln.
2. ``kiln build -f deploy/builder/Dockerfile --build-arg BASE=<base> -t REF --push <repo root>``.

Needs root (debootstrap chroots) and the apt mirror; prints the pushed reference on stdout.
If debootstrap is not installed, its Debian package is fetched with ``apt-get download`` and
unpacked to a temporary directory (nothing is installed on the host).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SUITE = "bookworm"
PACKAGES = "python3,python3-venv,git,ca-certificates"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kiln-builder"


def say(msg: str) -> None:
    print(f"[builder-image] {msg}", file=sys.stderr, flush=True)


def apt_mirror() -> str:
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1]
    raise SystemExit("no Debian mirror found in the apt configuration")


def debootstrap_command(work: Path) -> tuple[list[str], dict[str, str]]:
    found = shutil.which("debootstrap")
    if found:
        return [found], {}
    say("debootstrap is not installed: unpacking its Debian package into a temporary directory")
    subprocess.run(["apt-get", "download", "debootstrap"], cwd=work, check=True, capture_output=True)
    deb = next(work.glob("debootstrap_*.deb"))
    root = work / "debootstrap"
    subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
    return [str(root / "usr/sbin/debootstrap")], {"DEBOOTSTRAP_DIR": str(root / "usr/share/debootstrap")}


def rootfs_tarball() -> Path:
    """A gzip'd tar of a minimal Debian with python3 and git (made once, then reused from the cache)."""
    out = CACHE / f"debian-{SUITE}-rootfs.tar.gz"
    if out.exists():
        return out
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kiln-debootstrap-") as tmp:
        work = Path(tmp)
        cmd, env = debootstrap_command(work)
        target = work / "rootfs"
        say(f"debootstrap {SUITE} (minbase + {PACKAGES}); takes a few minutes")
        subprocess.run([*cmd, "--variant=minbase", f"--include={PACKAGES}", SUITE, str(target), apt_mirror()],
                       env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        for transient in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (target / transient).glob("*"):
                if entry.is_file():
                    entry.unlink()
        partial = out.with_suffix(".partial")
        # device nodes and the kernel filesystems are the runtime's business, not the image's
        subprocess.run(["tar", "-C", str(target), "--numeric-owner", "--exclude=./dev/*", "--exclude=./proc/*",
                        "--exclude=./sys/*", "-czf", str(partial), "."], check=True)  # fmt: skip
        partial.rename(out)
    return out


def kiln(*args: str, store: Path) -> None:
    env = {**os.environ, "KILN_STORE": str(store), "PYTHONPATH": str(REPO / "src")}
    subprocess.run([sys.executable, "-m", "kiln", *args], env=env, check=True, stdout=sys.stderr)


def registry_has(ref: str) -> bool:
    sys.path.insert(0, str(REPO / "src"))
    from kiln.errors import KilnError
    from kiln.registry.pull import head_manifest
    from kiln.registry.reference import Reference

    try:
        return head_manifest(Reference.parse(ref)) is not None
    except KilnError:
        return False


def build_base(ref: str, store: Path) -> None:
    tarball = rootfs_tarball()
    with tempfile.TemporaryDirectory(prefix="kiln-base-") as tmp:
        ctx = Path(tmp)
        os.link(tarball, ctx / "rootfs.tar.gz") if tarball.stat().st_dev == ctx.stat().st_dev else shutil.copy(tarball, ctx / "rootfs.tar.gz")
        (ctx / "Dockerfile").write_text(f"FROM scratch\nADD rootfs.tar.gz /\nENV LANG=C.UTF-8\nCMD [\"bash\"]\nLABEL org.opencontainers.image.description=\"Debian {SUITE} minbase (debootstrap) with {PACKAGES}\"\n")
        kiln("build", "--progress", "plain", "-t", ref, "--push", str(ctx), store=store)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ref", help="where to push the builder image, e.g. 127.0.0.1:5000/kiln/builder:dev")
    parser.add_argument("--base", help="an existing Debian bookworm image to build on (skips debootstrap)")
    parser.add_argument("--store", type=Path, default=CACHE / "store", help="kiln store for the builds")
    args = parser.parse_args(argv)
    registry = args.ref.split("/", 1)[0]
    base = args.base or f"{registry}/kiln/debian:{SUITE}"
    if args.base is None and not registry_has(base):
        build_base(base, args.store)
    say(f"builder image on {base}")
    extra = []
    ca = Path(os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt")
    if ca.is_file():
        extra = ["--secret", f"id=ca-bundle,src={ca}"]  # the host's trust (a TLS-inspecting proxy's CA) for pip
    kiln("build", "--progress", "plain", "-f", str(REPO / "deploy/builder/Dockerfile"), "--build-arg", f"BASE={base}", *extra,
         "-t", args.ref, "--push", str(REPO), store=args.store)  # fmt: skip
    print(args.ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
