"""Applying a plan's config changes to an image config (pure: no I/O)."""

from __future__ import annotations

from kiln.build.plan import ConfigChange
from kiln.oci.models import ContainerConfig, HealthConfig, History, ImageConfig


def set_env(cfg: ContainerConfig, key: str, value: str) -> None:
    env = [e for e in (cfg.env or []) if e.partition("=")[0] != key]
    env.append(f"{key}={value}")
    cfg.env = env


def apply_change(config: ImageConfig, change: ConfigChange) -> None:
    """Edit ``config`` in place as Docker does for the instruction behind ``change``."""
    cfg = config.config
    op, value = change.op, change.value
    if op == "env":
        set_env(cfg, value[0], value[1])
    elif op == "cmd":
        cfg.cmd = list(value) if value is not None else None
    elif op == "entrypoint":
        cfg.entrypoint = list(value) if value is not None else None
        # Docker: a new ENTRYPOINT resets a CMD inherited from the base image
        cfg.cmd = None
    elif op == "workdir":
        cfg.working_dir = value
    elif op == "user":
        cfg.user = value
    elif op == "label":
        cfg.labels = {**(cfg.labels or {}), value[0]: value[1]}
    elif op == "expose":
        cfg.exposed_ports = {**(cfg.exposed_ports or {}), value: {}}
    elif op == "volume":
        cfg.volumes = {**(cfg.volumes or {}), value: {}}
    elif op == "stopsignal":
        cfg.stop_signal = value
    elif op == "healthcheck":
        cfg.healthcheck = HealthConfig(test=["NONE"]) if value is None else HealthConfig.from_dict(value)
    elif op == "shell":
        cfg.shell = list(value)
    elif op == "onbuild":
        cfg.on_build = [*(cfg.on_build or []), value]
    elif op == "onbuild_clear":
        cfg.on_build = None
    elif op == "maintainer":
        config.author = value
    elif op == "args_escaped":
        cfg.args_escaped = bool(value) or None
    else:  # pragma: no cover - the Literal type makes this unreachable
        raise ValueError(f"unknown config change {op}")


def add_history(config: ImageConfig, created: str, created_by: str, *, empty_layer: bool, comment: str | None = None) -> None:
    entry = History(created=created, created_by=created_by, empty_layer=True if empty_layer else None, comment=comment)
    config.history = [*(config.history or []), entry]


def for_format(config: ImageConfig, fmt: str) -> ImageConfig:
    """A copy fit for the output format: OCI has no Healthcheck, Shell or OnBuild (buildah drops them too)."""
    out = config.clone()
    if fmt == "oci":
        out.config.healthcheck = None
        out.config.shell = None
        out.config.on_build = None
    return out
