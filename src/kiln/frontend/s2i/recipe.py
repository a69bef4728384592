"""The S2I build as a short list of Dockerfile-shaped operations, and its two renderings.

An S2I build is a handful of stages whose operations are a small subset of a Dockerfile:
ENV, USER, COPY (from the context or an earlier stage, with --chown), RUN (exec form, with
read-only bind mounts), CMD and LABEL. `Recipe` holds exactly that, and is rendered

- `to_plan`: into the kiln Plan the executor runs (the build), and
- `to_dockerfile`: into Dockerfile text over the same context (`kiln s2i build --as-dockerfile`),

so the two cannot drift apart: one recipe, two printers. Nothing here touches disk.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from kiln.build.plan import (
    ConfigChange,
    ContextSource,
    CopyFrom,
    CopyStep,
    ImageSource,
    MetaStep,
    Plan,
    RunMount,
    RunStep,
    Stage,
    StageSource,
    Step,
)
from kiln.oci.models import ImageConfig, Platform

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class SetEnv:
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SetUser:
    user: str


@dataclass(frozen=True)
class Copy:
    """COPY: ``sources`` relative to the context, or absolute paths in stage ``from_stage``."""

    sources: tuple[str, ...]
    dest: str
    chown: str | None = None
    from_stage: str | None = None


@dataclass(frozen=True)
class Bind:
    """A read-only bind mount for one RUN: ``source`` in the context, or in stage ``from_stage``."""

    target: str
    source: str
    from_stage: str | None = None


@dataclass(frozen=True)
class Run:
    """RUN in exec form. ``shown`` is the short history/log text (the script it runs)."""

    argv: tuple[str, ...]
    shown: str
    mounts: tuple[Bind, ...] = ()


@dataclass(frozen=True)
class SetCmd:
    argv: tuple[str, ...]


@dataclass(frozen=True)
class SetLabels:
    pairs: tuple[tuple[str, str], ...]


Op = SetEnv | SetUser | Copy | Run | SetCmd | SetLabels


@dataclass(frozen=True)
class RecipeStage:
    name: str
    base: str  # an image reference
    ops: tuple[Op, ...]


@dataclass(frozen=True)
class Recipe:
    stages: tuple[RecipeStage, ...]  # the last one is the image

    def index(self, name: str) -> int:
        for i, stage in enumerate(self.stages):
            if stage.name == name:
                return i
        raise KeyError(name)


# -- the plan ------------------------------------------------------------------------------


def to_plan(
    recipe: Recipe,
    configs: Mapping[str, ImageConfig],
    *,
    platform: Platform | None = None,
    image_format: str = "oci",
) -> Plan:
    """The kiln Plan of ``recipe``; ``configs`` holds the config of every base image (by reference)."""
    stages = []
    for index, st in enumerate(recipe.stages):
        cfg = configs[st.base].config
        env = dict(item.partition("=")[::2] for item in cfg.env or [])
        user = cfg.user or ""
        workdir = cfg.working_dir or "/"
        steps: list[Step] = []
        for op in st.ops:
            if isinstance(op, SetEnv):
                env.update(op.pairs)
                steps.append(MetaStep(tuple(ConfigChange("env", [k, v]) for k, v in op.pairs), created_by=_env_line(op)))
            elif isinstance(op, SetUser):
                user = op.user
                steps.append(MetaStep((ConfigChange("user", op.user),), created_by=f"USER {op.user}"))
            elif isinstance(op, SetCmd):
                steps.append(MetaStep((ConfigChange("cmd", list(op.argv)),), created_by=f"CMD {_json(op.argv)}"))
            elif isinstance(op, SetLabels):
                changes = tuple(ConfigChange("label", [k, v]) for k, v in op.pairs)
                steps.append(MetaStep(changes, created_by="LABEL " + " ".join(f"{k}={_quote(v)}" for k, v in op.pairs)))
            elif isinstance(op, Copy):
                steps.append(_copy_step(recipe, op))
            else:
                run_env = dict(env)
                run_env.setdefault("PATH", DEFAULT_PATH)
                mounts = tuple(
                    RunMount(type="bind", target=m.target, source=m.source, readonly=True,
                             source_from=_from(recipe, m.from_stage) if m.from_stage else None)
                    for m in op.mounts
                )  # fmt: skip
                steps.append(
                    RunStep(argv=op.argv, env=tuple(run_env.items()), user=user, workdir=workdir,
                            mounts=mounts, created_by=f"RUN {op.shown}")
                )  # fmt: skip
        stages.append(Stage(index=index, name=st.name, base=ImageSource(st.base), steps=tuple(steps)))
    fmt: Literal["oci", "docker"] = "docker" if image_format == "docker" else "oci"
    return Plan(stages=tuple(stages), target=len(stages) - 1, platform=platform or Platform(), image_format=fmt, frontend="s2i")


def _from(recipe: Recipe, name: str) -> StageSource:
    return StageSource(recipe.index(name))


def _copy_step(recipe: Recipe, op: Copy) -> CopyStep:
    source: CopyFrom = _from(recipe, op.from_stage) if op.from_stage else ContextSource()
    return CopyStep(sources=op.sources, dest=op.dest, source_from=source, chown=op.chown, created_by=_copy_line(op))


# -- the Dockerfile ------------------------------------------------------------------------


def to_dockerfile(recipe: Recipe, header: str = "") -> str:
    """Dockerfile text equivalent to ``to_plan(recipe)``, over the same context directory."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for st in recipe.stages:
        if lines:
            lines.append("")
        lines.append(f"FROM {st.base} AS {st.name}")
        for op in st.ops:
            if isinstance(op, SetEnv):
                lines.append(_env_line(op))
            elif isinstance(op, SetUser):
                lines.append(f"USER {op.user}")
            elif isinstance(op, SetCmd):
                lines.append(f"CMD {_json(op.argv)}")
            elif isinstance(op, SetLabels):
                lines.append("LABEL " + " \\\n      ".join(f"{_quote(k)}={_quote(v)}" for k, v in op.pairs))
            elif isinstance(op, Copy):
                lines.append(_copy_line(op))
            else:
                lines.append(f"# {op.shown}")
                flags = [_mount_flag(m) for m in op.mounts]
                lines.append(" ".join(["RUN", *flags, _json(op.argv)]))
    return "\n".join(lines) + "\n"


def _mount_flag(m: Bind) -> str:
    parts = ["type=bind"]
    if m.from_stage:
        parts.append(f"from={m.from_stage}")
    parts += [f"source={m.source}", f"target={m.target}", "readonly"]
    return "--mount=" + ",".join(parts)


def _copy_line(op: Copy) -> str:
    words = ["COPY"]
    if op.from_stage:
        words.append(f"--from={op.from_stage}")
    if op.chown:
        words.append(f"--chown={op.chown}")
    return " ".join([*words, _json([*op.sources, op.dest])])


def _env_line(op: SetEnv) -> str:
    return "ENV " + " ".join(f"{k}={_quote(v)}" for k, v in op.pairs)


def _json(items: tuple[str, ...] | list[str]) -> str:
    return json.dumps(list(items), ensure_ascii=False)


def _quote(value: str) -> str:
    """A double-quoted Dockerfile word that expands to ``value`` exactly (no variable expansion).

    A newline cannot be written inside one line; it becomes a space (labels and environment
    values from s2i are single lines in practice).
    """
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("\n", " ")
    return f'"{escaped}"'
