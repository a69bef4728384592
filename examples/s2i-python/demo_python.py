"""The Python S2I example, end to end (opt-in: it needs the network and takes minutes).

    sudo .venv/bin/python examples/s2i-python/demo_python.py

1. debootstrap a Debian bookworm root filesystem with python3, venv and pip (from
   deb.debian.org; about 3.5 minutes here) and pack it as base/rootfs.tar;
2. build the base and the S2I builder with kiln, rootless, as the user ``builder``;
3. ``kiln s2i build`` the app (assemble pip-installs requirements.txt from PyPI) and run it;
4. edit the app and build it again with ``--incremental``: the downloaded wheels come back
   through save-artifacts, so nothing is downloaded twice.

Runs as root (debootstrap needs it); every kiln command runs as ``builder``. debootstrap is
used from the system, or unpacked from Debian's package into a temporary directory
(``apt-get download``), so nothing is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures.rootless import Rootless  # noqa: E402

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE = "localhost/kiln-demo/debian-python:bookworm"
BUILDER = "localhost/kiln-demo/s2i-python:1"
APP = "localhost/kiln-demo/python-app:1"


def step(title: str) -> None:
    print(f"\n\033[1m==> {title}\033[0m", flush=True)


def debootstrap_command(scratch: Path) -> tuple[list[str], dict[str, str]]:
    found = shutil.which("debootstrap")
    if found:
        return [found], {}
    subprocess.run(["apt-get", "download", "debootstrap"], cwd=scratch, check=True, capture_output=True)
    deb = next(scratch.glob("debootstrap_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(scratch / "debootstrap")], check=True)
    root = scratch / "debootstrap"
    return [str(root / "usr/sbin/debootstrap")], {"DEBOOTSTRAP_DIR": str(root / "usr/share/debootstrap")}


def main() -> int:
    if os.geteuid() != 0:
        print("demo_python: run as root (debootstrap needs it; kiln itself runs as builder)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="kiln-pydemo-", dir="/tmp"))
    base.chmod(0o755)
    try:
        (base / "rootless").mkdir()
        rootless = Rootless(base / "rootless")
        work = rootless.builder_tmpdir("pydemo-")
        env = {"KILN_STORE": str(work / "store")}

        def kiln(*args: str) -> str:
            print("$ kiln " + " ".join(args), flush=True)
            done = rootless.run_as_builder(rootless.kiln_argv(*args), cwd=work, env=env, timeout=1800)
            sys.stdout.write(done.stdout)
            sys.stderr.write(done.stderr)
            if done.returncode != 0:
                raise SystemExit(f"demo_python: kiln {args[0]} failed with exit code {done.returncode}")
            return done.stdout

        step(f"debootstrap --variant=minbase {SUITE} with python3, python3-venv, python3-pip")
        scratch = base / "scratch"
        scratch.mkdir()
        argv, extra = debootstrap_command(scratch)
        rootfs = scratch / "rootfs"
        t0 = time.monotonic()
        subprocess.run([*argv, "--variant=minbase", "--include=python3,python3-venv,python3-pip", SUITE, str(rootfs), MIRROR],
                       env={**os.environ, **extra}, check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        took = time.monotonic() - t0
        print(f"debootstrap took {took:.0f} s")
        shutil.copytree(HERE, work / "example", ignore=shutil.ignore_patterns("demo_python.py", "__pycache__"))
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(work / "example/base/rootfs.tar"), "."], check=True)
        shutil.rmtree(rootfs)
        subprocess.run(["chown", "-R", "builder:builder", str(work / "example")], check=True)

        step("build the base and the S2I builder, rootless")
        kiln("build", "--progress", "plain", "-t", BASE, str(work / "example/base"))
        kiln("build", "--progress", "plain", "-t", BUILDER, "--build-arg", f"BASE={BASE}", str(work / "example/builder"))
        kiln("s2i", "usage", BUILDER)

        step("kiln s2i build the app: assemble pip-installs requirements.txt")
        # A machine behind a TLS-inspecting proxy trusts an extra CA: hand it to pip with --inject
        # (a read-only bind mount of assemble only, never in a layer).
        tls: list[str] = []
        bundle = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
        if bundle and Path(bundle).is_file():
            tls = ["--inject", f"{bundle}:/run/kiln-ca", "-e", f"PIP_CERT=/run/kiln-ca/{Path(bundle).name}"]
        kiln("s2i", "build", "--progress", "plain", "--incremental", *tls, str(work / "example/app"), BUILDER, APP)
        out = kiln("run", APP)
        step("edit the app, build again with --incremental: the wheels come back")
        app = work / "example/app/app.py"
        app.write_text(app.read_text().replace('"none"', '"none at all"'))
        kiln("s2i", "build", "--progress", "plain", "--incremental", *tls, str(work / "example/app"), BUILDER, APP)
        out = kiln("run", APP)
        if "none at all" not in out:
            print("demo_python: the rebuilt app did not print its new table", file=sys.stderr)
            return 1
        print(f"\ndemo_python: OK (debootstrap {took:.0f} s)")
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
