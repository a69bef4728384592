"""Generate deploy/crds/*.yaml from the pydantic models, and deploy/*.yaml from kiln.cluster.manifests
(``python -m kiln.cluster.crdgen [--check]``).

pydantic's JSON Schema is rewritten into a Kubernetes *structural* schema: ``$ref`` inlined, the
``anyOf [X, null]`` of optional fields collapsed to X (absence is how Kubernetes says "unset"),
``const`` turned into a one-value ``enum``, titles and ``additionalProperties: false`` dropped
(a structural schema prunes unknown fields instead), ``int | str`` maps marked
``x-kubernetes-int-or-string``. Anything else pydantic might emit is refused, so a new model
feature cannot silently produce a schema the API server rejects.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from kiln.cluster.models import GROUP, VERSION, BuildConfigSpec, BuildConfigStatus, BuildSpec, BuildStatus
from kiln.errors import KilnError

_ALLOWED_KEYS = {
    "type", "description", "properties", "required", "items", "additionalProperties", "enum", "default",
    "format", "pattern", "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string", "x-kubernetes-validations",
    "anyOf",
}  # fmt: skip


class SchemaError(KilnError):
    pass


def structural(model_schema: dict[str, Any]) -> dict[str, Any]:
    defs = model_schema.get("$defs", {})
    return _rewrite(model_schema, defs, "")


def _rewrite(node: dict[str, Any], defs: dict[str, Any], path: str) -> dict[str, Any]:
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        merged = {**defs[name], **{k: v for k, v in node.items() if k != "$ref"}}
        return _rewrite(merged, defs, path)
    node = dict(node)
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) == 1:
            node = {**options[0], **node} if "$ref" not in options[0] else {**_rewrite(options[0], defs, path), **node}
        elif sorted(o.get("type", "") for o in options) == ["integer", "string"]:
            node["x-kubernetes-int-or-string"] = True
            node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
        else:
            raise SchemaError(f"{path or '/'}: a union of {options} has no structural schema form")
    for key in ("title", "$defs", "examples"):
        node.pop(key, None)
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("default", 0) is None:
        del node["default"]
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    if "properties" in node:
        node["properties"] = {k: _rewrite(v, defs, f"{path}.{k}") for k, v in node["properties"].items()}
        node.setdefault("type", "object")
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = _rewrite(node["additionalProperties"], defs, f"{path}.*")
    if "items" in node:
        node["items"] = _rewrite(node["items"], defs, f"{path}[]")
    unknown = set(node) - _ALLOWED_KEYS
    if unknown:
        raise SchemaError(f"{path or '/'}: JSON Schema keywords {sorted(unknown)} are not allowed in a CRD schema")
    if "type" not in node and not node.get("x-kubernetes-int-or-string") and not node.get("x-kubernetes-preserve-unknown-fields"):
        raise SchemaError(f"{path or '/'}: no type")
    first = [k for k in ("type", "description") if k in node]
    return {k: node[k] for k in [*first, *sorted(set(node) - set(first))]}


def _schema(spec: type[BuildConfigSpec | BuildSpec], status: type[BuildConfigStatus | BuildStatus]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": structural(spec.model_json_schema(by_alias=True, mode="validation")),
            "status": structural(status.model_json_schema(by_alias=True, mode="validation")),
        },
    }


def _crd(kind: str, plural: str, short: str, spec: Any, status: Any, columns: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(), "shortNames": [short], "categories": ["kiln"]},
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": _schema(spec, status)},
                }
            ],
        },
    }


def _column(name: str, path: str, kind: str = "string", priority: int = 0) -> dict[str, Any]:
    col: dict[str, Any] = {"name": name, "type": kind, "jsonPath": path}
    if priority:
        col["priority"] = priority
    return col


def crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD object."""
    age = _column("Age", ".metadata.creationTimestamp", "date")
    return {
        "buildconfigs.yaml": _crd(
            "BuildConfig", "buildconfigs", "bc", BuildConfigSpec, BuildConfigStatus,
            [_column("Type", ".spec.strategy.type"), _column("From", ".spec.source.git.uri"), _column("Latest", ".status.lastVersion", "integer"), age],
        ),
        "builds.yaml": _crd(
            "Build", "builds", "kb", BuildSpec, BuildStatus,
            [
                _column("Type", ".spec.strategy.type"), _column("Status", ".status.phase"), _column("Reason", ".status.reason"),
                _column("Started", ".status.startTimestamp", "date"), _column("Image", ".status.outputDockerImageReference", priority=1),
                _column("Digest", ".status.output.to.imageDigest", priority=1), age,
            ],
        ),
    }  # fmt: skip


HEADER = "# Generated by `python -m kiln.cluster.crdgen` from src/kiln/cluster/models.py. Do not edit.\n"


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(obj: dict[str, Any]) -> str:
    return HEADER + yaml.dump(obj, Dumper=_NoAliases, sort_keys=False, width=120)


def render_all(objs: list[dict[str, Any]]) -> str:
    header = HEADER.replace("src/kiln/cluster/models.py", "src/kiln/cluster/manifests.py")
    return header + "---\n".join(yaml.dump(o, Dumper=_NoAliases, sort_keys=False, width=120) for o in objs)


def generated_files() -> dict[str, str]:
    """Path relative to deploy/ -> text."""
    from kiln.cluster.manifests import deploy_files

    out = {f"crds/{name}": render(obj) for name, obj in crds().items()}
    out.update({name: render_all(objs) for name, objs in deploy_files().items()})
    return out


def default_dir() -> Path:
    return Path(__file__).resolve().parents[3] / "deploy"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kiln.cluster.crdgen", description=__doc__)
    parser.add_argument("--out", type=Path, default=default_dir(), help="directory (default: deploy/ of the checkout)")
    parser.add_argument("--check", action="store_true", help="exit 1 when the files differ from the models")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generated_files().items():
        path: Path = args.out / name
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if stale:
        print("stale: " + ", ".join(stale) + " (run python -m kiln.cluster.crdgen)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
