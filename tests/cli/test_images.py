"""The image commands end to end, through `python -m kiln`, against the real registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.images import BuiltImage, push_with_skopeo
from tests.fixtures.registry import Registry, RepoNamer


def kiln(*args: str, store: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "KILN_STORE": str(store), **(env or {})}
    full_env.pop("KILN_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True, env=full_env, timeout=120)


def assert_one_error_line(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kiln: error: ") or lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_pull_tag_push_inspect_rmi_prune(tmp_path: Path, registry: Registry, fresh_repo: RepoNamer, busybox_image: BuiltImage) -> None:
    store = tmp_path / "store"
    src = f"{registry.host}/{fresh_repo('src')}:v1"
    push_with_skopeo(busybox_image.layout, registry, src.split("/", 1)[1])

    pulled = kiln("pull", "--progress", "plain", src, store=store)
    assert pulled.returncode == 0, pulled.stderr
    assert pulled.stdout.split() == [src, busybox_image.manifest.digest]
    assert "pulled" in pulled.stderr  # plain progress lines, not a terminal

    listed = kiln("images", store=store)
    assert src in listed.stdout and busybox_image.manifest.digest.split(":")[1][:12] in listed.stdout

    dest = f"{registry.host}/{fresh_repo('dest')}:v2"
    assert kiln("tag", src, dest, store=store).returncode == 0
    pushed = kiln("push", "--progress", "plain", dest, store=store)
    assert pushed.returncode == 0, pushed.stderr
    # the manifest reaches the registry byte-identical: same digest as skopeo's original
    assert pushed.stdout.split() == [dest, busybox_image.manifest.digest]
    assert "mounted" in pushed.stderr or "exists" in pushed.stderr  # layer came across without re-upload

    local = json.loads(kiln("inspect", dest, store=store).stdout)
    assert local["Source"] == "store" and local["Digest"] == busybox_image.manifest.digest
    assert local["Config"]["rootfs"]["diff_ids"] == list(busybox_image.diff_ids)
    remote = json.loads(kiln("inspect", "--remote", dest, store=store).stdout)
    assert remote["Digest"] == busybox_image.manifest.digest

    assert kiln("rmi", src, dest, store=store).returncode == 0
    assert kiln("images", "-q", store=store).stdout.strip() == ""
    pruned = kiln("prune", store=store)
    assert pruned.returncode == 0 and "removed 3 blobs" in pruned.stdout
    assert not any((store / "blobs" / "sha256").iterdir())


def test_copy_between_repositories(tmp_path: Path, registry: Registry, fresh_repo: RepoNamer, busybox_image: BuiltImage) -> None:
    src = f"{registry.host}/{fresh_repo('a')}:1"
    dest = f"{registry.host}/{fresh_repo('b')}:1"
    push_with_skopeo(busybox_image.layout, registry, src.split("/", 1)[1])
    copied = kiln("copy", "--progress", "plain", src, dest, store=tmp_path / "unused")
    assert copied.returncode == 0, copied.stderr
    assert copied.stdout.split() == [dest, busybox_image.manifest.digest]
    # copy streams registry to registry: the local store was never written
    assert not (tmp_path / "unused" / "blobs").exists() or not any((tmp_path / "unused" / "blobs" / "sha256").iterdir())


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("pull", "UPPER/Case:bad"), "UPPER/Case:bad"),
        (("pull", "a:b:c:d"), "a:b:c:d"),
        (("push", "nothing-here:1"), "nothing-here"),
        (("inspect", "127.0.0.1:9/none:1"), "127.0.0.1:9/none"),
        (("tag", "missing:1", "other:2"), "missing"),
        (("pull", "--platform", "linux", "busybox"), "linux"),
    ],
)
def test_bad_input_gives_one_line_and_no_traceback(tmp_path: Path, args: tuple[str, ...], fragment: str) -> None:
    result = kiln(*args, store=tmp_path / "s")
    assert_one_error_line(result, fragment)


def test_missing_image_in_registry(tmp_path: Path, registry: Registry) -> None:
    result = kiln("pull", f"{registry.host}/no/such:tag", store=tmp_path / "s")
    assert_one_error_line(result, "no/such")
    # nothing half-written: no tag, no blob
    assert json.loads((tmp_path / "s" / "index.json").read_text())["manifests"] == []
