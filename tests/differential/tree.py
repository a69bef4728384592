"""Flatten an image's layers into one file tree, independently of kiln's own layer code.

The judge must not share code with what it judges, so this reads OCI layouts and layer tars with
nothing but ``json`` and ``tarfile`` (plus ``zstandard`` for zstd layers) and applies layers the way
the OCI image spec describes: in order, a ``.wh.NAME`` entry deletes NAME from the layers below,
a ``.wh..wh..opq`` entry hides every lower entry of its directory, and any other entry replaces
what was at its path (a directory over a directory merges, anything else replaces the subtree).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
INDEX_MEDIA = {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}


@dataclass(frozen=True)
class Node:
    """What the comparison sees of one path. ``links`` lists the other paths sharing its inode."""

    type: str  # file | dir | symlink | char | block | fifo
    mode: int  # permission bits with setuid/setgid/sticky
    uid: int
    gid: int
    sha256: str | None = None
    target: str | None = None  # symlink target
    links: tuple[str, ...] = ()
    xattrs: tuple[tuple[str, str], ...] = ()
    implicit: bool = False  # a parent directory no layer named (created 0755 root:root, as runtimes do)
    preview: str | None = None  # the start of a small text file, for readable reports (not compared)

    def describe(self) -> str:
        parts = [self.type, f"{self.mode:04o}", f"{self.uid}:{self.gid}"]
        if self.sha256:
            parts.append(self.sha256[:12])
        if self.target is not None:
            parts.append(f"-> {self.target}")
        if self.links:
            parts.append("hardlinked with " + ",".join(self.links))
        if self.xattrs:
            parts.append("xattrs " + ",".join(f"{k}={v}" for k, v in self.xattrs))
        if self.implicit:
            parts.append("(implicit)")
        if self.preview is not None:
            parts.append(repr(self.preview))
        return " ".join(parts)

    def same_as(self, other: Node) -> bool:
        """Equal in every compared field (``implicit`` is provenance, not content)."""
        return (self.type, self.mode, self.uid, self.gid, self.sha256, self.target, self.links, self.xattrs) == (
            other.type, other.mode, other.uid, other.gid, other.sha256, other.target, other.links, other.xattrs
        )


@dataclass
class _Inode:
    type: str
    mode: int
    uid: int
    gid: int
    sha256: str | None = None
    target: str | None = None
    xattrs: tuple[tuple[str, str], ...] = ()
    implicit: bool = False
    preview: str | None = None


@dataclass
class Image:
    """An image read from an OCI layout: its config document, manifest and flattened tree."""

    manifest: dict[str, Any]
    config: dict[str, Any]
    tree: dict[str, Node] = field(default_factory=dict)

    @property
    def settings(self) -> dict[str, Any]:
        value = self.config.get("config") or {}
        assert isinstance(value, dict)
        return value


def _blob(layout: Path, digest: str) -> bytes:
    algorithm, hexdigest = digest.split(":", 1)
    data = (layout / "blobs" / algorithm / hexdigest).read_bytes()
    assert hashlib.new(algorithm, data).hexdigest() == hexdigest, f"{layout}: blob {digest} is corrupt"
    return data


def _pick_manifest(layout: Path, index: dict[str, Any], tag: str | None) -> dict[str, Any]:
    manifests = index.get("manifests", [])
    if tag is not None:
        tagged = [m for m in manifests if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
        manifests = tagged or manifests
    assert len(manifests) >= 1, f"{layout}: no manifest"
    desc = manifests[0]
    doc = json.loads(_blob(layout, desc["digest"]))
    if doc.get("mediaType") in INDEX_MEDIA or desc.get("mediaType") in INDEX_MEDIA:
        amd64 = [m for m in doc["manifests"] if m.get("platform", {}).get("architecture") in (None, "amd64")]
        return _pick_manifest(layout, {"manifests": amd64 or doc["manifests"]}, None)
    assert isinstance(doc, dict)
    return doc


def _layer_tar(data: bytes) -> tarfile.TarFile:
    if data[:4] == b"\x28\xb5\x2f\xfd":
        import zstandard

        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")


def _preview(content: bytes, limit: int = 80) -> str | None:
    if len(content) > 4096 or b"\0" in content:
        return None
    text = content.decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "..."


def _clean(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    return "/".join(parts)


def _under(path: str, directory: str) -> bool:
    return directory == "" or path.startswith(directory + "/")


_TYPES = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
    tarfile.FIFOTYPE: "fifo",
}


def apply_layers(layers: list[bytes]) -> dict[str, Node]:
    """The flattened tree of ``layers`` (raw blobs, bottom first), keyed by path without a leading /."""
    inodes: dict[str, _Inode] = {}  # path -> inode object; hard links share one object
    for data in layers:
        added: set[str] = set()
        with _layer_tar(data) as tar:
            for member in tar:
                path = _clean(member.name)
                if not path:
                    continue  # the root directory itself: runtimes never take its metadata from a layer
                parent, _, base = path.rpartition("/")
                if base == OPAQUE:
                    for p in [p for p in inodes if _under(p, parent) and p not in added and p != parent]:
                        del inodes[p]
                    continue
                if base.startswith(WHITEOUT):
                    gone = (parent + "/" if parent else "") + base[len(WHITEOUT):]
                    for p in [p for p in inodes if p == gone or _under(p, gone)]:
                        del inodes[p]
                    continue
                _ensure_parents(inodes, parent)
                if member.islnk():
                    source = _clean(member.linkname)
                    assert source in inodes, f"hard link {path} -> {source}: no such file"
                    _remove(inodes, path)
                    inodes[path] = inodes[source]
                    added.add(path)
                    continue
                kind = _TYPES.get(member.type)
                assert kind is not None, f"{path}: unexpected tar type {member.type!r}"
                old = inodes.get(path)
                if not (kind == "dir" and old is not None and old.type == "dir"):
                    _remove(inodes, path)
                sha = preview = None
                if kind == "file":
                    handle = tar.extractfile(member)
                    assert handle is not None
                    content = handle.read()
                    sha = hashlib.sha256(content).hexdigest()
                    preview = _preview(content)
                xattrs = tuple(sorted(
                    (k.removeprefix("SCHILY.xattr."), v)
                    for k, v in member.pax_headers.items()
                    if k.startswith("SCHILY.xattr.")
                ))
                inodes[path] = _Inode(
                    kind, member.mode & 0o7777, member.uid, member.gid, sha,
                    member.linkname if kind == "symlink" else None, xattrs, preview=preview,
                )
                added.add(path)
    return _freeze(inodes)


def _ensure_parents(inodes: dict[str, _Inode], parent: str) -> None:
    if not parent:
        return
    parts = parent.split("/")
    for i in range(1, len(parts) + 1):
        p = "/".join(parts[:i])
        node = inodes.get(p)
        if node is None or node.type != "dir":
            _remove(inodes, p)
            inodes[p] = _Inode("dir", 0o755, 0, 0, implicit=True)


def _remove(inodes: dict[str, _Inode], path: str) -> None:
    for p in [p for p in inodes if p == path or _under(p, path)]:
        del inodes[p]


def _freeze(inodes: dict[str, _Inode]) -> dict[str, Node]:
    groups: dict[int, list[str]] = {}
    for path, inode in inodes.items():
        groups.setdefault(id(inode), []).append(path)
    tree: dict[str, Node] = {}
    for paths in groups.values():
        for path in paths:
            i = inodes[path]
            links = tuple(sorted("/" + p for p in paths if p != path))
            tree["/" + path] = Node(
                i.type, i.mode, i.uid, i.gid, i.sha256, i.target, links, i.xattrs, i.implicit, i.preview
            )
    return dict(sorted(tree.items()))


def read_image(layout: Path, tag: str | None = None) -> Image:
    """Read the image tagged ``tag`` (or the only one) from an OCI layout and flatten its layers."""
    index = json.loads((layout / "index.json").read_text())
    manifest = _pick_manifest(layout, index, tag)
    config = json.loads(_blob(layout, manifest["config"]["digest"]))
    layers = [_blob(layout, layer["digest"]) for layer in manifest.get("layers", [])]
    return Image(manifest, config, apply_layers(layers))


def tree_diff(expected: dict[str, Node], actual: dict[str, Node], *, names: tuple[str, str]) -> list[str]:
    """Readable lines, one per differing path ('' when the trees are equal)."""
    lines: list[str] = []
    left, right = names
    for path in sorted(set(expected) | set(actual)):
        a, b = expected.get(path), actual.get(path)
        if a is not None and b is not None and a.same_as(b):
            continue
        if b is None:
            assert a is not None
            lines.append(f"  {path}: only in {left}: {a.describe()}")
        elif a is None:
            lines.append(f"  {path}: only in {right}: {b.describe()}")
        else:
            lines.append(f"  {path}: {left}: {a.describe()}\n  {' ' * len(path)}  {right}: {b.describe()}")
    return lines


def subtree(tree: dict[str, Node], *roots: str) -> dict[str, Node]:
    """The entries at or under any of ``roots`` (absolute paths)."""
    return {p: n for p, n in tree.items() if any(p == r or p.startswith(r.rstrip("/") + "/") for r in roots)}


__all__ = ["Image", "Node", "apply_layers", "read_image", "subtree", "tree_diff"]
