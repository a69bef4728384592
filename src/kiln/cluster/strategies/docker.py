"""The Docker strategy: the context's (or the inline) Dockerfile, edited as OpenShift does, through kiln's engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kiln.build.driver import BuildRequest, compile_request
from kiln.build.executor import BuildResult, Executor
from kiln.build.options import BuildOptions
from kiln.build.plan import Plan
from kiln.cluster.models import BuildSpec, EnvVar
from kiln.cluster.strategies.dockerfile_edit import edit_dockerfile
from kiln.cluster.strategies.environment import BuildEnvironment
from kiln.cluster.strategies.inputs import FetchSourceError, Inputs


def docker_request(spec: BuildSpec, context: Path, env: BuildEnvironment, *, dockerfile_path: str | None = None,
                   build_args: list[EnvVar] | None = None) -> BuildRequest:  # fmt: skip
    strategy = spec.strategy.docker_strategy
    rel = dockerfile_path or (strategy.dockerfile_path if strategy else None) or "Dockerfile"
    if spec.source.dockerfile is not None and dockerfile_path is None:
        text, name = spec.source.dockerfile, "Dockerfile (spec.source.dockerfile)"
    else:
        path = context / rel
        if not path.is_file():
            raise FetchSourceError(f"{rel}: no such Dockerfile in the build context")
        text, name = path.read_text(encoding="utf-8"), rel
    env_vars = [(e.name, e.value) for e in (strategy.env if strategy else [])]
    from_image = strategy.from_.name if strategy and strategy.from_ else None
    text = edit_dockerfile(text, env=env_vars, from_image=from_image, filename=name)
    args = build_args if build_args is not None else (strategy.build_args if strategy else [])
    options = BuildOptions(
        context_dir=context,
        no_cache=bool(strategy and strategy.no_cache),
        registry=env.registry,
        labels={label.name: label.value for label in spec.output.image_labels},
    )
    return BuildRequest(dockerfile=text, filename=name, build_args={a.name: a.value for a in args}, target=strategy.target if strategy else None, options=options)


def run_request(request: BuildRequest, env: BuildEnvironment) -> BuildResult:
    executor = Executor(env.store, request.options, env.log)
    plan = compile_request(request, env.store, resolver=lambda ref: executor.resolve_image(ref, request.platform).config)
    return executor.build(plan)


def dry_run_plan(request: BuildRequest, env: BuildEnvironment) -> Plan:
    return compile_request(request, env.store, dry_run=True)


def build_docker(spec: BuildSpec, inputs: Inputs, env: BuildEnvironment) -> BuildResult:
    request = docker_request(spec, inputs.context, env)
    if spec.source.dockerfile is not None:
        # OpenShift writes the inline Dockerfile into the context; kiln hands the text over
        # directly, and a context .dockerignore still applies
        request = replace(request, options=replace(request.options, dockerfile=None))
    return run_request(request, env)
