"""The committed CRDs are exactly what the models generate, and they are structural schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kiln.cluster import crdgen

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "crds"
DEPLOY_ROOT = DEPLOY.parent


@pytest.mark.parametrize("name", sorted(crdgen.crds()))
def test_committed_yaml_equals_generated(name: str) -> None:
    assert (DEPLOY / name).read_text() == crdgen.render(crdgen.crds()[name]), "run python -m kiln.cluster.crdgen"


def test_check_mode(tmp_path: Path) -> None:
    assert crdgen.main(["--out", str(tmp_path), "--check"]) == 1
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    assert crdgen.main(["--out", str(tmp_path), "--check"]) == 0


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if isinstance(node, dict):
        out.append((path, node))
        for k, v in node.get("properties", {}).items():
            out.extend(_walk(v, f"{path}.{k}"))
        if isinstance(node.get("additionalProperties"), dict):
            out.extend(_walk(node["additionalProperties"], f"{path}.*"))
        if "items" in node:
            out.extend(_walk(node["items"], f"{path}[]"))
    return out


@pytest.mark.parametrize("name", sorted(crdgen.crds()))
def test_schema_is_structural(name: str) -> None:
    crd = yaml.safe_load((DEPLOY / name).read_text())
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    for path, node in _walk(version["schema"]["openAPIV3Schema"]):
        assert "$ref" not in node and "title" not in node and "const" not in node, path
        assert node.get("additionalProperties") is not False, path
        assert node.get("default", "") is not None, path
        if node.get("x-kubernetes-int-or-string"):
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "anyOf" not in node, path
            assert node.get("type") or node.get("x-kubernetes-preserve-unknown-fields"), path


def test_names_and_enums() -> None:
    bc = crdgen.crds()["buildconfigs.yaml"]
    kb = crdgen.crds()["builds.yaml"]
    assert bc["spec"]["names"]["shortNames"] == ["bc"]
    assert kb["spec"]["names"]["shortNames"] == ["kb"]
    spec = bc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["runPolicy"]["enum"] == ["Serial", "Parallel", "SerialLatestOnly"]
    assert spec["properties"]["strategy"]["properties"]["type"]["enum"] == ["Docker", "Source", "Custom", "Pipeline"]
    assert "strategy" in spec["required"]
    status = kb["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["properties"]["phase"]["enum"] == ["New", "Pending", "Running", "Complete", "Failed", "Error", "Cancelled"]
    rules = [r["message"] for r in spec["properties"]["strategy"]["x-kubernetes-validations"]]
    assert "strategy.sourceStrategy is required when strategy.type is Source" in rules
    # no free-form corner: every field of a trigger is typed too
    free = [p for p, n in _walk(bc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]) if n.get("x-kubernetes-preserve-unknown-fields")]
    assert free == []
    trigger = spec["properties"]["triggers"]["items"]["properties"]
    assert set(trigger["imageChange"]["properties"]) == {"from", "paused"}
    assert trigger["github"]["properties"]["secretReference"]["required"] == ["name"]


def test_refuses_a_union_without_structural_form() -> None:
    with pytest.raises(crdgen.SchemaError, match="union"):
        crdgen.structural({"anyOf": [{"type": "integer"}, {"type": "boolean"}]})


@pytest.mark.parametrize("name", sorted(crdgen.generated_files()))
def test_every_generated_deploy_file_is_committed(name: str) -> None:
    assert (DEPLOY_ROOT / name).read_text() == crdgen.generated_files()[name], "run python -m kiln.cluster.crdgen"
