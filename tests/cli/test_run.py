"""`kiln run` as podman users expect it, and what a RUN step can and cannot reach, as builder."""

from __future__ import annotations

import os
import subprocess

from tests.cli.buildkit import BUSYBOX_BASE, BuilderWorkspace


def _image(ws: BuilderWorkspace) -> str:
    ctx = ws.context("img", {"Dockerfile": BUSYBOX_BASE + 'ENV GREETING=hello\nWORKDIR /work\nUSER app\nENTRYPOINT ["/bin/sh", "-c"]\nCMD ["echo $GREETING from $(pwd) as $(id -u)"]\n'})
    result = ws.build(ctx, "-t", "localhost/runme:1")
    assert result.returncode == 0, result.stderr
    return "localhost/runme:1"


def test_run_uses_the_image_config_and_the_flags(ws: BuilderWorkspace) -> None:
    image = _image(ws)
    default = ws.kiln("run", image)
    assert default.returncode == 0, default.stderr
    assert default.stdout == "hello from /work as 1000\n"
    overridden = ws.kiln("run", "-e", "GREETING=bonjour", "-u", "0", "-w", "/tmp", image, "echo $GREETING from $(pwd) as $(id -u)")
    assert overridden.stdout == "bonjour from /tmp as 0\n"
    entry = ws.kiln("run", "--entrypoint", "/bin/cat", image, "/etc/passwd")
    assert "app:x:1000" in entry.stdout
    code = ws.kiln("run", image, "exit 42")
    assert code.returncode == 42


def test_run_volumes_and_rm(ws: BuilderWorkspace) -> None:
    image = _image(ws)
    shared = ws.root / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("from the host\n")
    os.chown(shared, ws.rootless.uid, ws.rootless.gid)
    os.chown(shared / "in.txt", ws.rootless.uid, ws.rootless.gid)
    rw = ws.kiln("run", "--rm", "-u", "0", "-v", f"{shared}:/data", image, "cat /data/in.txt && echo out > /data/out.txt")
    assert rw.returncode == 0, rw.stderr
    assert rw.stdout == "from the host\n"
    assert (shared / "out.txt").read_text() == "out\n"
    ro = ws.kiln("run", "-u", "0", "-v", f"{shared}:/data:ro", image, "echo no > /data/denied.txt")
    assert ro.returncode != 0 and not (shared / "denied.txt").exists()
    # --rm (the default): the container's writes do not outlive it
    ws.kiln("run", "-u", "0", image, "echo scratch > /work/left-behind")
    again = ws.kiln("run", image, "test -e /work/left-behind && echo present || echo absent")
    assert again.stdout == "absent\n"
    bad = ws.kiln("run", "-v", "/does/not/exist:/x", image)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "/does/not/exist" in bad.stderr


def test_run_step_cannot_reach_the_host(ws: BuilderWorkspace) -> None:
    marker = "/tmp/kiln-host-marker-" + os.urandom(4).hex()
    with open(marker, "w") as f:
        f.write("host secret\n")
    try:
        ctx = ws.context("iso", {
            "Dockerfile": BUSYBOX_BASE
            + f"RUN test ! -e {marker} && echo no-host-files\n"
            + "RUN test $(ls /proc | grep -c '^[0-9]') -le 6 && echo few-processes\n"
            + "RUN --mount=type=bind,target=/ctx sh -c 'echo x > /ctx/written' || echo context-read-only\n"
            + "RUN --network=none sh -c 'wget -q -T 2 -O- http://127.0.0.1:1/ ; ip link 2>/dev/null | grep -c UP' ; echo isolated-net\n",
            "ctxfile": "c\n",
        })
        result = ws.build(ctx)
        assert result.returncode == 0, result.stderr
        for word in ("no-host-files", "few-processes", "context-read-only", "isolated-net"):
            assert word in result.stderr, word
        assert not (ctx / "written").exists()
        host_procs = subprocess.run(["ps", "-e"], capture_output=True, text=True).stdout.count("\n")
        assert host_procs > 6  # the host has many processes; the step saw at most six (init, sh, ls, grep)
    finally:
        os.unlink(marker)
