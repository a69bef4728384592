"""Build outputs other than the store: an OCI layout directory and a docker-archive tarball."""

from __future__ import annotations

import json
import shutil
import tarfile
import tempfile
from pathlib import Path

from kiln.oci.canonical import canonical_json
from kiln.oci.compression import open_decompressed
from kiln.oci.digest import BLOCK_SIZE
from kiln.oci.models import Descriptor, Manifest
from kiln.oci.store import REF_NAME, Store, atomic_write


def export_oci_layout(store: Store, desc: Descriptor, dest: Path, tag: str | None = None) -> None:
    """Write the image (and only it) as an OCI layout at ``dest``; blobs are verified by the store."""
    out = Store(dest)
    for digest in sorted(store.reachable([desc])):
        from kiln.oci.digest import Digest

        d = Digest(digest)
        if out.has_blob(d):
            continue
        with store.open_blob(d) as src:
            out.ingest(src, expected=d)
    entry = desc.clone()
    if tag:
        entry.annotations = {**(entry.annotations or {}), REF_NAME: tag}
    index = json.loads((dest / "index.json").read_bytes())
    index["manifests"] = [m for m in index["manifests"] if (m.get("annotations") or {}).get(REF_NAME) != tag] + [entry.to_dict()]
    atomic_write(dest / "index.json", canonical_json(index))
    shutil.rmtree(out.state_dir, ignore_errors=True)


def export_docker_archive(store: Store, desc: Descriptor, dest: Path, repo_tags: list[str]) -> None:
    """Write a `docker save`-style tarball (loads with `podman load` / `docker load`).

    Layers are stored uncompressed, as `docker save` writes them, named by DiffID.
    """
    manifest = store.load_manifest(desc)
    assert isinstance(manifest, Manifest)
    config_bytes = store.read_blob(manifest.config.dgst)
    diff_ids = json.loads(config_bytes)["rootfs"]["diff_ids"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with open(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            config_name = f"{manifest.config.dgst.hex}.json"
            _add_bytes(tar, config_name, config_bytes)
            layer_names = []
            for layer, diff_id in zip(manifest.layers, diff_ids, strict=True):
                name = f"{diff_id.split(':', 1)[1]}/layer.tar"
                layer_names.append(name)
                _add_layer(tar, store, layer, name)
            entry = {"Config": config_name, "RepoTags": repo_tags, "Layers": layer_names}
            _add_bytes(tar, "manifest.json", json.dumps([entry]).encode())
        tmp.replace(dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _add_layer(tar: tarfile.TarFile, store: Store, layer: Descriptor, name: str) -> None:
    # Two passes (size, then content) keep memory flat for any layer size: tar needs the size first.
    size = 0
    with store.open_blob(layer.dgst) as blob, open_decompressed(blob) as plain:
        while chunk := plain.read(BLOCK_SIZE):
            size += len(chunk)
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    with store.open_blob(layer.dgst) as blob, open_decompressed(blob) as plain:
        tar.addfile(info, plain)
