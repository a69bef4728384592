"""`kiln build`: a Dockerfile (or BuildConfig) into an image, rootless."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from kiln.build.options import BuildOptions
from kiln.build.outputs import deliver, parse_output, write_metadata
from kiln.cli.common import make_registry_options, open_store, progress_option, registry_options, store_option
from kiln.cli.progress import TransferProgress, choose_mode
from kiln.errors import UsageError
from kiln.oci.models import Platform


def _key_values(values: tuple[str, ...], flag: str, *, from_env: bool = False) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values:
        key, eq, value = item.partition("=")
        if not key:
            raise UsageError(f"{flag} {item!r}: expected KEY=VALUE")
        if not eq:
            if not from_env:
                raise UsageError(f"{flag} {item!r}: expected KEY=VALUE")
            if key not in os.environ:
                continue  # docker: `--build-arg NAME` with NAME unset is ignored
            value = os.environ[key]
        out[key] = value
    return out


def _strip_ref(value: str) -> str:
    """Accept BuildKit's ``type=registry,ref=REF`` spelling as well as a bare REF."""
    if "=" not in value:
        return value
    fields = dict(part.partition("=")[::2] for part in value.split(","))
    if fields.get("type", "registry") != "registry" or "ref" not in fields:
        raise UsageError(f"cache {value!r}: expected REF or type=registry,ref=REF")
    return fields["ref"]


def parse_secrets(values: tuple[str, ...]) -> tuple[dict[str, Path], dict[str, str]]:
    files: dict[str, Path] = {}
    envs: dict[str, str] = {}
    for item in values:
        fields = dict(part.partition("=")[::2] for part in item.split(","))
        sid = fields.pop("id", "")
        src = fields.pop("src", None) or fields.pop("source", None)
        env = fields.pop("env", None)
        kind = fields.pop("type", "file" if src else "env")
        if not sid or fields or (src is None and env is None):
            raise UsageError(f"--secret {item!r}: expected id=ID,src=PATH or id=ID,env=VAR")
        if kind == "file" and src is not None:
            path = Path(src)
            if not path.is_file():
                raise UsageError(f"--secret id={sid}: {src}: no such file")
            files[sid] = path.resolve()
        else:
            envs[sid] = env or sid
    return files, envs


@click.command()
@click.argument("context", default=".", type=click.Path(file_okay=False, path_type=Path))
@click.option("-f", "--file", "dockerfile", type=click.Path(dir_okay=False, allow_dash=True, path_type=Path), help="Dockerfile (default CONTEXT/Dockerfile; - reads stdin).")
@click.option("-t", "--tag", "tags", multiple=True, metavar="REF", help="Name the image (repeatable).")
@click.option("--build-arg", "build_args", multiple=True, metavar="K=V", help="Set a build argument (K alone takes it from the environment).")
@click.option("--target", help="Build this stage (and what it needs) only.")
@click.option("--platform", help="Target platform, os/arch[/variant] (default linux/amd64).")
@click.option("--secret", "secrets", multiple=True, metavar="id=ID,src=PATH", help="Expose a secret to RUN --mount=type=secret.")
@click.option("--no-cache", is_flag=True, help="Run every step; still records results for next time.")
@click.option("--no-cache-filter", "no_cache_filter", multiple=True, metavar="STAGE", help="Do not use the cache for this stage.")
@click.option("--cache-ttl", type=float, default=None, metavar="SECONDS", help="Ignore cache records older than this.")
@click.option("--cache-from", "cache_from", multiple=True, metavar="REF", help="Use step results kept in this registry cache.")
@click.option("--cache-to", "cache_to", default=None, metavar="REF", help="Keep this build's step results in a registry cache.")
@click.option("--push", is_flag=True, help="Push every -t tag to its registry.")
@click.option("-o", "--output", "outputs", multiple=True, metavar="SPEC", help="type=oci,dest=DIR | type=docker,dest=FILE.tar | type=registry[,name=REF]")
@click.option("--digest-file", "--iidfile", "digest_file", type=click.Path(dir_okay=False, path_type=Path), help="Write the image manifest digest here.")
@click.option("--metadata-file", type=click.Path(dir_okay=False, path_type=Path), help="Write build metadata (JSON) here.")
@click.option("--format", "image_format", type=click.Choice(["oci", "docker"]), default="oci", show_default=True)
@click.option("--compression", type=click.Choice(["gzip", "zstd"]), default="gzip", show_default=True)
@click.option("--compression-level", type=int, default=None)
@click.option("--pull", "pull_policy", type=click.Choice(["missing", "always", "never"]), default="missing", show_default=True)
@click.option("--label", "labels", multiple=True, metavar="K=V", help="Add a label to the image.")
@click.option("--timeout", "step_timeout", type=float, default=None, metavar="SECONDS", help="Kill a RUN step that runs longer.")
@click.option("--dry-run", is_flag=True, help="Print the build plan and exit.")
@click.option("--config", "config", metavar="FILE", help="Run a BuildConfig or Build (YAML/JSON; - for stdin, env:NAME for a variable) as its build pod would; CONTEXT, if given, replaces its source.")
@click.option("--result-file", type=click.Path(dir_okay=False, path_type=Path), help="With --config: write the outcome (JSON, as a build pod's termination message) here.")
@store_option
@registry_options
@progress_option
def build(
    context: Path,
    dockerfile: Path | None,
    tags: tuple[str, ...],
    build_args: tuple[str, ...],
    target: str | None,
    platform: str | None,
    secrets: tuple[str, ...],
    no_cache: bool,
    no_cache_filter: tuple[str, ...],
    cache_ttl: float | None,
    cache_from: tuple[str, ...],
    cache_to: str | None,
    push: bool,
    outputs: tuple[str, ...],
    digest_file: Path | None,
    metadata_file: Path | None,
    image_format: str,
    compression: str,
    compression_level: int | None,
    pull_policy: str,
    labels: tuple[str, ...],
    step_timeout: float | None,
    dry_run: bool,
    config: str | None,
    result_file: Path | None,
    store_path: Path | None,
    insecure: tuple[str, ...],
    ca_file: Path | None,
    auth_file: Path | None,
    progress: str,
) -> None:
    """Build an image from a Dockerfile in CONTEXT, without a daemon and without root."""
    from kiln.build.driver import BuildRequest, compile_request, run_build

    if config is not None:
        from click.core import ParameterSource

        from kiln.cli.buildconfig import build_from_config

        given = click.get_current_context().get_parameter_source("context") is not ParameterSource.DEFAULT
        build_from_config(config, context if given else None, push=push, result_file=result_file, dry_run=dry_run,
                          store_path=store_path, registry=make_registry_options(insecure, ca_file, auth_file), progress=progress)  # fmt: skip
        return
    if not context.is_dir():
        raise UsageError(f"build context {context}: not a directory")
    path = dockerfile if dockerfile is not None else context / "Dockerfile"
    if str(path) == "-":
        text, name = sys.stdin.read(), "Dockerfile"
    else:
        if not path.is_file():
            raise UsageError(f"{path}: no such Dockerfile")
        text, name = path.read_text(encoding="utf-8"), str(path)
    parsed_outputs = [parse_output(o) for o in outputs]
    secret_files, secret_envs = parse_secrets(secrets)
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None and not epoch.isdigit():
        raise UsageError(f"SOURCE_DATE_EPOCH={epoch!r}: expected a whole number of seconds")
    registry = make_registry_options(insecure, ca_file, auth_file)
    options = BuildOptions(
        context_dir=context.resolve(),
        secrets=secret_files,
        secret_envs=secret_envs,
        no_cache=no_cache,
        no_cache_stages=frozenset(no_cache_filter),
        cache_ttl_seconds=cache_ttl,
        cache_from=tuple(_strip_ref(c) for c in cache_from),
        cache_to=_strip_ref(cache_to) if cache_to else None,
        compression=compression,
        compression_level=compression_level,
        source_date_epoch=int(epoch) if epoch is not None else None,
        image_format=image_format,  # type: ignore[arg-type]
        pull=pull_policy,  # type: ignore[arg-type]
        registry=registry,
        step_timeout=step_timeout,
        labels=_key_values(labels, "--label"),
    )
    request = BuildRequest(
        dockerfile=text,
        filename=name,
        build_args=_key_values(build_args, "--build-arg", from_env=True),
        target=target,
        platform=Platform.parse(platform) if platform else Platform(),
        options=options,
    )
    if dry_run:
        plan = compile_request(request, open_store(store_path), dry_run=True)
        click.echo(plan.describe())
        return
    if push and not tags:
        raise UsageError("--push needs at least one -t tag")
    from kiln.build.overlay import enter_private_mount_namespace
    from kiln.sandbox.userns import ensure_userns

    ensure_userns()
    enter_private_mount_namespace()
    store = open_store(store_path)
    mode = choose_mode(progress)
    result = run_build(request, store, quiet=mode == "quiet", color=mode == "tty")
    with TransferProgress(progress) as sink:
        delivered = deliver(store, result.descriptor, list(tags), parsed_outputs, push=push, registry=registry, progress=sink)
    if digest_file:
        digest_file.write_text(result.descriptor.digest + "\n")
    if metadata_file:
        write_metadata(metadata_file, result.descriptor, delivered, {"kiln.cached_steps": result.cached_steps, "kiln.run_steps": result.run_steps})
    click.echo(result.descriptor.digest)

