"""Compiling a Dockerfile into the build Plan, with BuildKit's (dockerfile2llb's) semantics.

The stage graph comes first, before any image is looked at: each FROM is expanded with the
global scope (meta ARGs, then the automatic platform ARGs, all overridable by --build-arg) and
names `scratch`, an earlier stage (by name, case-insensitively, or by index) or an image.
`COPY --from` and `RUN --mount=from=` add edges; a name that is no stage is an image. From
the target (default: the last stage) the needed stages follow, and only their base images
are resolved (`resolve_config`, once per reference). A base image's ONBUILD triggers run
first in the stage built on it (BuildKit's behaviour); they may pull in more stages, so this
repeats until nothing new is needed. An ONBUILD written in a stage fires in stages built
FROM that stage. Triggers are consumed: the new image does not inherit them.

Every stage of the file is in the plan at its index; the ones the target does not need have
no steps (they are never built, and errors in them do not fail the build, as in BuildKit).
Images a `RUN --mount=from=` names become extra stages after the file's own.

    >>> from kiln.oci.models import ImageConfig, Platform
    >>> plan = compile_dockerfile(
    ...     "FROM alpine AS build\\nRUN make\\nFROM scratch\\nCOPY --from=build /out /\\n",
    ...     filename="Dockerfile", build_args={}, target=None, platform=Platform(),
    ...     image_format="oci", resolve_config=lambda ref: ImageConfig())
    >>> [(s.label, s.steps[-1].created_by) for s in plan.stages]
    [('build', 'RUN /bin/sh -c make # buildkit'), ('stage-1', 'COPY /out / # buildkit')]
"""

from __future__ import annotations

import difflib
import platform as host
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Literal, cast

from kiln.build.plan import (
    BaseSource,
    CopyFrom,
    ImageSource,
    Plan,
    ScratchSource,
    StageSource,
)
from kiln.build.plan import Stage as PlanStage
from kiln.errors import KilnError
from kiln.frontend.dockerfile.compile_copy import check_static_from
from kiln.frontend.dockerfile.compile_rebase import target_rebasable
from kiln.frontend.dockerfile.compile_stage import compile_stage
from kiln.frontend.dockerfile.compile_state import Context, StageState, located
from kiln.frontend.dockerfile.instructions import (
    CopyInstruction,
    Dockerfile,
    Instruction,
    OnbuildInstruction,
    RunInstruction,
    Stage,
    parse_dockerfile,
    parse_instruction,
)
from kiln.frontend.dockerfile.parser import DockerfileError, LineError, parse
from kiln.frontend.dockerfile.shell import expand
from kiln.frontend.dockerfile.stages import PROXY_ARGS, platform_args, resolve_global_args
from kiln.oci.models import ImageConfig, Platform

ConfigResolver = Callable[[str], ImageConfig]

_HOST_ARCH = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm/v7",
    "armv6l": "arm/v6", "i386": "386", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
}  # fmt: skip


def compile_dockerfile(
    source: str,
    *,
    filename: str,
    build_args: dict[str, str],
    target: str | None,
    platform: Platform,
    image_format: str,
    resolve_config: ConfigResolver,
) -> Plan:
    """Parse and compile a Dockerfile. Every error is a KilnError; those about the file read
    `FILE:LINE: ...` and carry the offending line (`source_line`)."""
    if image_format not in ("oci", "docker"):
        raise KilnError(f"unknown image format {image_format!r} (expected oci or docker)")
    df = parse_dockerfile(source, filename)
    graph = _Graph(df, build_args, platform, resolve_config, target)
    return graph.plan(cast(Literal["oci", "docker"], image_format))


def build_platform() -> str:
    """BUILDPLATFORM: the machine kiln runs on (builds never cross architectures)."""
    return "linux/" + _HOST_ARCH.get(host.machine().lower(), "amd64")


class _Graph:
    """The stages of one Dockerfile, their bases and dependencies; the `Sources` of the compiler."""

    def __init__(
        self,
        df: Dockerfile,
        build_args: Mapping[str, str],
        platform: Platform,
        resolve: ConfigResolver,
        target: str | None,
    ) -> None:
        self.df = df
        self.platform = platform
        self.resolve = resolve
        self.build_args = dict(build_args)
        self.target = self._target(target)
        self.global_args = self._global_args()
        self.ctx = Context(df, self.build_args, self.global_args, self)
        self.bases: list[BaseSource] = []
        self.platforms: list[Platform | None] = []
        for st in df.stages:
            base, stage_platform = self._from(st)
            self.bases.append(base)
            self.platforms.append(stage_platform)
        self.configs: dict[str, ImageConfig] = {}
        self.triggers: dict[int, list[Instruction]] = {}
        self.extra: list[PlanStage] = []  # images named by RUN --mount=from=, as stages

    # -- the global scope and the stage graph --------------------------------------------

    def _target(self, name: str | None) -> int:
        stages = self.df.stages
        if name is None:
            return len(stages) - 1
        found = [s.index for s in stages if s.name == name.lower()]
        if not found:
            names = [s.name for s in stages if s.name]
            close = difflib.get_close_matches(name.lower(), names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise KilnError(f'target stage "{name}" could not be found{hint}')
        return found[-1]

    def _global_args(self) -> dict[str, str]:
        args = platform_args(str(self.platform), build_platform())
        args["TARGETOSVERSION"] = self.platform.os_version or ""
        args["BUILDOSVERSION"] = ""
        # BuildKit calls an unnamed target "default"
        args["TARGETSTAGE"] = self.df.stages[self.target].name or "default"
        args.update({k: v for k, v in self.build_args.items() if k in args})
        for ins in self.df.meta_args:
            with located(self.df, ins.line, ins.end_line):
                args = resolve_global_args([ins], self.build_args, args, self.df.escape)
        return args

    def _from(self, st: Stage) -> tuple[BaseSource, Platform | None]:
        with located(self.df, st.line, st.from_instruction.end_line):
            name = expand(st.base, self.global_args, self.df.escape)
            if not name:
                raise LineError(f"base name ({st.base}) should not be blank")
            stage_platform = None
            if st.platform:
                text = expand(st.platform, self.global_args, self.df.escape)
                if not text:
                    raise LineError(f"empty platform value from expression {st.platform}")
                try:
                    stage_platform = Platform.parse(text)
                except KilnError as e:
                    raise LineError(f"failed to parse platform {st.platform}: {e.message}") from None
            if name == "scratch":
                return ScratchSource(), stage_platform
            earlier = [s.index for s in self.df.stages[: st.index] if s.name == name.lower()]
            if earlier:
                return StageSource(earlier[-1]), stage_platform
            if name.isascii() and name.isdigit() and int(name) < st.index:
                return StageSource(int(name)), stage_platform
            _check_reference(name)
            return ImageSource(name), stage_platform

    def _stage_ref(self, ref: str) -> int | None:
        """The stage a --from names (by index, or by name: the last stage of that name)."""
        if ref.isascii() and ref.isdigit():
            if int(ref) >= len(self.df.stages):
                raise LineError(f"invalid stage index {int(ref)}")
            return int(ref)
        named = [s.index for s in self.df.stages if s.name == ref.lower()]
        return named[-1] if named else None

    def _deps(self, instructions: Sequence[Instruction]) -> set[int]:
        """Stages the instructions read (COPY --from, RUN --mount=from=), found without expanding."""
        deps: set[int] = set()
        for ins in instructions:
            with located(self.df, ins.line, ins.end_line):
                if isinstance(ins, CopyInstruction) and ins.from_:
                    check_static_from(self.ctx, ins.from_)
                    refs = [ins.from_]
                elif isinstance(ins, RunInstruction):
                    refs = [m.from_ for m in ins.mounts if m.from_ and m.type in ("bind", "cache")]
                else:
                    continue
                deps.update(i for i in map(self._stage_ref, refs) if i is not None)
        return deps

    def _needed(self) -> set[int]:
        """The stages the target needs, with the dependencies ONBUILD triggers add."""
        deps = {}
        for st in self.df.stages:
            base = self.bases[st.index]
            deps[st.index] = self._deps(st.instructions)
            if isinstance(base, StageSource):
                deps[st.index].add(base.stage)
        while True:
            needed = _closure(self.target, deps)
            grown = False
            for i in sorted(needed):
                if i not in self.triggers:
                    self.triggers[i] = self._load_triggers(self.df.stages[i])
                    more = self._deps(self.triggers[i]) - deps[i]
                    deps[i] |= more
                    grown = grown or bool(more)
            if not grown:
                return needed

    # -- base images and their triggers ---------------------------------------------------

    def _config(self, st: Stage) -> ImageConfig:
        base = self.bases[st.index]
        assert isinstance(base, ImageSource)
        if base.ref not in self.configs:
            with located(self.df, st.line, st.from_instruction.end_line):
                self.configs[base.ref] = self.resolve(base.ref)
        return self.configs[base.ref]

    def _load_triggers(self, st: Stage) -> list[Instruction]:
        """The ONBUILD triggers that fire first in `st`, located at its FROM line."""
        base = self.bases[st.index]
        end = st.from_instruction.end_line
        if isinstance(base, StageSource):
            parent = self.df.stages[base.stage]
            found = [ins.trigger for ins in parent.instructions if isinstance(ins, OnbuildInstruction)]
            return [replace(ins, line=st.line, end_line=end) for ins in found]
        if isinstance(base, ImageSource):
            texts = self._config(st).config.on_build or []
            return [replace(self._parse_trigger(text, st), line=st.line, end_line=end) for text in texts]
        return []

    def _parse_trigger(self, text: str, st: Stage) -> Instruction:
        with located(self.df, st.line, st.from_instruction.end_line):
            try:
                result = parse(text, self.df.filename)
                if len(result.ast.children) != 1:
                    raise LineError("onbuild trigger should be a single expression")
                ins = parse_instruction(result.ast.children[0], result)
            except DockerfileError as e:
                raise LineError(f"ONBUILD trigger {text!r} of the base image: {e.reason}") from None
            if ins.keyword in ("ONBUILD", "FROM", "MAINTAINER"):
                raise LineError(f"{ins.keyword} isn't allowed as an ONBUILD trigger")
            return ins

    # -- Sources: what COPY --from and RUN --mount=from= name ---------------------------------

    def copy_from(self, ref: str, stage: int) -> CopyFrom:
        index = self._stage_ref(ref)
        if index is None:
            _check_reference(ref)
            return ImageSource(ref)
        self._check_order(ref, index, stage, "copy from")
        return StageSource(index)

    def mount_from(self, ref: str, stage: int) -> StageSource:
        index = self._stage_ref(ref)
        if index is not None:
            self._check_order(ref, index, stage, "mount")
            return StageSource(index)
        _check_reference(ref)
        # the executor mounts stages only: an image becomes a stage of its own (BuildKit does the same)
        for extra in self.extra:
            if extra.base == ImageSource(ref):
                return StageSource(extra.index)
        index = len(self.df.stages) + len(self.extra)
        self.extra.append(PlanStage(index=index, name="", base=ImageSource(ref)))
        return StageSource(index)

    def _check_order(self, ref: str, index: int, stage: int, verb: str) -> None:
        if index == stage:
            raise LineError(f"circular dependency detected on stage: {self._label(stage)}")
        if index > stage:
            raise LineError(
                f'cannot {verb} stage "{ref}", it needs to be defined before current stage "{self._label(stage)}"'
            )

    def _label(self, index: int) -> str:
        return self.df.stages[index].name or f"stage-{index}"

    # -- the plan ---------------------------------------------------------------------------

    def plan(self, image_format: Literal["oci", "docker"]) -> Plan:
        needed = self._needed()
        proxies = proxy_env(self.build_args)
        finals: dict[int, StageState] = {}
        stages: list[PlanStage] = []
        for st in self.df.stages:
            i, base = st.index, self.bases[st.index]
            stage = PlanStage(
                index=i, name=st.name or "", base=base, platform=self.platforms[i], line=st.line
            )
            if i in needed:
                if isinstance(base, StageSource):
                    state = finals[base.stage].child()
                else:
                    config = self._config(st) if isinstance(base, ImageSource) else None
                    state = StageState.from_config(config, proxies)
                instructions = [*self.triggers.get(i, []), *st.instructions]
                steps = compile_stage(self.ctx, i, state, instructions, line=st.line)
                finals[i] = state
                stage = replace(stage, steps=tuple(steps))
            stages.append(stage)
        return Plan(
            stages=(*stages, *self.extra),
            target=self.target,
            platform=self.platform,
            image_format=image_format,
            frontend="dockerfile",
            rebasable=target_rebasable(stages, self.target),
        )


def proxy_env(build_args: Mapping[str, str]) -> dict[str, str]:
    """What RUN sees of the proxy build args, declared or not: BuildKit's exec sets each one
    given in both spellings (HTTP_PROXY and http_proxy), the lower-case build arg winning."""
    values = {k.lower(): build_args[k] for k in sorted(build_args) if k in PROXY_ARGS}
    return {name: value for kind, value in values.items() for name in (kind.upper(), kind)}


def _closure(target: int, deps: Mapping[int, set[int]]) -> set[int]:
    seen: set[int] = set()
    todo = [target]
    while todo:
        i = todo.pop()
        if i not in seen:
            seen.add(i)
            todo.extend(deps.get(i, ()))
    return seen


def _check_reference(ref: str) -> None:
    from kiln.registry.reference import Reference

    try:
        Reference.parse(ref)
    except KilnError as e:
        raise LineError(f'failed to parse stage name "{ref}": {e.message}') from None
