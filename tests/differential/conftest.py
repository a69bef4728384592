"""Session fixtures for the differential test: the base image in the registry, both builders, a
loopback HTTP server for ``ADD <url>``, and a builder-owned secret file."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from tests.differential.builders import Buildah, DiffEnv, Kiln
from tests.differential.cases import CASES, Case
from tests.differential.context import tar_bytes
from tests.differential.harness import Pair, build_case
from tests.fixtures.httpdir import http_dir
from tests.fixtures.images import make_busybox_oci_layout, push_with_skopeo
from tests.fixtures.registry import Registry
from tests.fixtures.rootless import Rootless

BASE_REPO = "diff/busybox:1"
PASSWD = (
    b"root:x:0:0:root:/root:/bin/sh\n"
    b"app:x:1000:1000:app:/home/app:/bin/sh\n"
    b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = b"root:x:0:\napp:x:1000:\ndevs:x:2000:app\nnobody:x:65534:\n"
SECRET_VALUE = "differential-secret-7c1e"

# Files served to ADD <url>; their digests go into --checksum.
URL_FILES: dict[str, bytes] = {
    "hello.txt": b"hello over http\n",
    "archive.tar.gz": tar_bytes({"inside/one.txt": "one\n"}, gzip=True),  # ADD <url> never extracts
}


@pytest.fixture(scope="session")
def url_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("diff-http")
    for name, data in URL_FILES.items():
        (directory / name).write_bytes(data)
    with http_dir(directory) as url:
        yield url


@pytest.fixture(scope="session")
def diff_env(
    rootless: Rootless, registry: Registry, url_base: str, tmp_path_factory: pytest.TempPathFactory
) -> DiffEnv:
    layout = make_busybox_oci_layout(
        tmp_path_factory.mktemp("diff-base"), tag="1", extra_files={"etc/passwd": PASSWD, "etc/group": GROUP}
    )
    push_with_skopeo(layout.layout, registry, BASE_REPO)
    secrets = rootless.builder_tmpdir("diff-secrets-")
    secret = secrets / "token.txt"
    secret.write_text(SECRET_VALUE)
    os.chown(secret, rootless.uid, rootless.gid)
    values = {
        "registry": registry.host,
        "base": f"{registry.host}/{BASE_REPO}",
        "url": url_base,
        "token": uuid.uuid4().hex[:12],  # fresh cache-mount ids: each session starts with empty caches
        "secret": str(secret),
        "secret_value": SECRET_VALUE,
        "sha_hello": hashlib.sha256(URL_FILES["hello.txt"]).hexdigest(),
    }
    return DiffEnv(rootless, registry, Buildah.create(rootless), Kiln.create(rootless), values)


#: Cases built at the same time (each is two builds, buildah's and kiln's). One case at a time
#: leaves two cores a third idle (both builders wait on process start-up, locks and fsync).
PARALLEL_CASES = 2


@pytest.fixture(scope="session")
def prebuilt(diff_env: DiffEnv, request: pytest.FixtureRequest) -> Iterator[dict[str, Future[Pair]]]:
    """Every selected case, building in the background from the first use on; a test waits for its
    own case only, and a build failure surfaces in that case's test."""
    # In the order the tests will ask for them, so no test waits for cases queued before its own.
    params = [getattr(item, "callspec", None) for item in request.session.items]
    order = [p.params["case"].name for p in params if p is not None and isinstance(p.params.get("case"), Case)]
    by_name = {case.name: case for case in CASES}
    pool = ThreadPoolExecutor(PARALLEL_CASES, thread_name_prefix="diff-build")
    try:
        # Other suites' parameters may be named "case" too: only this suite's cases are built.
        yield {name: pool.submit(build_case, diff_env, by_name[name]) for name in dict.fromkeys(order) if name in by_name}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
