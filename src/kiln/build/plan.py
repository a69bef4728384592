"""The build plan: the one data structure every frontend compiles to and the executor runs.

A plan is a list of stages; each stage starts from a base (an image, an earlier stage, or
scratch) and applies steps in order. A step is one of:

- ``CopyStep``: files from the context, a stage, an image or a URL into the rootfs (a layer);
- ``RunStep``: a command in the sandbox (a layer of what it changed);
- ``MetaStep``: image config changes only (no layer; a history entry with ``empty_layer``).

Plans are plain frozen data: they print (``kiln build --dry-run``), hash into cache keys
(``Step.cache_fields``) and compare. Secrets are referenced by id only, never by value.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from kiln.oci.canonical import canonical_json
from kiln.oci.models import Platform

# -- sources ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSource:
    """A registry or store image, e.g. ``FROM busybox`` or ``COPY --from=alpine``."""

    ref: str
    kind: Literal["image"] = "image"


@dataclass(frozen=True)
class StageSource:
    """An earlier stage of the same plan, by index."""

    stage: int
    kind: Literal["stage"] = "stage"


@dataclass(frozen=True)
class ScratchSource:
    kind: Literal["scratch"] = "scratch"


@dataclass(frozen=True)
class ContextSource:
    """The build context (a named one is a second context, e.g. ``--build-context name=dir``)."""

    name: str = ""
    kind: Literal["context"] = "context"


BaseSource = ImageSource | StageSource | ScratchSource
CopyFrom = ContextSource | StageSource | ImageSource


# -- steps -----------------------------------------------------------------------------


@dataclass(frozen=True)
class InlineFile:
    """A heredoc source of COPY/ADD: content written as a file named ``name``."""

    name: str
    content: str


@dataclass(frozen=True)
class CopyStep:
    """COPY/ADD. ``sources`` are patterns relative to the source root (wildcards allowed)."""

    sources: tuple[str, ...]
    dest: str
    source_from: CopyFrom = ContextSource()
    inline: tuple[InlineFile, ...] = ()
    urls: tuple[str, ...] = ()  # ADD https://...
    chown: str | None = None  # "user[:group]", names resolved in the destination rootfs
    chmod: str | None = None  # octal or symbolic
    link: bool = False
    excludes: tuple[str, ...] = ()
    parents: bool = False
    extract_archives: bool = False  # ADD of a local tar
    checksum: str | None = None  # ADD --checksum
    keep_git_dir: bool = False
    workdir: str = "/"  # a relative dest is relative to the WORKDIR at this point
    created_by: str = ""
    line: int = 0
    kind: Literal["copy"] = "copy"


@dataclass(frozen=True)
class RunMount:
    """RUN --mount. Secrets carry an id and a target, never the secret itself."""

    type: Literal["bind", "cache", "tmpfs", "secret", "ssh"]
    target: str = ""
    source: str = ""
    source_from: CopyFrom | None = None  # bind/cache `from=`
    id: str = ""
    readonly: bool = False
    sharing: Literal["shared", "private", "locked"] = "shared"
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    required: bool = False
    env: str = ""  # secret exposed as an env var
    size: int | None = None  # tmpfs bytes


@dataclass(frozen=True)
class RunStep:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()  # the full environment seen by the command
    user: str = ""  # "" means the image's current USER (root if unset)
    workdir: str = "/"
    mounts: tuple[RunMount, ...] = ()
    network: Literal["default", "none", "host"] = "default"
    created_by: str = ""
    line: int = 0
    kind: Literal["run"] = "run"


@dataclass(frozen=True)
class ConfigChange:
    """One edit of the image config. ``op`` names the field; ``value`` is JSON-able."""

    op: Literal[
        "env",  # value: [key, value]
        "cmd",  # value: list[str] | None
        "entrypoint",  # value: list[str] | None (resets cmd unless cmd set later, as Docker does)
        "workdir",  # value: str
        "user",  # value: str
        "label",  # value: [key, value]
        "expose",  # value: "80/tcp"
        "volume",  # value: "/data"
        "stopsignal",  # value: str
        "healthcheck",  # value: dict (HealthConfig fields) or None for NONE
        "shell",  # value: list[str]
        "onbuild",  # value: str (the raw trigger instruction)
        "maintainer",  # value: str (config.author)
        "args_escaped",
        "onbuild_clear",  # value: None (a stage consumed its base's ONBUILD triggers; they are not inherited)
    ]
    value: Any = None

    def __hash__(self) -> int:
        return hash((self.op, json.dumps(self.value, sort_keys=True)))


@dataclass(frozen=True)
class MetaStep:
    changes: tuple[ConfigChange, ...]
    created_by: str = ""
    line: int = 0
    kind: Literal["meta"] = "meta"


Step = CopyStep | RunStep | MetaStep


@dataclass(frozen=True)
class Stage:
    index: int
    name: str
    base: BaseSource
    steps: tuple[Step, ...] = ()
    platform: Platform | None = None
    line: int = 0

    @property
    def label(self) -> str:
        return self.name or f"stage-{self.index}"

    def dependencies(self) -> set[int]:
        deps: set[int] = set()
        if isinstance(self.base, StageSource):
            deps.add(self.base.stage)
        for step in self.steps:
            if isinstance(step, CopyStep) and isinstance(step.source_from, StageSource):
                deps.add(step.source_from.stage)
            if isinstance(step, RunStep):
                for m in step.mounts:
                    if isinstance(m.source_from, StageSource):
                        deps.add(m.source_from.stage)
        return deps


@dataclass(frozen=True)
class Plan:
    stages: tuple[Stage, ...]
    target: int  # index of the stage whose result is the image
    platform: Platform = field(default_factory=Platform)
    image_format: Literal["oci", "docker"] = "oci"
    frontend: str = "dockerfile"
    source: str = ""  # what the plan was compiled from (e.g. the Dockerfile's path), for error messages
    #: the target writes nothing that depends on its base image's files, so its layers stay valid
    #: on another base (``kiln rebase``); the frontend decides, see docs/rebase.md
    rebasable: bool = False

    def where(self, line: int) -> str:
        """``FILE:LINE`` (or ``line N``) for messages about a step."""
        if self.source and line:
            return f"{self.source}:{line}"
        return f"line {line}" if line else self.source or "build"

    def needed_stages(self) -> list[int]:
        """Indexes of the stages the target needs, dependencies first (only these are built)."""
        order: list[int] = []
        seen: set[int] = set()

        def visit(i: int, path: tuple[int, ...]) -> None:
            if i in seen:
                return
            if i in path:
                raise ValueError(f"stage {self.stages[i].label} depends on itself")
            for dep in sorted(self.stages[i].dependencies()):
                visit(dep, (*path, i))
            seen.add(i)
            order.append(i)

        visit(self.target, ())
        return order

    def to_dict(self) -> dict[str, Any]:
        return asdict(self, dict_factory=_json_fields)

    def to_json(self) -> bytes:
        return canonical_json(self.to_dict())

    def describe(self) -> str:
        """Human-readable rendering for ``--dry-run``."""
        lines = [f"plan ({self.frontend}, {self.platform}, format {self.image_format}); target: {self.stages[self.target].label}"]
        needed = set(self.needed_stages())
        for st in self.stages:
            mark = "" if st.index in needed else "  (skipped: not needed for the target)"
            lines.append(f"stage {st.index} {st.label!r} from {_src(st.base)}{mark}")
            for n, step in enumerate(st.steps, 1):
                # one line per step: a heredoc RUN's history string spans several
                shown = step.created_by.replace("\n", "\\n")
                lines.append(f"  [{n}/{len(st.steps)}] {step.kind:<4} {shown}")
        return "\n".join(lines)


def _json_fields(items: list[tuple[str, Any]]) -> dict[str, Any]:
    # Platform is a pydantic model, which asdict() copies as is and json cannot encode
    return {k: v.to_dict() if isinstance(v, Platform) else v for k, v in items}


def _src(src: BaseSource | CopyFrom) -> str:
    if isinstance(src, ImageSource):
        return src.ref
    if isinstance(src, StageSource):
        return f"stage {src.stage}"
    if isinstance(src, ContextSource):
        return f"context {src.name}" if src.name else "context"
    return "scratch"
