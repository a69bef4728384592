"""`kiln build --config FILE`: run a BuildConfig's (or Build's) strategy here, as its build pod does."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import click

from kiln.cli.common import open_store
from kiln.cli.progress import choose_mode
from kiln.errors import KilnError
from kiln.registry.options import RegistryOptions


class BuildFailedError(KilnError):
    """The build ran and failed; its own log already said why."""


def build_from_config(where: str, source: Path | None, *, push: bool, result_file: Path | None, dry_run: bool,
                      store_path: Path | None, registry: RegistryOptions, progress: str) -> None:  # fmt: skip
    from kiln.cluster.config_file import load_build, read_source
    from kiln.cluster.models import StrategyType
    from kiln.cluster.result import MARKER
    from kiln.cluster.strategies.environment import BuildEnvironment, build_object_json

    text, label = read_source(where)
    loaded = load_build(text, label)
    inputs = Path(os.environ["KILN_BUILD_INPUTS"]) if os.environ.get("KILN_BUILD_INPUTS") else None
    if inputs is not None and (inputs / "push" / "config.json").is_file():
        registry = replace(registry, docker_config=inputs / "push")
    if dry_run:
        _dry_run(loaded.spec, source, registry, store_path)
        return
    from kiln.build.overlay import enter_private_mount_namespace
    from kiln.cluster.strategies.runner import run_build_spec
    from kiln.sandbox.userns import ensure_userns

    ensure_userns()
    enter_private_mount_namespace()
    store = open_store(store_path)
    base = os.environ.get("KILN_WORKSPACE")
    workspace = Path(tempfile.mkdtemp(prefix="kiln-build-", dir=base or None))
    try:
        metadata = {k: v for k, v in loaded.metadata.items() if k in ("name", "namespace", "labels", "annotations", "uid")}
        env = BuildEnvironment(
            store=store,
            workspace=workspace,
            registry=registry,
            push=push,
            source_dir=source.resolve() if source is not None else None,
            inputs_dir=inputs,
            build_json=build_object_json("Build", metadata, loaded.spec.to_json_dict()),
            quiet=choose_mode(progress) == "quiet",
        )
        strategy = loaded.spec.strategy.type
        env.say(f"--> {strategy.value} build{' of ' + loaded.name if loaded.name else ''}")
        outcome = run_build_spec(loaded.spec, env)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)
    message = outcome.to_message()
    if result_file is not None:
        # /dev/termination-log is a plain file the kubelet reads; no atomic rename there
        result_file.write_text(message)
    print(f"{MARKER}{message}", file=sys.stderr, flush=True)
    if not outcome.ok:
        raise BuildFailedError(f"{outcome.reason}: {outcome.message}")
    if outcome.image_digest:
        click.echo(outcome.image_digest)
    elif strategy is not StrategyType.PIPELINE:
        click.echo("(no image)")


def _dry_run(spec: object, source: Path | None, registry: RegistryOptions, store_path: Path | None) -> None:
    from kiln.cluster.models import BuildSpec, StrategyType
    from kiln.cluster.strategies.docker import docker_request, dry_run_plan
    from kiln.cluster.strategies.environment import BuildEnvironment
    from kiln.errors import UsageError

    assert isinstance(spec, BuildSpec)
    if spec.strategy.type is not StrategyType.DOCKER:
        raise UsageError(f"--dry-run shows the plan of a Docker strategy build; this one is {spec.strategy.type.value}")
    if spec.source.dockerfile is None and source is None:
        raise UsageError("--dry-run of a build whose Dockerfile is in its source: give the source directory as CONTEXT")
    store = open_store(store_path)
    context = source.resolve() if source is not None else Path(tempfile.gettempdir())
    env = BuildEnvironment(store=store, workspace=context, registry=registry)
    click.echo(dry_run_plan(docker_request(spec, context, env), env).describe())
