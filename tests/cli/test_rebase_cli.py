"""`kiln rebase` as a command: refusals are one line without a traceback, success prints DEST@DIGEST."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.cli.buildkit import BUSYBOX_BASE, BuilderWorkspace
from tests.fixtures.images import BuiltImage, push_with_skopeo
from tests.fixtures.registry import Registry, RepoNamer

SRC = Path(__file__).resolve().parents[2] / "src"


def _kiln(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    env.pop("KILN_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True, timeout=300, env=env)


def _one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kiln: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]
    assert result.stdout == ""


def test_refusals_are_one_line(registry: Registry, fresh_repo: RepoNamer, busybox_image: BuiltImage) -> None:
    plain = f"{registry.host}/{fresh_repo('plain')}:v1"
    push_with_skopeo(busybox_image.layout, registry, plain.removeprefix(registry.host + "/"), src_tag="latest")
    _one_error_line(_kiln("rebase", "--progress", "plain", plain), plain, "org.opencontainers.image.base.name", "--old-base")
    # the skopeo-pushed image is not kiln's and carries no rebasable mark
    _one_error_line(_kiln("rebase", plain, "--old-base", plain), plain, "not marked rebasable")


def test_rebase_prints_the_new_reference(ws: BuilderWorkspace, registry: Registry, fresh_repo: RepoNamer) -> None:
    base = f"{registry.host}/{fresh_repo('base')}:1"
    app = f"{registry.host}/{fresh_repo('app')}:1"
    ctx = ws.context("base", {"Dockerfile": BUSYBOX_BASE})
    assert ws.build(ctx, "-t", base, "--push").returncode == 0
    app_ctx = ws.context("app", {"Dockerfile": f"FROM {base}\nCOPY --link f /f\n", "f": "x\n"}, busybox=False)
    assert ws.build(app_ctx, "-t", app, "--push").returncode == 0
    out = _kiln("rebase", "--progress", "plain", app, "-t", app.replace(":1", ":2"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(app.replace(":1", ":2") + "@sha256:")
    assert "rebasing" in out.stderr and "base unchanged" in out.stderr
