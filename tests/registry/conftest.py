"""Helpers for registry tests: a store, fast retry options, images pushed by skopeo, judges."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from kiln.oci.store import Store
from kiln.registry.options import RegistryOptions
from kiln.registry.reference import Reference
from tests.fixtures.images import (
    REF_NAME,
    BuiltImage,
    random_layers_image,
    sha256_digest,
)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


@pytest.fixture
def opts(tmp_path: Path) -> RegistryOptions:
    """Quick backoff, and an empty docker config so the developer's own credentials never leak in."""
    empty = tmp_path / "empty-auth.json"
    empty.write_text("{}")
    return RegistryOptions(backoff_base=0.05, backoff_max=0.2, auth_file=empty, timeout=30)


def with_auth_file(
    opts: RegistryOptions, tmp_path: Path, entries: dict[str, tuple[str, str]]
) -> RegistryOptions:
    """`opts` reading credentials only from a fresh auth.json holding `entries` (host -> user, pw)."""
    path = tmp_path / "auth.json"
    auths = {
        host: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()} for host, (u, p) in entries.items()
    }
    path.write_text(json.dumps({"auths": auths}))
    return dataclasses.replace(opts, auth_file=path)


def skopeo(*args: str) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(
        ["skopeo", "--insecure-policy", *args], capture_output=True, timeout=300, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(f"skopeo {args[0]} failed: {proc.stderr.decode(errors='replace')}")
    return proc


def skopeo_raw_manifest(host: str, reference: str, creds: tuple[str, str] | None = None) -> bytes:
    """The manifest bytes as skopeo reads them (`skopeo inspect --raw`)."""
    auth = ["--creds", f"{creds[0]}:{creds[1]}"] if creds else ["--no-creds"]
    return skopeo("inspect", "--raw", "--tls-verify=false", *auth, f"docker://{host}/{reference}").stdout


def skopeo_digest(host: str, reference: str, creds: tuple[str, str] | None = None) -> str:
    return "sha256:" + hashlib.sha256(skopeo_raw_manifest(host, reference, creds)).hexdigest()


def umoci_unpack(layout: Path, tag: str, bundle: Path) -> None:
    rootless = ["--rootless"] if os.geteuid() != 0 else []
    proc = subprocess.run(
        ["umoci", "unpack", *rootless, "--image", f"{layout}:{tag}", str(bundle)],
        capture_output=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"umoci unpack failed: {proc.stderr.decode(errors='replace')}")


@dataclass(frozen=True)
class MultiImage:
    layout: Path
    tag: str
    index_bytes: bytes
    index_digest: str
    platforms: dict[str, BuiltImage]  # "linux/amd64" -> image


def make_index_layout(directory: Path) -> MultiImage:
    """An OCI layout whose tag "multi" is an index of a linux/amd64 and a linux/arm64/v8 image."""
    images = {
        "linux/amd64": random_layers_image(directory, 2, 40_000, tag="amd64", seed=11),
        "linux/arm64/v8": random_layers_image(directory, 1, 30_000, tag="arm64", seed=12),
    }
    manifests = []
    for plat, img in images.items():
        os_, arch, *variant = plat.split("/")
        platform = {"architecture": arch, "os": os_, **({"variant": variant[0]} if variant else {})}
        manifests.append({**img.manifest.to_json(), "platform": platform})
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }
    data = json.dumps(index, indent=2).encode()  # not canonical on purpose: bytes must survive as-is
    digest = sha256_digest(data)
    (directory / "blobs/sha256" / digest.split(":", 1)[1]).write_bytes(data)
    top = {
        "mediaType": index["mediaType"],
        "digest": digest,
        "size": len(data),
        "annotations": {REF_NAME: "multi"},
    }
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return MultiImage(directory, "multi", data, digest, images)


@pytest.fixture(scope="session")
def multi_image(tmp_path_factory: pytest.TempPathFactory) -> MultiImage:
    return make_index_layout(tmp_path_factory.mktemp("multi-layout"))


def push_index_with_skopeo(
    img: MultiImage, host: str, repo_tag: str, creds: tuple[str, str] | None = None
) -> None:
    skopeo(
        "copy",
        "--all",
        "--preserve-digests",
        "--dest-tls-verify=false",
        *(["--dest-creds", f"{creds[0]}:{creds[1]}"] if creds else ["--dest-no-creds"]),
        f"oci:{img.layout}:{img.tag}",
        f"docker://{host}/{repo_tag}",
    )


def ref(host: str, repo_tag: str) -> Reference:
    return Reference.parse(f"{host}/{repo_tag}")


class Recorder:
    """A ProgressSink that remembers final states (thread-safe enough: dict writes are atomic)."""

    def __init__(self) -> None:
        self.status: dict[str, str] = {}
        self.moved: dict[str, int] = {}

    def start(self, id: str, label: str, total: int | None) -> None:
        self.moved.setdefault(id, 0)

    def advance(self, id: str, n: int) -> None:
        self.moved[id] = self.moved.get(id, 0) + n

    def done(self, id: str, status: str) -> None:
        self.status[id] = status
