"""Reference parsing, normalisation and validation (distribution's grammar, Docker Hub rules)."""

from __future__ import annotations

import pytest

from kiln.errors import ReferenceError_
from kiln.registry.reference import Reference

D = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64

VALID = [
    # text, registry, repository, tag, digest, str()
    ("busybox", "docker.io", "library/busybox", "latest", None, "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None, "docker.io/library/busybox:1.36"),
    ("user/app", "docker.io", "user/app", "latest", None, "docker.io/user/app:latest"),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None, "docker.io/library/busybox:latest"),
    ("index.docker.io/user/app:v1", "docker.io", "user/app", "v1", None, "docker.io/user/app:v1"),
    (
        "registry-1.docker.io/library/x",
        "docker.io",
        "library/x",
        "latest",
        None,
        "docker.io/library/x:latest",
    ),
    (f"busybox@{D}", "docker.io", "library/busybox", None, D, f"docker.io/library/busybox@{D}"),
    (f"busybox:1@{D}", "docker.io", "library/busybox", "1", D, f"docker.io/library/busybox:1@{D}"),
    ("localhost:5000/a", "localhost:5000", "a", "latest", None, "localhost:5000/a:latest"),
    ("localhost/a/b:t", "localhost", "a/b", "t", None, "localhost/a/b:t"),
    ("127.0.0.1:5000/x", "127.0.0.1:5000", "x", "latest", None, "127.0.0.1:5000/x:latest"),
    ("[::1]:5000/x:y", "[::1]:5000", "x", "y", None, "[::1]:5000/x:y"),
    (
        "quay.io/org/team/app:v1.2-rc_3",
        "quay.io",
        "org/team/app",
        "v1.2-rc_3",
        None,
        "quay.io/org/team/app:v1.2-rc_3",
    ),
    ("ghcr.io/a__b/c-d.e---f", "ghcr.io", "a__b/c-d.e---f", "latest", None, "ghcr.io/a__b/c-d.e---f:latest"),
    ("Example.COM/x", "Example.COM", "x", "latest", None, "Example.COM/x:latest"),
    ("x:" + "T" * 128, "docker.io", "library/x", "T" * 128, None, "docker.io/library/x:" + "T" * 128),
]

INVALID = [
    "",
    " busybox",
    "Busybox",
    "user/App",
    "busybox:",
    "busybox:-tag",
    "busybox:" + "t" * 129,
    "busybox:a/b",
    "busybox@sha256:abc",
    "busybox@md5:" + "a" * 32,
    f"busybox@{D}@{D2}",
    "a//b",
    "a/b/",
    "/a",
    "-a/b",
    "a_/b",
    "a..b",
    "localhost:/a",
    "exa_mple.com/a",
    "quay.io/",
    "x" * 256,
    "_x/y",
]


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest", "full"), VALID)
def test_valid(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None, full: str
) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    assert str(ref) == full
    assert Reference.parse(str(ref)) == ref


@pytest.mark.parametrize("text", INVALID)
def test_invalid_names_the_reference(text: str) -> None:
    with pytest.raises(ReferenceError_) as err:
        Reference.parse(text)
    message = str(err.value)
    assert "\n" not in message
    assert repr(text) in message


def test_familiar_and_api_host() -> None:
    assert Reference.parse("busybox").familiar == "busybox:latest"
    assert Reference.parse("user/app:1").familiar == "user/app:1"
    assert Reference.parse(f"quay.io/x/y@{D}").familiar == f"quay.io/x/y@{D}"
    assert Reference.parse("library/a/b").familiar == "library/a/b:latest"
    assert Reference.parse("busybox").api_host == "registry-1.docker.io"
    assert Reference.parse("index.docker.io/busybox").api_host == "registry-1.docker.io"
    assert Reference.parse("localhost:5000/a").api_host == "localhost:5000"


def test_with_tag_and_digest() -> None:
    ref = Reference.parse(f"localhost:5000/a:old@{D}")
    assert str(ref.with_tag("new")) == "localhost:5000/a:new"
    assert str(Reference.parse("a:t").with_digest(D)) == f"docker.io/library/a:t@{D}"
    assert ref.identifier == D
    assert Reference.parse("a:t").identifier == "t"
    with pytest.raises(ReferenceError_):
        ref.with_tag("bad tag")
    with pytest.raises(ReferenceError_):
        ref.with_digest("sha256:nothex")


def test_frozen_and_hashable() -> None:
    ref = Reference.parse("a")
    assert {ref: 1}[Reference.parse("docker.io/library/a:latest")] == 1
    with pytest.raises(AttributeError):
        ref.tag = "x"  # type: ignore[misc]
