"""Rebase instead of rebuild: move an image's own layers onto a newer base, registry to registry.

Like ``pack rebase`` and ``crane rebase``: the old base's layers under the image are swapped
for the new base's, the image's own layers are kept byte for byte, and only a new config and
manifest are written. Layer blobs are never downloaded: the destination already has them,
mounts them from their repository on the same registry, or (another registry) gets them
streamed through. See docs/rebase.md for when that is the image a rebuild would give.

    >>> result = rebase_image("registry.example/app:1", options=RegistryOptions())  # doctest: +SKIP
    >>> result.reference                                                              # doctest: +SKIP
    'registry.example/app:1@sha256:...'

Refusals (``RebaseRefused``) happen before anything is written.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace

from kiln.build.annotations import BASE_DIGEST, BASE_NAME, REBASABLE
from kiln.build.image import Layer, layer_for_format
from kiln.build.rebase_config import RebaseRefused, rebased_config
from kiln.errors import UsageError
from kiln.oci import mediatypes as mt
from kiln.oci.canonical import canonical_json
from kiln.oci.digest import Digest
from kiln.oci.models import Descriptor, ImageConfig, Platform, parse_config
from kiln.registry.blobs import RemoteSource, upload_blob
from kiln.registry.client import RegistryClient, Session
from kiln.registry.inspect import _Remote as RemoteImage  # the one "manifest for a platform + config" reader
from kiln.registry.options import RegistryOptions
from kiln.registry.parallel import Aborted, run_all
from kiln.registry.progress import NullProgress, ProgressSink
from kiln.registry.pull import DEFAULT_PLATFORM
from kiln.registry.push import put_manifest
from kiln.registry.reference import Reference

__all__ = ["RebaseRefused", "RebaseResult", "rebase_image"]


@dataclass(frozen=True)
class RebaseResult:
    digest: str  # the new manifest's
    reference: str  # dest@digest
    old_base_digest: str
    new_base_digest: str
    reused_layers: int  # the image's own layers, kept as they were


@dataclass
class _Side:
    """One image involved in a rebase: where it is, its manifest and its config."""

    ref: Reference
    client: RegistryClient
    remote: RemoteImage
    config: ImageConfig

    @classmethod
    def open(cls, session: Session, ref: Reference, platform: Platform) -> _Side:
        client = session.client(ref)
        remote = RemoteImage(client, ref, platform)
        return cls(ref, client, remote, parse_config(remote.config_bytes(), what=f"{ref}: config"))


def rebase_image(
    image: str,
    *,
    new_base: str | None = None,
    old_base: str | None = None,
    dest: str | None = None,
    options: RegistryOptions,
    force: bool = False,
    platform: Platform | None = None,
    progress: ProgressSink | None = None,
    report: Callable[[str], None] | None = None,
    expect_base: str | None = None,
) -> RebaseResult:
    """Rebase ``image`` (a registry reference) from its old base onto its new one and write the
    result to ``dest`` (default: ``image``'s own tag).

    The old base is ``old_base`` or the image's ``org.opencontainers.image.base.name@digest``
    annotations; the new base is ``new_base`` or that name's tag as it resolves now. Without
    ``force`` the image must carry ``dev.kiln.image.rebasable: "true"`` and the new base may not
    change runtime config the image also changed. Raises RebaseRefused when the rebase would not
    be sound; nothing is written then. ``expect_base``: refuse unless the image's base name is
    this image (a trigger that saw one base change must not rebase onto another).
    """
    ref = Reference.parse(image)
    target = Reference.parse(dest) if dest else replace(ref, digest=None)
    if target.digest is not None:
        raise UsageError(f"{dest}: a rebase writes a new manifest; name a tag, not a digest")
    say = report or (lambda _line: None)
    with Session(options) as session:
        app = _Side.open(session, ref, platform or DEFAULT_PLATFORM)
        if app.remote.index is not None and dest is None:
            raise RebaseRefused(f"{image}: is a multi-platform index; rebase one platform into a tag of its own (--tag)")
        notes = app.remote.manifest.annotations or {}
        old_ref = _old_base_ref(image, old_base, notes)
        if expect_base is not None and replace(old_ref, digest=None) != replace(Reference.parse(expect_base), digest=None):
            raise RebaseRefused(f"{image}: its base is {old_ref.name}, not {expect_base}")
        if not force and notes.get(REBASABLE) != "true":
            raise RebaseRefused(
                f"{image}: not marked rebasable ({REBASABLE}): its build read the base's files; rebuild it, or --force"
            )
        new_ref = _new_base_ref(image, new_base, notes, old_ref)
        old = _Side.open(session, old_ref, app.config.platform)
        new = _Side.open(session, new_ref, app.config.platform)
        _check(image, app, old, new)
        say(f"rebasing {ref}: base {old_ref.name}@{old.remote.digest} -> {new_ref}@{new.remote.digest}")

        n_old = len(old.config.rootfs.diff_ids)
        app_diff_ids = app.config.rootfs.diff_ids[n_old:]
        try:
            config = rebased_config(app.config, old.config, new.config, app_diff_ids, force=force)
        except RebaseRefused as e:
            raise RebaseRefused(f"{image}: {e.message}; rebuild it, or --force") from None
        config_raw = canonical_json(config.to_dict())
        manifest = app.remote.manifest.clone()
        manifest.config = Descriptor(media_type=manifest.config.media_type, digest=Digest.of(config_raw), size=len(config_raw))
        docker = app.remote.media_type == mt.DOCKER_MANIFEST
        base_layers = [
            layer_for_format(Layer(d.digest, diff, d.size, d.media_type), docker)
            for d, diff in zip(new.remote.manifest.layers, new.config.rootfs.diff_ids, strict=True)
        ]
        app_layers = app.remote.manifest.layers[n_old:]
        manifest.layers = [*base_layers, *app_layers]
        base_name = str(replace(new_ref, digest=None)) if new_ref.tag else new_ref.name
        manifest.annotations = {**notes, BASE_NAME: base_name, BASE_DIGEST: str(new.remote.digest)}
        raw = canonical_json(manifest.to_dict())
        media_type = app.remote.media_type

        sink = progress or NullProgress()
        mounts = {s.ref.repository for s in (new, app) if s.ref.registry == target.registry and s.ref.repository != target.repository}
        client = session.client(target, push=True, mount_from=mounts)
        tasks = [_blob_task(client, new, d, f"base layer {i + 1}", target, sink) for i, d in enumerate(base_layers)]
        tasks += [_blob_task(client, app, d, f"layer {i + 1}", target, sink) for i, d in enumerate(app_layers)]
        how = run_all(tasks, options.concurrency)
        upload_blob(client, manifest.config, _Bytes(config_raw), label="config", what=str(target), progress=sink, abort=threading.Event())
        digest = Digest.of(raw)
        put_manifest(client, Descriptor(media_type=media_type, digest=digest, size=len(raw)), raw, sink, what=f"{target.name}@{digest}")
        if target.tag:
            client.put_manifest(target.tag, raw, media_type, str(target))
    moved = ", ".join(f"{how.count(k)} {k}" for k in sorted(set(how)))
    say(f"layers: {moved or 'none'}; wrote config and manifest")
    return RebaseResult(
        digest=str(digest),
        reference=f"{target}@{digest}" if target.tag else f"{target.name}@{digest}",
        old_base_digest=str(old.remote.digest),
        new_base_digest=str(new.remote.digest),
        reused_layers=len(app_layers),
    )


def _old_base_ref(image: str, given: str | None, notes: dict[str, str]) -> Reference:
    if given:
        return Reference.parse(given)
    name, digest = notes.get(BASE_NAME), notes.get(BASE_DIGEST)
    if not name or not digest:
        raise RebaseRefused(f"{image}: has no {BASE_NAME}/{BASE_DIGEST} annotations; name its base with --old-base")
    return Reference.parse(name).with_digest(digest)


def _new_base_ref(image: str, given: str | None, notes: dict[str, str], old: Reference) -> Reference:
    if given:
        return Reference.parse(given)
    name = notes.get(BASE_NAME)
    if name:
        parsed = Reference.parse(name)
        return replace(parsed, digest=None) if parsed.tag else parsed
    if old.tag:
        return replace(old, digest=None)  # the old base's tag, as it resolves now
    raise RebaseRefused(f"{image}: no base name to re-resolve; give the new base with --base")


def _check(image: str, app: _Side, old: _Side, new: _Side) -> None:
    """Refuse what would not be the image a rebuild on ``new`` gives."""
    ours, theirs = app.config.rootfs.diff_ids, old.config.rootfs.diff_ids
    if ours[: len(theirs)] != theirs or len(app.remote.manifest.layers) != len(ours):
        raise RebaseRefused(f"{image}: is not built on {old.ref} (its layers do not start with that base's layers)")
    if new.config.config.on_build:
        raise RebaseRefused(f"{image}: the new base {new.ref} has ONBUILD triggers, which only a rebuild runs")
    want, got = app.config.platform, new.config.platform
    if not (want.matches(got) and got.matches(want)):
        raise RebaseRefused(f"{image}: is {want}, the new base {new.ref} is {got}")


def _blob_task(client: RegistryClient, side: _Side, desc: Descriptor, label: str, target: Reference, sink: ProgressSink) -> Callable[[threading.Event], str]:
    """Make the destination hold a blob of ``side``: exists, mounted, or streamed through."""
    same = side.ref.registry == target.registry and side.ref.repository != target.repository
    mount_from = side.ref.repository if same else None

    def run(abort: threading.Event) -> str:
        source = RemoteSource(side.client, desc.dgst, desc.size, f"{side.ref}: {label} {desc.digest}")
        try:
            return upload_blob(client, desc, source, label=label, what=str(target), progress=sink, abort=abort, mount_from=mount_from)
        finally:
            source.close()

    return run


class _Bytes:
    """A ChunkSource over bytes in memory (the new config)."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def read(self, offset: int, n: int, abort: threading.Event) -> bytes:
        if abort.is_set():
            raise Aborted
        return self._data[offset : offset + n]

    def verify(self) -> None:
        pass  # the digest was computed from these very bytes

    def close(self) -> None:
        pass
