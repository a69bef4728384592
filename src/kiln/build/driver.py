"""One build from request to result: compile the frontend's input to a plan, run it."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from kiln.build.executor import BuildResult, Executor
from kiln.build.image import load_image
from kiln.build.log import PlainBuildLog
from kiln.build.options import BuildOptions
from kiln.build.plan import Plan
from kiln.errors import ImageNotFoundError
from kiln.oci.models import ImageConfig, Platform
from kiln.oci.store import Store

ConfigResolver = Callable[[str], ImageConfig]


@dataclass(frozen=True)
class BuildRequest:
    dockerfile: str
    filename: str = "Dockerfile"
    build_args: dict[str, str] = field(default_factory=dict)
    target: str | None = None
    platform: Platform = field(default_factory=Platform)
    options: BuildOptions = field(default_factory=BuildOptions)


def compile_request(request: BuildRequest, store: Store, *, resolver: ConfigResolver | None = None, dry_run: bool = False) -> Plan:
    from kiln.frontend.dockerfile.compile import compile_dockerfile

    plan = compile_dockerfile(
        request.dockerfile,
        filename=request.filename,
        build_args=request.build_args,
        target=request.target,
        platform=request.platform,
        image_format=request.options.image_format,
        resolve_config=resolver or _lookup_only(store, request),
    )
    return dataclasses.replace(plan, source=request.filename)


def _lookup_only(store: Store, request: BuildRequest) -> ConfigResolver:
    """For --dry-run: base configs from the store, else from the registry, never pulling layers."""

    def resolve(ref: str) -> ImageConfig:
        from kiln.registry.inspect import fetch_config
        from kiln.registry.reference import Reference

        name = str(Reference.parse(ref))
        with contextlib.suppress(ImageNotFoundError):
            return load_image(store, store.resolve(name), request.platform, what=name).config
        return fetch_config(Reference.parse(ref), request.options.registry, request.platform)

    return resolve


def run_build(request: BuildRequest, store: Store, *, quiet: bool = False, color: bool = False) -> BuildResult:
    log = PlainBuildLog(quiet=quiet, color=color)
    executor = Executor(store, request.options, log)
    plan = compile_request(request, store, resolver=lambda ref: executor.resolve_image(ref, request.platform).config)
    return executor.build(plan)


def run_plan(plan: Plan, store: Store, options: BuildOptions, *, quiet: bool = False, color: bool = False) -> BuildResult:
    """Run a plan a frontend has already compiled (S2I, and any frontend that is not a Dockerfile)."""
    log = PlainBuildLog(quiet=quiet, color=color)
    return Executor(store, options, log).build(plan)


def config_resolver(store: Store, options: BuildOptions, platform: Platform | None = None) -> ConfigResolver:
    """Base image configs as a build sees them: from the store, pulled as ``options.pull`` says.

    For frontends that need image configs to compile (as the Dockerfile frontend does with
    its base images) before handing the plan to ``run_plan``.
    """
    executor = Executor(store, options, PlainBuildLog(quiet=True))
    want = platform or Platform()
    return lambda ref: executor.resolve_image(ref, want).config
