"""The OCI layout store: atomic verified writes, tags, prune, concurrency and crash safety."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kiln.errors import BlobUnknownError, DigestMismatchError, ImageNotFoundError
from kiln.oci import mediatypes as mt
from kiln.oci.digest import Digest
from kiln.oci.models import Descriptor, Manifest
from kiln.oci.store import Store, default_store_path


def _image(store: Store, payload: bytes) -> Descriptor:
    layer = store.write_blob(payload)
    config = store.write_json_blob(mt.OCI_CONFIG, {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer]}})
    manifest = Manifest(
        config=config,
        layers=[Descriptor(media_type=mt.OCI_LAYER, digest=layer, size=len(payload))],
    )
    return store.write_json_blob(mt.OCI_MANIFEST, manifest.to_dict())


def test_layout_is_valid_oci(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    assert json.loads((store.root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((store.root / "index.json").read_bytes())
    assert index["schemaVersion"] == 2 and index["manifests"] == []


def test_default_store_path_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KILN_STORE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "x"))
    assert default_store_path() == tmp_path / "a"
    monkeypatch.delenv("KILN_STORE")
    assert default_store_path() == tmp_path / "x" / "kiln"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert default_store_path() == tmp_path / "h" / ".local" / "share" / "kiln"


def test_blob_roundtrip_and_verification(tmp_path: Path) -> None:
    store = Store(tmp_path)
    d = store.write_blob(b"hello")
    assert d == Digest.of(b"hello")
    assert store.read_blob(d) == b"hello"
    assert store.blob_size(d) == 5
    wrong = Digest.of(b"other")
    with pytest.raises(DigestMismatchError):
        store.write_blob(b"hello!", expected=wrong)
    with pytest.raises(DigestMismatchError), store.blob_writer(wrong) as w:
        w.write(b"not it")
    assert not store.has_blob(wrong)
    assert not store.has_blob(Digest.of(b"not it"))
    assert list(store.tmp_dir.iterdir()) == []
    with pytest.raises(BlobUnknownError):
        store.read_blob(wrong)


def test_size_mismatch_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(DigestMismatchError, match="size"), store.blob_writer(None, expected_size=10) as w:
        w.write(b"short")
    assert not store.has_blob(Digest.of(b"short"))


def test_writer_aborts_on_exception(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(RuntimeError), store.blob_writer() as w:
        w.write(b"partial")
        raise RuntimeError("interrupted")
    assert not store.has_blob(Digest.of(b"partial"))
    assert list(store.tmp_dir.iterdir()) == []


def test_tag_resolve_untag(tmp_path: Path) -> None:
    store = Store(tmp_path)
    desc = _image(store, b"layer")
    store.tag("localhost/app:1", desc)
    store.tag("localhost/app:2", desc)
    assert store.resolve("localhost/app:1").digest == desc.digest
    assert store.resolve(desc.dgst.hex[:12]).digest == desc.digest
    assert [n for n, _ in store.list_refs()] == ["localhost/app:1", "localhost/app:2"]
    # retagging replaces, never duplicates
    other = _image(store, b"layer2")
    store.tag("localhost/app:1", other)
    assert store.resolve("localhost/app:1").digest == other.digest
    assert len(store.list_refs()) == 2
    store.untag("localhost/app:2")
    with pytest.raises(ImageNotFoundError):
        store.resolve("localhost/app:2")
    with pytest.raises(ImageNotFoundError):
        store.untag("localhost/app:2")


def test_prune_removes_only_unreferenced(tmp_path: Path) -> None:
    store = Store(tmp_path)
    kept = _image(store, b"kept layer")
    store.tag("localhost/kept:1", kept)
    dropped = _image(store, b"dropped layer")
    stray = store.write_blob(b"stray")
    (store.tmp_dir / "blob-x.tmp").write_bytes(b"half")
    result = store.prune()
    assert store.has_blob(kept.dgst)
    assert store.has_blob(Digest.of(b"kept layer"))
    assert not store.has_blob(dropped.dgst)
    assert not store.has_blob(Digest.of(b"dropped layer"))
    assert not store.has_blob(stray)
    assert result.removed_blobs == 4  # manifest, config, layer of the dropped image + stray
    assert result.removed_temp == 1
    assert store.check() == []


def test_prune_keeps_extra_roots(tmp_path: Path) -> None:
    store = Store(tmp_path)
    cached = _image(store, b"cached")
    store.prune(extra_roots=[cached])
    assert store.has_blob(cached.dgst)


def _tagger(root: str, n: int, worker: int) -> None:
    store = Store(Path(root))
    for i in range(n):
        with store.lock_shared():
            desc = _image(store, f"w{worker}-{i}".encode())
            store.tag(f"localhost/w{worker}:{i}", desc)


def test_concurrent_writers_lose_no_tag(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_tagger, args=(str(tmp_path), 15, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    store = Store(tmp_path)
    assert len(store.list_refs()) == 60
    assert store.check() == []


_CRASHER = """
import sys, os
from pathlib import Path
from kiln.oci.store import Store
from kiln.oci import mediatypes as mt
from kiln.oci.models import Descriptor, Manifest
store = Store(Path(sys.argv[1]))
i = 0
while True:
    payload = os.urandom(256 * 1024)
    layer = store.write_blob(payload)
    cfg = store.write_json_blob(mt.OCI_CONFIG, {"architecture": "amd64", "os": "linux"})
    m = Manifest(config=cfg, layers=[Descriptor(media_type=mt.OCI_LAYER, digest=layer, size=len(payload))])
    store.tag(f"localhost/crash:{i}", store.write_json_blob(mt.OCI_MANIFEST, m.to_dict()))
    i += 1
    if i == 3:
        print("ready", flush=True)
"""


def test_sigkill_mid_write_leaves_consistent_store(tmp_path: Path) -> None:
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _CRASHER, str(tmp_path)], stdout=subprocess.PIPE)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        store = Store(tmp_path)
        # every tag resolves to complete, verified blobs; index.json parses
        assert store.list_refs()
        assert store.check() == []
    store.prune()
    assert store.check() == []
    assert list(store.tmp_dir.iterdir()) == []
