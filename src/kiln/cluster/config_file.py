"""Reading a BuildConfig or Build from a file, stdin or an environment variable (``env:BUILD`` in a build pod)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import ValidationError

from kiln.cluster.models import Build, BuildConfig, BuildSpec, build_spec_from, merge_env
from kiln.errors import UsageError

LOCAL_CAUSE = "Built locally with kiln build --config"


@dataclass(frozen=True)
class LoadedBuild:
    spec: BuildSpec
    kind: str  # BuildConfig | Build
    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))


def read_source(where: str) -> tuple[str, str]:
    """(text, label) of ``-`` (stdin), ``env:NAME`` or a path."""
    if where == "-":
        return sys.stdin.read(), "<stdin>"
    if where.startswith("env:"):
        name = where[4:]
        if name not in os.environ:
            raise UsageError(f"--config {where}: environment variable {name} is not set")
        return os.environ[name], f"${name}"
    try:
        with open(where, encoding="utf-8") as f:
            return f.read(), where
    except FileNotFoundError:
        raise UsageError(f"--config {where}: no such file") from None


def load_build(text: str, label: str, env: dict[str, str] | None = None) -> LoadedBuild:
    """The first BuildConfig or Build in ``text`` (YAML or JSON; a multi-document stream is fine)."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise UsageError(f"{label}: not YAML or JSON: {e}") from None
    for doc in docs:
        if not isinstance(doc, dict) or doc.get("kind") not in ("BuildConfig", "Build"):
            continue
        kind = str(doc["kind"])
        try:
            if kind == "BuildConfig":
                config = BuildConfig.model_validate(doc)
                spec = build_spec_from(config.spec, LOCAL_CAUSE, env)
                return LoadedBuild(spec, kind, config.metadata)
            build = Build.model_validate(doc)
        except ValidationError as e:
            raise UsageError(f"{label}: invalid {kind}: {describe_validation_error(e)}") from None
        if env:
            merge_env(build.spec.strategy, env)
        return LoadedBuild(build.spec, kind, build.metadata)
    raise UsageError(f"{label}: no BuildConfig or Build (kind: BuildConfig) in it")


def describe_validation_error(error: ValidationError) -> str:
    """pydantic's errors as `field.path: message` (camelCase, as written in the file)."""
    parts = []
    for err in error.errors():
        path = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{path}: {msg}" if path else msg)
    return "; ".join(parts)
