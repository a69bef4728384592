"""`make demo`: build the example images rootless with kiln, push them to a loopback
registry, pull them into a fresh store and run them. Nothing comes from the internet.

Runs as root (like `make demo`), but every kiln command runs as the unprivileged user
`builder`, in its own user namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fixtures.registry import Registry  # noqa: E402
from tests.fixtures.rootless import Rootless  # noqa: E402


def step(title: str) -> None:
    print(f"\n\033[1m==> {title}\033[0m", flush=True)


def main() -> int:
    base = Path(tempfile.mkdtemp(prefix="kiln-demo-", dir="/tmp"))
    base.chmod(0o755)  # builder must reach the code copy below it
    (base / "rootless").mkdir()
    rootless = Rootless(base / "rootless")
    work = rootless.builder_tmpdir("demo-")
    try:
        with Registry.plain(base / "registry") as registry:
            print(f"registry: docker-registry (CNCF distribution) at {registry.url}, pid {registry.pid}")
            env = {"KILN_STORE": str(work / "store")}

            def kiln(*args: str, store: str | None = None) -> str:
                cmd = rootless.kiln_argv(*args)
                print("$ kiln " + " ".join(args), flush=True)
                extra = {**env, "KILN_STORE": store} if store else env
                result = rootless.run_as_builder(cmd, cwd=work, env=extra, timeout=600)
                sys.stdout.write(result.stdout)
                sys.stderr.write(result.stderr)
                if result.returncode != 0:
                    raise SystemExit(f"demo: kiln {args[0]} failed with exit code {result.returncode}")
                return result.stdout

            busybox_ctx = work / "busybox"
            shutil.copytree(REPO / "examples" / "busybox", busybox_ctx)
            shutil.copy2("/bin/busybox", busybox_ctx / "busybox")
            hello_ctx = work / "hello"
            shutil.copytree(REPO / "examples" / "hello", hello_ctx)
            subprocess.run(["chown", "-R", "builder:builder", str(work)], check=True)

            base_ref = f"{registry.host}/demo/busybox:latest"
            app_ref = f"{registry.host}/demo/hello:latest"

            step("build a busybox base image from Debian's busybox-static, rootless, and push it")
            t0 = time.monotonic()
            kiln("build", "--progress", "plain", "-t", base_ref, "--push", str(busybox_ctx))
            step("build a two-stage app on it (cache mount, COPY --from, --chown, USER)")
            kiln("build", "--progress", "plain", "-t", app_ref, "--build-arg", f"BASE={base_ref}", "--push", str(hello_ctx))
            step("rebuild the app: every step comes from the cache")
            kiln("build", "--progress", "plain", "-t", app_ref, "--build-arg", f"BASE={base_ref}", str(hello_ctx))
            built = time.monotonic() - t0

            step("pull the app into an empty store and run it")
            fresh = str(work / "fresh-store")
            kiln("pull", "--progress", "plain", app_ref, store=fresh)
            kiln("images", store=fresh)
            out = kiln("run", app_ref, store=fresh)
            kiln("run", app_ref, "id", store=fresh)
            step("copy registry to registry, and inspect")
            kiln("copy", "--progress", "plain", app_ref, f"{registry.host}/demo/hello:copy")
            kiln("inspect", "--remote", f"{registry.host}/demo/hello:copy")
            if "Hello from an image built by kiln" not in out:
                print("demo: the app did not print its message", file=sys.stderr)
                return 1
            if os.environ.get("KILN_DEMO_S2I", "1") != "0":  # KILN_DEMO_S2I=0 skips it
                s2i_demo(rootless, work, kiln, registry.host, base_ref)
            print(f"\ndemo: OK (builds took {built:.1f}s)")
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


def s2i_demo(rootless: Rootless, work: Path, kiln: Callable[..., str], host: str, base_ref: str) -> None:
    """S2I (examples/s2i-static): a static-site builder on the busybox base, a site built from
    source with `kiln s2i build`, served by busybox httpd and fetched over loopback. The Python
    builder (debootstrap, minutes) is opt-in: examples/s2i-python/demo_python.py."""
    import socket
    import urllib.request

    ctx = work / "s2i-static"
    shutil.copytree(REPO / "examples" / "s2i-static", ctx)
    subprocess.run(["chown", "-R", "builder:builder", str(ctx)], check=True)
    builder_ref, site_ref = f"{host}/demo/s2i-static-builder:latest", f"{host}/demo/site:latest"
    step("S2I: a static-site builder on the busybox base, and a site built from source with it")
    kiln("build", "--progress", "plain", "-t", builder_ref, "--build-arg", f"BASE={base_ref}", "--push", str(ctx / "builder"))
    kiln("s2i", "usage", builder_ref)
    kiln("s2i", "build", "--progress", "plain", "--push", str(ctx / "app"), builder_ref, site_ref)
    kiln("inspect", site_ref)
    step("S2I: run the site (busybox httpd) and fetch its page over loopback")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"KILN_STORE": str(work / "store")}
    server = rootless.popen_as_builder(rootless.kiln_argv("run", "--timeout", "60", "-e", f"PORT={port}", site_ref), cwd=work, env=env)
    try:
        page = ""
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    page = response.read().decode()
                break
            except OSError:
                time.sleep(0.2)
        print(page.strip())
        if "built by kiln s2i" not in page:
            raise SystemExit("demo: the S2I site did not serve its page")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    raise SystemExit(main())
