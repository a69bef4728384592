"""Compiling Dockerfile text in tests, with base image configs made in the test."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field

from kiln.build.plan import CopyStep, MetaStep, Plan, RunStep, Step
from kiln.frontend.dockerfile.compile import compile_dockerfile
from kiln.oci.models import ContainerConfig, ImageConfig, Platform


def image(
    env: list[str] | None = None,
    *,
    workdir: str | None = None,
    user: str | None = None,
    shell: list[str] | None = None,
    on_build: list[str] | None = None,
    cmd: list[str] | None = None,
) -> ImageConfig:
    return ImageConfig(
        config=ContainerConfig(env=env, working_dir=workdir, user=user, shell=shell, on_build=on_build, cmd=cmd)
    )


PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Resolver:
    """resolve_config for tests: configs by reference (default: one with only a PATH, as
    typical base images have), every call recorded."""

    configs: Mapping[str, ImageConfig] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)

    def __call__(self, ref: str) -> ImageConfig:
        self.calls.append(ref)
        return self.configs.get(ref, image([PATH]))


def compile_text(
    text: str,
    *,
    build_args: Mapping[str, str] | None = None,
    target: str | None = None,
    resolver: Resolver | None = None,
    platform: Platform | None = None,
    image_format: str = "oci",
) -> Plan:
    return compile_dockerfile(
        textwrap.dedent(text).lstrip("\n"),
        filename="Dockerfile",
        build_args=dict(build_args or {}),
        target=target,
        platform=platform or Platform(),
        image_format=image_format,
        resolve_config=resolver or Resolver(),
    )


def steps(plan: Plan, stage: int | None = None) -> tuple[Step, ...]:
    return plan.stages[plan.target if stage is None else stage].steps


def runs(plan: Plan, stage: int | None = None) -> list[RunStep]:
    return [s for s in steps(plan, stage) if isinstance(s, RunStep)]


def copies(plan: Plan, stage: int | None = None) -> list[CopyStep]:
    return [s for s in steps(plan, stage) if isinstance(s, CopyStep)]


def metas(plan: Plan, stage: int | None = None) -> list[MetaStep]:
    return [s for s in steps(plan, stage) if isinstance(s, MetaStep)]


def run1(plan: Plan, stage: int | None = None) -> RunStep:
    (step,) = runs(plan, stage)
    return step


def copy1(plan: Plan, stage: int | None = None) -> CopyStep:
    (step,) = copies(plan, stage)
    return step


def meta1(plan: Plan, stage: int | None = None) -> MetaStep:
    (step,) = metas(plan, stage)
    return step
