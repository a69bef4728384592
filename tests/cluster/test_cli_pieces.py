"""Config-file loading (kiln build --config), the builds table, instantiation, binary artifacts (real registry)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kiln.cluster.binary import download, pack, upload
from kiln.cluster.config_file import load_build
from kiln.cluster.instantiate import new_build
from kiln.cluster.models import Build, BuildConfig
from kiln.cluster.table import builds_table, human_duration
from kiln.errors import UsageError
from kiln.oci.store import Store
from kiln.registry.options import RegistryOptions
from kiln.registry.reference import Reference
from tests.fixtures.registry import Registry

BC = {"apiVersion": "kiln.dev/v1alpha1", "kind": "BuildConfig", "metadata": {"name": "app", "namespace": "ns", "uid": "bc-uid"},
      "spec": {"source": {"dockerfile": "FROM scratch\n"}, "strategy": {"type": "Docker"}, "output": {"to": {"name": "r/app:1"}}}}  # fmt: skip


def test_load_from_multi_document_yaml_with_env() -> None:
    text = "kind: ConfigMap\nmetadata: {name: x}\n---\n" + json.dumps(BC)
    loaded = load_build(text, "f.yaml", {"A": "1"})
    assert loaded.kind == "BuildConfig" and loaded.name == "app"
    assert loaded.spec.strategy.docker_strategy is not None
    assert [(e.name, e.value) for e in loaded.spec.strategy.docker_strategy.env] == [("A", "1")]
    build = {**BC, "kind": "Build", "spec": {**BC["spec"], "triggeredBy": [{"message": "m"}]}}
    assert load_build(json.dumps(build), "b.json").spec.triggered_by[0].message == "m"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: [", "not YAML or JSON"),
        ("kind: Pod\n", "no BuildConfig or Build"),
        (json.dumps({**BC, "spec": {"strategy": {"type": "Source"}, "source": {"git": {"uri": "x"}}}}), "spec.strategy: strategy.sourceStrategy is required"),
    ],
)
def test_load_errors_are_usage_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_build(text, "f.yaml")


def test_new_build_object() -> None:
    obj = new_build(BuildConfig.model_validate(BC), 4, env={"K": "V"})
    assert obj["metadata"]["name"] == "app-4"
    assert obj["metadata"]["labels"] == {"kiln.dev/buildconfig": "app"}
    assert obj["metadata"]["annotations"] == {"kiln.dev/build-number": "4"}
    assert obj["metadata"]["ownerReferences"][0] == {"apiVersion": "kiln.dev/v1alpha1", "kind": "BuildConfig", "name": "app", "uid": "bc-uid", "controller": True, "blockOwnerDeletion": True}
    build = Build.model_validate(obj)
    assert build.number == 4 and build.spec.triggered_by[0].message == "Manually triggered"
    with pytest.raises(UsageError, match=r"no source\.binary"):
        new_build(BuildConfig.model_validate(BC), 1, binary_artifact="r/x@sha256:" + "0" * 64)
    binary = BuildConfig.model_validate({**BC, "spec": {**BC["spec"], "source": {"binary": {"asFile": "app.jar"}}}})
    with pytest.raises(UsageError, match="takes binary input"):
        new_build(binary, 1)
    spec = new_build(binary, 1, binary_artifact="r/x@sha256:" + "0" * 64)["spec"]
    assert spec["source"]["binary"] == {"asFile": "app.jar", "artifact": "r/x@sha256:" + "0" * 64}


def test_builds_table() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
    b = Build.model_validate({
        "metadata": {"name": "app-2", "namespace": "ns", "labels": {"kiln.dev/buildconfig": "app"}, "annotations": {"kiln.dev/build-number": "2"}},
        "spec": {"source": {"git": {"uri": "u", "ref": "0123456789"}}, "strategy": {"type": "Docker"}},
        "status": {"phase": "Failed", "reason": "DockerBuildFailed", "startTimestamp": "2025-01-01T11:55:00Z", "duration": 75 * 10**9},
    })  # fmt: skip
    lines = builds_table([b], now=now).splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "FROM", "STATUS", "STARTED", "DURATION"]
    assert lines[1].split() == ["app-2", "Docker", "Git@0123456", "Failed", "(DockerBuildFailed)", "5m0s", "ago", "75s"]
    assert builds_table([], now=now) == "No builds found."
    assert [human_duration(s) for s in (5, 130, 4000, 90000, 200000)] == ["5s", "2m10s", "66m", "25h0m", "2d"]


def test_binary_artifact_round_trip(tmp_path: Path, registry: Registry, fresh_repo: Any) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("a\n")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref\n")
    assert pack(src) == pack(src)  # deterministic
    store = Store(tmp_path / "store")
    ref = upload(src, Reference.parse(f"{registry.host}/{fresh_repo()}:upload"), store, RegistryOptions())
    assert "@sha256:" in ref and ":upload" not in ref
    out = tmp_path / "out"
    out.mkdir()
    download(ref, Store(tmp_path / "store2"), out, RegistryOptions())
    assert (out / "sub" / "a.txt").read_text() == "a\n"
    assert not (out / ".git").exists()
    single = tmp_path / "app.jar"
    single.write_bytes(b"jar")
    ref2 = upload(single, Reference.parse(f"{registry.host}/{fresh_repo('file')}:u"), store, RegistryOptions(), as_file="renamed.jar")
    out2 = tmp_path / "out2"
    out2.mkdir()
    download(ref2, Store(tmp_path / "store3"), out2, RegistryOptions())
    assert (out2 / "renamed.jar").read_bytes() == b"jar"


@pytest.mark.parametrize("name", ["../evil", "/abs", "a/../../evil", "link/inside"])
def test_extract_refuses_entries_leaving_the_destination(tmp_path: Path, name: str) -> None:
    import io
    import tarfile

    from kiln.cluster.binary import BinarySourceError, extract

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, str(tmp_path)
        tar.addfile(link)
        info = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    raw.seek(0)
    dest = tmp_path / "dest"
    dest.mkdir()
    with tarfile.open(fileobj=raw) as tar, pytest.raises(BinarySourceError):
        extract(tar, dest, "test")
    assert not (tmp_path / "evil").exists() and not (tmp_path / "inside").exists()
