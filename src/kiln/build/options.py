"""Settings of one build, as the CLI (or a build pod) gives them to the executor."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kiln.registry.options import RegistryOptions


@dataclass(frozen=True)
class BuildOptions:
    context_dir: Path | None = None
    dockerfile: Path | None = None  # picks a Dockerfile-specific .dockerignore
    #: secret id -> file holding it (``--secret id=ID,src=PATH``); the value never enters a plan.
    secrets: dict[str, Path] = field(default_factory=dict)
    #: secret id -> environment variable holding it (``--secret id=ID,env=VAR``).
    secret_envs: dict[str, str] = field(default_factory=dict)
    no_cache: bool = False
    no_cache_stages: frozenset[str] = frozenset()
    cache_ttl_seconds: float | None = None
    cache_from: tuple[str, ...] = ()  # registry caches to read (--cache-from)
    cache_to: str | None = None  # registry cache to write (--cache-to)
    compression: str = "gzip"
    compression_level: int | None = None
    source_date_epoch: int | None = None
    image_format: Literal["oci", "docker"] = "oci"
    pull: Literal["missing", "always", "never"] = "missing"
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    step_timeout: float | None = None
    labels: dict[str, str] = field(default_factory=dict)
