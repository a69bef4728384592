"""Blob redirects: distribution's `redirect` storage middleware sends blob GETs to another server.

The other server is a plain file server over the registry's own storage directory, on another
port (so another origin). It does not support Range requests, and it can cut one response short:
kiln must then start that blob over and skip what it already has.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kiln.oci.digest import Digest
from kiln.oci.store import Store
from kiln.registry.options import RegistryOptions
from kiln.registry.transfer import copy, pull
from tests.fixtures.images import BuiltImage, push_with_skopeo, random_layers_image
from tests.fixtures.registry import Registry, RepoNamer, free_port
from tests.registry.conftest import ref, skopeo_digest, with_auth_file


class StorageServer:
    """Serves `root` read-only; records (path, headers) and can cut the next response for a path."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.cut: dict[str, int] = {}  # path substring -> bytes to send before hanging up
        owner = self

        class Handler(SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def send_head(self) -> Any:
                owner.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                return super().send_head()

            def copyfile(self, source: Any, outputfile: Any) -> None:
                for key, limit in list(owner.cut.items()):
                    if key in self.path:
                        del owner.cut[key]
                        outputfile.write(source.read(limit))
                        outputfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                super().copyfile(source, outputfile)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), partial(Handler, directory=str(root)))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StorageServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def redirecting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, StorageServer]]:
    workdir = tmp_path_factory.mktemp("registry-redirect")
    port = free_port()
    middleware = {"storage": [{"name": "redirect", "options": {"baseurl": f"http://127.0.0.1:{port}"}}]}
    reg = Registry.htpasswd(workdir, config_overrides={"middleware": middleware})
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    with StorageServer(workdir / "data", port) as storage, reg:
        yield reg, storage


def test_pull_follows_redirects_without_sending_credentials(
    redirecting: tuple[Registry, StorageServer],
    fresh_repo: RepoNamer,
    busybox_image: BuiltImage,
    store: Store,
    opts: RegistryOptions,
    tmp_path: Path,
) -> None:
    reg, storage = redirecting
    assert reg.credentials is not None
    repo = fresh_repo()
    push_with_skopeo(busybox_image.layout, reg, f"{repo}:1", reg.credentials)
    storage.seen.clear()
    options = with_auth_file(opts, tmp_path, {reg.host: reg.credentials})
    desc = pull(ref(reg.host, f"{repo}:1"), store, options=options)
    assert desc.digest == busybox_image.manifest.digest
    fetched = {p for p, _ in storage.seen}
    for blob in (busybox_image.config, *busybox_image.layers):
        assert any(blob.digest.split(":")[1] in p for p in fetched)
        assert store.has_blob(Digest(blob.digest))
    assert all("authorization" not in headers for _, headers in storage.seen)


def test_cut_redirected_blob_without_range_support_starts_over(
    redirecting: tuple[Registry, StorageServer],
    fresh_repo: RepoNamer,
    store: Store,
    opts: RegistryOptions,
    tmp_path: Path,
) -> None:
    reg, storage = redirecting
    assert reg.credentials is not None
    img = random_layers_image(tmp_path / "img", 1, 300_000, seed=31)
    repo = fresh_repo()
    push_with_skopeo(img.layout, reg, f"{repo}:1", reg.credentials)
    layer = img.layers[0].digest
    storage.seen.clear()
    storage.cut[layer.split(":")[1]] = 100_000
    options = with_auth_file(opts, tmp_path, {reg.host: reg.credentials})
    pull(ref(reg.host, f"{repo}:1"), store, options=options)
    layer_gets = [h for p, h in storage.seen if layer.split(":")[1] in p]
    assert len(layer_gets) == 2
    assert layer_gets[1].get("range") == "bytes=100000-"  # asked to resume; got the whole blob
    assert store.read_blob(Digest(layer)) == img.blob_path(layer).read_bytes()

    # The same for a streaming copy to another registry.
    storage.cut[layer.split(":")[1]] = 50_000
    dest = fresh_repo("dest")
    desc = copy(ref(reg.host, f"{repo}:1"), ref(reg.host, f"{dest}:1"), options=options)
    assert skopeo_digest(reg.host, f"{dest}:1", reg.credentials) == desc.digest == img.manifest.digest
