"""The dataclass codec under kiln.oci.models: names, paths in errors, leniency, None and unknown fields."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.oci import mediatypes as mt
from kiln.oci.modelcodec import Invalid
from kiln.oci.models import ContainerConfig, Descriptor, HealthConfig, ImageConfig, Manifest

D = "sha256:" + "b" * 64


def layer(**over: Any) -> dict[str, Any]:
    return {"mediaType": mt.OCI_LAYER_GZIP, "digest": D, "size": 5, **over}


def manifest(**over: Any) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "config": layer(mediaType=mt.OCI_CONFIG), "layers": [layer()], **over}


@pytest.mark.parametrize(
    ("doc", "where", "what"),
    [
        (manifest(layers=[layer(), layer(size="five")]), "layers.1.size", "expected an integer"),
        (manifest(layers=[layer(), {"mediaType": "x", "size": 1}]), "layers.1.digest", "field required"),
        (manifest(layers=[layer(digest="sha256:nope")]), "layers.0.digest", "invalid digest"),
        (manifest(layers=None), "layers", "expected a list"),
        (manifest(config=[]), "config", "expected an object"),
        (manifest(annotations={"a": 1}), "annotations.a", "expected a string"),
        (manifest(subject=layer(size=-2)), "subject.size", "must not be negative"),
    ],
)
def test_errors_name_the_field_by_its_json_path(doc: dict[str, Any], where: str, what: str) -> None:
    with pytest.raises(Invalid) as info:
        Manifest.from_dict(doc)
    assert str(info.value).startswith(f"field {where}: ")
    assert what in str(info.value)


def test_integers_and_booleans_are_read_as_readers_in_the_field_write_them() -> None:
    m = Manifest.from_dict(manifest(layers=[layer(size=7.0), layer(size="8")]))
    assert [x.size for x in m.layers] == [7, 8]
    with pytest.raises(Invalid):
        Manifest.from_dict(manifest(layers=[layer(size=7.5)]))
    cfg = ContainerConfig.from_dict({"ArgsEscaped": "true"})
    assert cfg.args_escaped is True
    with pytest.raises(Invalid, match="ArgsEscaped: expected a boolean"):
        ContainerConfig.from_dict({"ArgsEscaped": "maybe"})


def test_none_is_left_out_at_model_level_but_kept_inside_unknown_values() -> None:
    raw = {"architecture": "arm64", "os": "linux", "variant": None, "x-top": None, "x-deep": {"a": None, "b": [None]},
           "config": {"Env": ["A=1"], "Cmd": None}, "rootfs": {"type": "layers", "diff_ids": []}}  # fmt: skip
    out = ImageConfig.from_dict(raw).to_dict()
    assert out == {"architecture": "arm64", "os": "linux", "x-deep": {"a": None, "b": [None]},
                   "config": {"Env": ["A=1"]}, "rootfs": {"type": "layers", "diff_ids": []}}  # fmt: skip


def test_python_names_construct_and_json_names_serialise() -> None:
    h = HealthConfig(test=["CMD", "true"], start_period=3)
    assert h.to_dict() == {"Test": ["CMD", "true"], "StartPeriod": 3}
    d = Descriptor.for_bytes(mt.OCI_CONFIG, b"{}", artifact_type="x/y")
    assert json.loads(d.to_json()) == {"mediaType": mt.OCI_CONFIG, "digest": d.digest, "size": 2, "artifactType": "x/y"}
    with pytest.raises(Invalid, match="digest"):
        Descriptor(media_type="x", digest="md5:00", size=1)


def test_clone_is_deep_and_equality_counts_unknown_fields() -> None:
    a = ImageConfig.from_dict({"config": {"Env": ["A=1"]}, "x-kept": {"n": 1}})
    b = a.clone()
    assert a == b
    assert b.config.env is not None
    b.config.env.append("B=2")
    b.extras["x-kept"]["n"] = 2
    assert a.config.env == ["A=1"] and a.extras == {"x-kept": {"n": 1}}
    assert a != b


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


@given(
    extra=st.dictionaries(st.text(min_size=1, max_size=8).filter(lambda k: k not in {"schemaVersion", "mediaType", "artifactType", "config", "layers", "subject", "annotations"}), _json, max_size=4),
    annotations=st.none() | st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
)
def test_a_manifest_writes_back_what_was_read(extra: dict[str, Any], annotations: dict[str, str] | None) -> None:
    doc = manifest(annotations=annotations, **extra)
    expected = {k: v for k, v in doc.items() if v is not None}
    assert Manifest.from_dict(doc).to_dict() == expected
