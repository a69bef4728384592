"""Registry cache and lazy base layers, as builder, against the real registry."""

from __future__ import annotations

import json
import subprocess

from tests.cli.buildkit import BUSYBOX_BASE, BuilderWorkspace
from tests.fixtures.registry import Registry, RepoNamer


def _layer_blobs(store_blobs: list[bytes]) -> int:
    return sum(1 for data in store_blobs if data[:2] == b"\x1f\x8b")


def test_fresh_store_gets_every_step_from_the_registry_cache_without_pulling_layers(
    ws: BuilderWorkspace, registry: Registry, fresh_repo: RepoNamer
) -> None:
    base_ref = f"{registry.host}/{fresh_repo('base')}:1"
    base_ctx = ws.context("base", {"Dockerfile": BUSYBOX_BASE})
    assert ws.build(base_ctx, "-t", base_ref, "--push").returncode == 0

    app = ws.context("app", {"Dockerfile": f"FROM {base_ref}\nCOPY a.txt /a.txt\nRUN echo built > /b.txt\n", "a.txt": "A\n"}, busybox=False)
    cache_ref = f"{registry.host}/{fresh_repo('cache')}:buildcache"
    first = ws.build(app, "--cache-to", cache_ref, "--store", str(ws.root / "store-a"))
    assert first.returncode == 0, first.stderr
    assert "cache exported" in first.stderr
    digest = first.stdout.strip().splitlines()[-1]

    # A fresh build pod: empty store, only the registry cache. Every step hits; the image is
    # pushed by cross-repository mounts; no layer is downloaded.
    out_ref = f"{registry.host}/{fresh_repo('out')}:1"
    fresh = ws.root / "store-b"
    second = ws.build(app, "--cache-from", f"type=registry,ref={cache_ref}", "--store", str(fresh), "--output", f"type=registry,name={out_ref}")
    assert second.returncode == 0, second.stderr
    assert second.stderr.count("CACHED") == 2 and second.stderr.count(" DONE ") == 1  # only FROM
    assert second.stdout.strip().splitlines()[-1] == digest
    blobs = [p.read_bytes() for p in (fresh / "blobs" / "sha256").iterdir()]
    assert _layer_blobs(blobs) == 0, "a cache hit must not pull layers"
    assert not (fresh / "kiln" / "snapshots").exists() or not any((fresh / "kiln" / "snapshots").iterdir())
    inspected = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{out_ref}"], capture_output=True, text=True, check=True)
    assert json.loads(inspected.stdout)["Digest"] == digest

    # A miss after hits fetches exactly the layers it must unpack, from their recorded sources.
    changed = ws.context("app2", {"Dockerfile": f"FROM {base_ref}\nCOPY a.txt /a.txt\nRUN echo built > /b.txt\nRUN cat /a.txt /b.txt > /c.txt\n", "a.txt": "A\n"}, busybox=False)
    third = ws.build(changed, "--cache-from", cache_ref, "--store", str(fresh), "-t", "localhost/app:3")
    assert third.returncode == 0, third.stderr
    run = ws.kiln("run", "--store", str(fresh), "localhost/app:3", "cat", "/c.txt")
    assert run.stdout == "A\nbuilt\n"


def test_unknown_cache_is_a_note_not_a_failure(ws: BuilderWorkspace, registry: Registry) -> None:
    ctx = ws.context("nocache", {"Dockerfile": BUSYBOX_BASE})
    result = ws.build(ctx, "--cache-from", f"{registry.host}/no/such-cache:1")
    assert result.returncode == 0, result.stderr
    assert "not used" in result.stderr
