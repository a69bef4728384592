"""`kiln run IMAGE [CMD...]`: run an image rootless, as podman run does."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kiln.cli.common import make_registry_options, open_store, registry_options, store_option
from kiln.errors import ImageNotFoundError, UsageError


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("-e", "--env", "envs", multiple=True, metavar="K=V", help="Set an environment variable.")
@click.option("-v", "--volume", "volumes", multiple=True, metavar="HOST:CTR[:ro]", help="Bind-mount a host directory.")
@click.option("-u", "--user", help="User (name or uid[:gid]) to run as.")
@click.option("-w", "--workdir", help="Working directory inside the container.")
@click.option("--entrypoint", help="Override the image's entrypoint ('' clears it).")
@click.option("--network", type=click.Choice(["host", "none"]), default="host", show_default=True)
@click.option("--hostname", default=None)
@click.option("--rm", "remove", is_flag=True, help="Discard the container's changes afterwards (kiln always does unless --keep).")
@click.option("--keep", is_flag=True, help="Keep the container's writable layer under the store.")
@click.option("-i", "--interactive", is_flag=True, help="Pass standard input to the command.")
@click.option("--timeout", type=float, default=None, help="Kill the container after SECONDS.")
@click.option("--platform", default=None)
@store_option
@registry_options
def run(
    image: str,
    command: tuple[str, ...],
    envs: tuple[str, ...],
    volumes: tuple[str, ...],
    user: str | None,
    workdir: str | None,
    entrypoint: str | None,
    network: str,
    hostname: str | None,
    remove: bool,
    keep: bool,
    interactive: bool,
    timeout: float | None,
    platform: str | None,
    store_path: Path | None,
    insecure: tuple[str, ...],
    ca_file: Path | None,
    auth_file: Path | None,
) -> None:
    """Run IMAGE (from the store, pulled if missing) in kiln's rootless sandbox."""
    import shlex

    from kiln.build.image import load_image
    from kiln.build.overlay import enter_private_mount_namespace
    from kiln.build.snapshots import Snapshots
    from kiln.oci.models import Platform
    from kiln.registry.reference import Reference
    from kiln.runtime.container import RunSpec, parse_volume, run_container
    from kiln.sandbox.userns import ensure_userns

    env = {}
    for item in envs:
        k, eq, v = item.partition("=")
        if not k:
            raise UsageError(f"-e {item!r}: expected KEY=VALUE")
        if not eq:
            import os

            if k not in os.environ:
                continue
            v = os.environ[k]
        env[k] = v
    mounts = [parse_volume(v) for v in volumes]
    stdin = sys.stdin.buffer.read() if interactive else None
    ensure_userns()
    enter_private_mount_namespace()
    store = open_store(store_path)
    want = Platform.parse(platform) if platform else Platform()
    name = str(Reference.parse(image)) if not _looks_like_digest(image) else image
    try:
        desc = store.resolve(name)
    except ImageNotFoundError:
        from kiln.registry.pull import pull

        desc = pull(Reference.parse(image), store, platform=want, options=make_registry_options(insecure, ca_file, auth_file))
    img = load_image(store, desc, want, what=name)
    spec = RunSpec(
        command=list(command),
        entrypoint=shlex.split(entrypoint) if entrypoint is not None else None,
        env=env,
        user=user,
        workdir=workdir,
        volumes=mounts,
        network=network,
        hostname=hostname,
        remove=not keep,
        timeout=timeout,
        stdin=stdin,
        on_output=_write_out,
    )
    outcome = run_container(Snapshots(store), img, spec)
    if outcome.kept_upper is not None:
        click.echo(f"kiln: container {outcome.container_id} kept at {outcome.kept_upper}", err=True)
    sys.exit(outcome.result.exit_code)


def _looks_like_digest(text: str) -> bool:
    return text.startswith("sha256:") or (len(text) >= 12 and all(c in "0123456789abcdef" for c in text))


def _write_out(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()

