"""`kiln s2i build|usage`: Source-to-Image, daemonless and rootless (see docs/s2i.md)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from kiln.build.options import BuildOptions
from kiln.cli.common import make_registry_options, open_store, progress_option, registry_options, store_option
from kiln.cli.progress import TransferProgress, choose_mode
from kiln.errors import UsageError
from kiln.frontend.s2i.config import S2IRequest, parse_env_flag, parse_env_lines, parse_mapping
from kiln.frontend.s2i.scripts import check_url
from kiln.frontend.s2i.source import DEFAULT_EXCLUDE
from kiln.frontend.s2i.users import parse_allowed_uids
from kiln.oci.store import default_store_path


@click.group()
def s2i() -> None:
    """Source-to-Image: build an application image from source with a builder image."""


def _env(env_files: tuple[Path, ...], envs: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for path in env_files:
        try:
            pairs += parse_env_lines(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise UsageError(f"-E {path}: {e.strerror}") from None
    pairs += [parse_env_flag(item) for item in envs]
    return tuple(pairs)


@s2i.command("build")
@click.argument("source")
@click.argument("builder")
@click.argument("tag", required=False)
@click.option("--push", is_flag=True, help="Push TAG to its registry (and TAG-s2i-builder with --runtime-image --incremental).")
@click.option("--incremental", is_flag=True, help="Restore the artifacts that save-artifacts gets from the previous image.")
@click.option("--incremental-pull-policy", type=click.Choice(["always", "never", "if-not-present"]), default="if-not-present", show_default=True)
@click.option("-e", "--env", "envs", multiple=True, metavar="K=V", help="Environment of assemble and of the image (repeatable).")
@click.option("-E", "--environment-file", "env_files", multiple=True, type=click.Path(dir_okay=False, path_type=Path), help="File of K=V lines.")
@click.option("--scripts-url", metavar="URL", help="image://DIR, file://DIR or http(s)://URL holding the S2I scripts.")
@click.option("--context-dir", default="", metavar="DIR", help="Subdirectory of the source to build.")
@click.option("-r", "--ref", metavar="REF", help="Branch, tag or commit of a git source.")
@click.option("-u", "--assemble-user", metavar="USER", help="Run assemble as USER (default: label, then the image's USER).")
@click.option("--allowed-uids", metavar="RANGE", help="Refuse builders assembling as a uid outside RANGE, e.g. 1- or 1000-2000,3000-.")
@click.option("--runtime-image", metavar="IMAGE", help="Extended build: copy the runtime artifacts into IMAGE.")
@click.option("--runtime-artifact", "runtime_artifacts", multiple=True, metavar="SRC:DEST", help="Artifact of an extended build (repeatable).")
@click.option("--exclude", default=DEFAULT_EXCLUDE, show_default=True, metavar="REGEX", help="Source paths to leave out.")
@click.option("--as-dockerfile", type=click.Path(path_type=Path), metavar="FILE", help="Write a Dockerfile and its context instead of building.")
@click.option("--copy", "force_copy", is_flag=True, help="Copy a local git repository's working tree instead of cloning it.")
@click.option("--inject", "injections", multiple=True, metavar="SRC:DEST", help="Host path visible to assemble at DEST, kept out of the image.")
@click.option("--no-cache", is_flag=True, help="Run every step, assemble included.")
@click.option("--digest-file", type=click.Path(dir_okay=False, path_type=Path), help="Write the image manifest digest here.")
@store_option
@registry_options
@progress_option
def build(
    source: str,
    builder: str,
    tag: str | None,
    push: bool,
    incremental: bool,
    incremental_pull_policy: str,
    envs: tuple[str, ...],
    env_files: tuple[Path, ...],
    scripts_url: str | None,
    context_dir: str,
    ref: str | None,
    assemble_user: str | None,
    allowed_uids: str | None,
    runtime_image: str | None,
    runtime_artifacts: tuple[str, ...],
    exclude: str,
    as_dockerfile: Path | None,
    force_copy: bool,
    injections: tuple[str, ...],
    no_cache: bool,
    digest_file: Path | None,
    store_path: Path | None,
    insecure: tuple[str, ...],
    ca_file: Path | None,
    auth_file: Path | None,
    progress: str,
) -> None:
    """Build TAG from SOURCE (directory, tarball or git URL) with the S2I BUILDER image."""
    from kiln.frontend.s2i import build as s2i_build
    from kiln.frontend.s2i.prepare import check_users

    if scripts_url:
        check_url(scripts_url)
    request = S2IRequest(
        source=source,
        builder=builder,
        tag=tag,
        env=_env(env_files, envs),
        scripts_url=scripts_url,
        context_dir=context_dir,
        ref=ref,
        assemble_user=assemble_user,
        allowed_uids=parse_allowed_uids(allowed_uids) if allowed_uids else None,
        runtime_image=runtime_image,
        runtime_artifacts=tuple(parse_mapping(a, "--runtime-artifact") for a in runtime_artifacts),
        exclude=exclude,
        incremental=incremental,
        incremental_pull_policy=incremental_pull_policy,  # type: ignore[arg-type]
        force_copy=force_copy,
        injections=tuple(parse_mapping(i, "--inject") for i in injections),
    )
    registry = make_registry_options(insecure, ca_file, auth_file)
    # Refuse a builder outside --allowed-uids before anything is pulled, run or written.
    resolve, find_previous = s2i_build.lookup_only(store_path or default_store_path(), registry)
    if as_dockerfile is not None:
        path = as_dockerfile / "Dockerfile" if str(as_dockerfile).endswith("/") or as_dockerfile.is_dir() else as_dockerfile
        prepared = s2i_build.write_dockerfile(request, path, resolve, find_previous)
        for note in prepared.notes:
            click.echo(note, err=True)
        click.echo(str(path))
        return
    if not tag:
        raise UsageError("TAG is required (unless --as-dockerfile)")
    check_users(request, resolve)

    from kiln.build.outputs import deliver
    from kiln.build.overlay import enter_private_mount_namespace
    from kiln.sandbox.userns import ensure_userns

    ensure_userns()
    enter_private_mount_namespace()
    store = open_store(store_path)
    mode = choose_mode(progress)
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    options = BuildOptions(
        no_cache=no_cache,
        registry=registry,
        source_date_epoch=int(epoch) if epoch and epoch.isdigit() else None,
    )
    result = s2i_build.build(
        request, store, options, quiet=mode == "quiet", color=mode == "tty",
        note=None if mode == "quiet" else lambda text: click.echo(text, err=True),
    )  # fmt: skip
    with TransferProgress(progress) as sink:
        if result.builder_image is not None:
            from kiln.frontend.s2i.prepare import builder_tag

            deliver(store, result.builder_image, [builder_tag(tag)], [], push=push and incremental, registry=registry, progress=sink)
        deliver(store, result.descriptor, [tag], [], push=push, registry=registry, progress=sink)
    if digest_file:
        digest_file.write_text(result.descriptor.digest + "\n")
    click.echo(result.descriptor.digest)


@s2i.command("usage")
@click.argument("builder")
@click.option("--scripts-url", metavar="URL", help="image://DIR, file://DIR or http(s)://URL holding the usage script.")
@click.option("-e", "--env", "envs", multiple=True, metavar="K=V", help="Environment of the usage script.")
@click.option("-u", "--assemble-user", metavar="USER", help="Run the script as USER.")
@store_option
@registry_options
def usage(
    builder: str,
    scripts_url: str | None,
    envs: tuple[str, ...],
    assemble_user: str | None,
    store_path: Path | None,
    insecure: tuple[str, ...],
    ca_file: Path | None,
    auth_file: Path | None,
) -> None:
    """Print how to use BUILDER: run its usage script."""
    from kiln.build.overlay import enter_private_mount_namespace
    from kiln.frontend.s2i.usage import run_usage
    from kiln.sandbox.userns import ensure_userns

    if scripts_url:
        check_url(scripts_url)
    env = dict(parse_env_flag(item) for item in envs)
    ensure_userns()
    enter_private_mount_namespace()
    store = open_store(store_path)

    def out(data: bytes) -> None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()

    code = run_usage(
        builder, store, make_registry_options(insecure, ca_file, auth_file), scripts_url=scripts_url, env=env,
        assemble_user=assemble_user, output=out,
    )  # fmt: skip
    sys.exit(code)

