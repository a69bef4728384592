"""Image commands: pull, push, copy, inspect, images, tag, rmi, prune."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import click

from kiln.cli.common import make_registry_options, open_store, progress_option, registry_options, store_option
from kiln.cli.progress import TransferProgress, human_size
from kiln.errors import ImageNotFoundError, KilnError
from kiln.oci.models import Index, Manifest, Platform, parse_config
from kiln.oci.store import Store
from kiln.registry.reference import Reference


def _platform(text: str | None) -> Platform | None:
    return Platform.parse(text) if text else None


@click.command()
@click.argument("ref")
@click.option("--platform", help="os/arch[/variant] to pick from a multi-platform image (default linux/amd64).")
@store_option
@registry_options
@progress_option
def pull(ref: str, platform: str | None, store_path: Path | None, insecure: tuple[str, ...], ca_file: Path | None, auth_file: Path | None, progress: str) -> None:
    """Pull REF from its registry into the local store."""
    from kiln.registry.transfer import pull as do_pull

    reference = Reference.parse(ref)
    store = open_store(store_path)
    with TransferProgress(progress) as sink:
        desc = do_pull(reference, store, platform=_platform(platform), options=make_registry_options(insecure, ca_file, auth_file), progress=sink)
    click.echo(f"{reference} {desc.digest}")


@click.command()
@click.argument("ref")
@click.argument("dest", required=False)
@click.option("--digestfile", "digest_file", type=click.Path(dir_okay=False, path_type=Path), help="Write the pushed manifest digest here.")
@store_option
@registry_options
@progress_option
def push(ref: str, dest: str | None, digest_file: Path | None, store_path: Path | None, insecure: tuple[str, ...], ca_file: Path | None, auth_file: Path | None, progress: str) -> None:
    """Push REF from the local store to its registry, or to DEST."""
    from kiln.registry.transfer import push as do_push

    store = open_store(store_path)
    local = _local_name(store, ref)
    target = Reference.parse(dest or local)
    with TransferProgress(progress) as sink:
        desc = do_push(store, local, target, options=make_registry_options(insecure, ca_file, auth_file), progress=sink)
    if digest_file:
        digest_file.write_text(desc.digest + "\n")
    click.echo(f"{target} {desc.digest}")


@click.command()
@click.argument("src")
@click.argument("dest")
@click.option("--platform", help="Copy only this platform of a multi-platform image.")
@registry_options
@progress_option
def copy(src: str, dest: str, platform: str | None, insecure: tuple[str, ...], ca_file: Path | None, auth_file: Path | None, progress: str) -> None:
    """Copy an image from one registry to another, streaming, without the local store."""
    from kiln.registry.transfer import copy as do_copy

    with TransferProgress(progress) as sink:
        desc = do_copy(Reference.parse(src), Reference.parse(dest), platform=_platform(platform), options=make_registry_options(insecure, ca_file, auth_file), progress=sink)
    click.echo(f"{Reference.parse(dest)} {desc.digest}")


def _local_name(store: Store, ref: str) -> str:
    """The store's name for REF: as typed, or normalised (`app` is `docker.io/library/app:latest`)."""
    names = {name for name, _ in store.list_refs()}
    if ref in names:
        return ref
    try:
        full = str(Reference.parse(ref))
    except KilnError:
        full = ref
    if full in names:
        return full
    store.resolve(ref)  # a digest or unique prefix; raises a clear error otherwise
    return ref


@click.command()
@click.argument("ref")
@click.option("--remote", is_flag=True, help="Ask the registry even if the store has REF.")
@click.option("--platform", help="Platform to show for a multi-platform image.")
@store_option
@registry_options
def inspect(ref: str, remote: bool, platform: str | None, store_path: Path | None, insecure: tuple[str, ...], ca_file: Path | None, auth_file: Path | None) -> None:
    """Print the manifest and config of REF as JSON, from the store or else the registry."""
    want = _platform(platform) or Platform()
    store = open_store(store_path)
    if not remote:
        try:
            name = _local_name(store, ref)
        except ImageNotFoundError:
            name = None
        if name is not None:
            desc = store.resolve(name)
            click.echo(json.dumps(_describe_local(store, name, desc.digest, want), indent=2))
            return
    from kiln.registry.inspect import inspect_remote

    result = inspect_remote(Reference.parse(ref), make_registry_options(insecure, ca_file, auth_file), want)
    click.echo(json.dumps(result, indent=2))


def _describe_local(store: Store, name: str, digest: str, want: Platform) -> dict[str, object]:
    desc = store.resolve(digest)
    out: dict[str, object] = {"Name": name, "Source": "store", "Digest": desc.digest, "MediaType": desc.media_type}
    parsed = store.load_manifest(desc)
    if isinstance(parsed, Index):
        out["Index"] = json.loads(store.read_blob(desc.dgst))
        chosen = next((m for m in parsed.manifests if m.platform is None or m.platform.matches(want)), None)
        if chosen is None or not store.has_blob(chosen.dgst):
            return out
        parsed = store.load_manifest(chosen)
        out["Digest"] = chosen.digest
    assert isinstance(parsed, Manifest)
    out["Manifest"] = parsed.to_dict()
    out["Config"] = json.loads(store.read_blob(parsed.config.dgst))
    return out


@click.command("images")
@click.option("-q", "--quiet", is_flag=True, help="Only names.")
@store_option
def images_cmd(quiet: bool, store_path: Path | None) -> None:
    """List the images in the local store."""
    store = open_store(store_path)
    rows = []
    for name, desc in store.list_refs():
        size, created = 0, ""
        try:
            parsed = store.load_manifest(desc)
            if isinstance(parsed, Manifest):
                size = parsed.config.size + sum(layer.size for layer in parsed.layers)
                cfg = parse_config(store.read_blob(parsed.config.dgst))
                created = cfg.created or ""
        except KilnError:
            pass
        rows.append((name, desc.dgst.short, _age(created), human_size(size)))
    if quiet:
        for row in rows:
            click.echo(row[0])
        return
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(("REFERENCE", "DIGEST", "CREATED", "SIZE"))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo(fmt.format("REFERENCE", "DIGEST", "CREATED", "SIZE").rstrip())
    for row in rows:
        click.echo(fmt.format(*row).rstrip())


def _age(created: str) -> str:
    if not created:
        return "-"
    try:
        return datetime.fromisoformat(created.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return created


@click.command()
@click.argument("src")
@click.argument("dests", nargs=-1, required=True)
@store_option
def tag(src: str, dests: tuple[str, ...], store_path: Path | None) -> None:
    """Give the image SRC more names."""
    store = open_store(store_path)
    desc = store.resolve(_local_name(store, src))
    for dest in dests:
        store.tag(str(Reference.parse(dest)), desc)


@click.command()
@click.argument("refs", nargs=-1, required=True)
@store_option
def rmi(refs: tuple[str, ...], store_path: Path | None) -> None:
    """Remove names from the local store (blobs go at the next prune)."""
    store = open_store(store_path)
    for ref in refs:
        gone = store.untag(_local_name(store, ref))
        click.echo(f"untagged {ref} {gone.digest}")


@click.command()
@click.option("--cache", "with_cache", is_flag=True, help="Also drop the build cache.")
@store_option
def prune(with_cache: bool, store_path: Path | None) -> None:
    """Remove blobs that no image (or cache record) references."""
    store = open_store(store_path)
    extra = []
    try:
        from kiln.build.cache import cache_roots, clear_cache
    except ImportError:
        pass
    else:
        if with_cache:
            clear_cache(store)
        extra = list(cache_roots(store))
    result = store.prune(extra_roots=extra)
    from kiln.registry.blobsources import BlobSources

    BlobSources(store).retain_stored()
    click.echo(f"removed {result.removed_blobs} blobs ({human_size(result.freed_bytes)}), kept {result.kept_blobs}")

