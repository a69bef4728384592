"""Binary build input as an OCI artifact: `kiln start-build --from-dir` pushes, the build pod pulls.

OpenShift streams the upload through the API server; kiln has no API server of its own, so the
directory (or single file) travels through the registry the build pushes to anyway: one gzip'd
tar layer, an empty config, ``artifactType`` below. The Build records the digest-pinned
reference (``spec.source.binary.artifact``), so what the pod unpacks is exactly what was uploaded.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

from kiln.errors import KilnError, ManifestError, UsageError
from kiln.oci import mediatypes as mt
from kiln.oci.canonical import canonical_json
from kiln.oci.models import Descriptor, Manifest
from kiln.oci.store import Store
from kiln.registry.options import RegistryOptions
from kiln.registry.reference import Reference

ARTIFACT_TYPE = "application/vnd.kiln.build-source.v1"
SKIPPED = frozenset({".git"})


class BinarySourceError(KilnError):
    pass


def pack(source: Path, *, as_file: str | None = None) -> bytes:
    """A deterministic gzip'd tar of a directory's contents (``.git`` left out), or of one file."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        if source.is_file():
            tar.add(source, arcname=as_file or source.name, filter=_normalise)
        elif source.is_dir():
            for path in _walk(source):
                tar.add(path, arcname=path.relative_to(source).as_posix(), recursive=False, filter=_normalise)
        else:
            raise UsageError(f"{source}: no such file or directory")
    return gzip.compress(raw.getvalue(), mtime=0)


def _walk(root: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED)
        base = Path(dirpath)
        out.extend(base / d for d in dirnames)
        out.extend(base / f for f in sorted(filenames))
    return out


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def store_artifact(store: Store, payload: bytes) -> Descriptor:
    """Write the artifact (layer, empty config, manifest) to the store; returns the manifest descriptor."""
    layer = Descriptor(media_type=mt.OCI_LAYER_GZIP, digest=store.write_blob(payload), size=len(payload))
    empty = b"{}"
    config = Descriptor(media_type=mt.OCI_EMPTY, digest=store.write_blob(empty), size=len(empty))
    manifest = Manifest(media_type=mt.OCI_MANIFEST, artifact_type=ARTIFACT_TYPE, config=config, layers=[layer])
    raw = canonical_json(manifest.to_dict())
    return Descriptor(media_type=mt.OCI_MANIFEST, digest=store.write_blob(raw), size=len(raw), artifact_type=ARTIFACT_TYPE)


def upload(source: Path, dest: Reference, store: Store, options: RegistryOptions, *, as_file: str | None = None) -> str:
    """Pack ``source``, push it to ``dest`` and return the digest-pinned reference."""
    from kiln.registry.push import push

    desc = store_artifact(store, pack(source, as_file=as_file))
    store.tag(str(dest), desc)
    pushed = push(store, str(dest), dest, options=options)
    return str(Reference(dest.registry, dest.repository, None, pushed.dgst))


def download(ref: str, store: Store, dest: Path, options: RegistryOptions) -> None:
    """Pull the artifact ``ref`` and unpack it into ``dest`` (which must exist)."""
    from kiln.registry.pull import pull

    parsed = Reference.parse(ref)
    if parsed.digest is None:
        raise BinarySourceError(f"binary source {ref}: expected a digest-pinned reference")
    desc = pull(parsed, store, options=options)
    manifest = store.load_manifest(desc)
    if not isinstance(manifest, Manifest) or manifest.artifact_type != ARTIFACT_TYPE or len(manifest.layers) != 1:
        raise ManifestError(f"binary source {ref}: not a kiln build-source artifact")
    with store.open_blob(manifest.layers[0].dgst) as blob, tarfile.open(fileobj=blob, mode="r:gz") as tar:
        extract(tar, dest, ref)


def extract(tar: tarfile.TarFile, dest: Path, what: str) -> None:
    """Unpack regular files, directories and symlinks only, never writing outside ``dest`` or through a link.

    (tarfile's extraction filters would do, but Debian bookworm's Python 3.11.2 predates them.)
    """
    root = dest.resolve()
    for member in tar:
        parts = [p for p in member.name.split("/") if p not in ("", ".")]
        if member.name.startswith("/") or ".." in parts:
            raise BinarySourceError(f"binary source {what}: refusing entry {member.name!r}")
        if not parts:
            continue
        parent = root.joinpath(*parts[:-1])
        if parent.resolve() != parent or (parent.exists() and not parent.is_dir()):
            raise BinarySourceError(f"binary source {what}: entry {member.name!r} goes through a link")
        target = parent / parts[-1]
        if member.isdir():
            parent.mkdir(parents=True, exist_ok=True)
            target.mkdir(mode=0o755, exist_ok=True)
        elif member.isfile():
            parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o755 if member.mode & 0o111 else 0o644)
            with source, os.fdopen(fd, "wb") as out:
                while chunk := source.read(1 << 20):
                    out.write(chunk)
        elif member.issym():
            parent.mkdir(parents=True, exist_ok=True)
            os.symlink(member.linkname, target)
        # hard links, devices and fifos have no place in a build's source: skipped
