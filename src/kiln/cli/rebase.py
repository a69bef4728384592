"""`kiln rebase`: move an image's own layers onto a newer base without rebuilding it."""

from __future__ import annotations

from pathlib import Path

import click

from kiln.cli.common import make_registry_options, progress_option, registry_options
from kiln.cli.progress import TransferProgress, choose_mode
from kiln.oci.models import Platform


@click.command()
@click.argument("image")
@click.option("--base", "new_base", metavar="REF", help="The new base (default: the image's base.name annotation, resolved now).")
@click.option("--old-base", "old_base", metavar="REF", help="The base the image was built on (default: its base.name@base.digest annotations).")
@click.option("-t", "--tag", "dest", metavar="DEST", help="Where to write the rebased image (default: IMAGE's tag).")
@click.option("--force", is_flag=True, help="Rebase an image not marked rebasable, keeping its config where the new base's conflicts.")
@click.option("--platform", help="Platform to rebase of a multi-platform image (then --tag is needed).")
@registry_options
@progress_option
def rebase(image: str, new_base: str | None, old_base: str | None, dest: str | None, force: bool, platform: str | None, insecure: tuple[str, ...], ca_file: Path | None, auth_file: Path | None, progress: str) -> None:
    """Rebase IMAGE (in a registry) onto the newest version of its base; prints DEST@DIGEST."""
    from kiln.build.rebase import rebase_image

    quiet = choose_mode(progress) == "quiet"
    with TransferProgress(progress) as sink:
        result = rebase_image(
            image, new_base=new_base, old_base=old_base, dest=dest, force=force,
            platform=Platform.parse(platform) if platform else None,
            options=make_registry_options(insecure, ca_file, auth_file), progress=sink,
            report=None if quiet else lambda line: click.echo(line, err=True),
        )
    if not quiet:
        kept = "unchanged" if result.old_base_digest == result.new_base_digest else f"{result.old_base_digest} -> {result.new_base_digest}"
        click.echo(f"rebased: base {kept}; {result.reused_layers} layers of the image reused", err=True)
    click.echo(result.reference)
