"""kiln.dev/triggers parsing and the reference arithmetic behind redeploys (the cluster side is tests/e2e/test_redeploy.py)."""

from __future__ import annotations

import json

import pytest

from kiln.cluster.redeploy import WorkloadTrigger, parse_triggers, pinned, same_image

DIGEST = "sha256:" + "ab" * 32


def test_parse_triggers_good() -> None:
    raw = json.dumps([
        {"from": "registry:5000/team/app:latest", "container": "app"},
        {"from": "busybox", "container": "init", "paused": True},
        {"from": "quay.io/x/y:1", "container": "side", "paused": False, "extra": "ignored"},
    ])  # fmt: skip
    assert parse_triggers(raw) == [
        WorkloadTrigger("registry:5000/team/app:latest", "app"),
        WorkloadTrigger("busybox", "init", paused=True),
        WorkloadTrigger("quay.io/x/y:1", "side"),
    ]


def test_parse_triggers_empty_list() -> None:
    assert parse_triggers("[]") == []


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("[{", "not valid JSON"),
        ("", "not valid JSON"),
        ('{"from": "a", "container": "b"}', "must be a JSON list"),
        ('"a"', "must be a JSON list"),
        ('["app"]', r"trigger \[0\]: must be an object"),
        ('[{"container": "app"}]', "missing field 'from'"),
        ('[{"from": "app:1"}]', "missing field 'container'"),
        ('[{"from": "app:1", "container": "a"}, {"from": "b"}]', r"trigger \[1\]: missing field 'container'"),
        ('[{"from": 5, "container": "app"}]', "field 'from' must be a non-empty string"),
        ('[{"from": "", "container": "app"}]', "field 'from' must be a non-empty string"),
        ('[{"from": "app:1", "container": ["app"]}]', "field 'container' must be a non-empty string"),
        ('[{"from": "app:1", "container": "app", "paused": "false"}]', "field 'paused' must be true or false"),
        ('[{"from": "app:1", "container": "app", "paused": 0}]', "field 'paused' must be true or false"),
        ('[{"from": "UPPER/app:1", "container": "app"}]', "field 'from'.*lowercase"),
        ('[{"from": "app@' + DIGEST + '", "container": "app"}]', "field 'from' must name a tag, not a digest"),
    ],
)
def test_parse_triggers_bad(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_triggers(raw)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:latest", "index.docker.io/library/busybox"),
        ("user/app:1", "docker.io/user/app:1"),
        ("registry:5000/team/app", "registry:5000/team/app:latest"),
        ("127.0.0.1:5000/e2e/app:latest", "127.0.0.1:5000/e2e/app"),
        ("localhost/app:v2", "localhost/app:v2"),
        ("quay.io/x/y@" + DIGEST, "quay.io/x/y@" + DIGEST),
        ("quay.io/x/y:1@" + DIGEST, "quay.io/x/y@" + DIGEST),
    ],
)
def test_same_image(a: str, b: str) -> None:
    assert same_image(a, b)
    assert same_image(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("busybox", "busybox:1"),
        ("busybox", "docker.io/other/busybox"),
        ("registry:5000/team/app:latest", "registry:5001/team/app:latest"),
        ("registry:5000/team/app:latest", "registry/team/app:latest"),  # no port: a Docker Hub path
        ("localhost:5000/app", "localhost/app"),
        ("quay.io/x/y:latest", "quay.io/x/y@" + DIGEST),  # a digest never equals a tag
        ("quay.io/x/y:latest", "quay.io/x/y:latest@" + DIGEST),
        ("quay.io/x/y@" + DIGEST, "quay.io/x/y@sha256:" + "cd" * 32),
        ("quay.io/x/y", "not a reference!"),
    ],
)
def test_not_same_image(a: str, b: str) -> None:
    assert not same_image(a, b)
    assert not same_image(b, a)


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("registry:5000/team/app:latest", "registry:5000/team/app@" + DIGEST),
        ("127.0.0.1:5000/e2e/app", "127.0.0.1:5000/e2e/app@" + DIGEST),
        ("busybox:1.36", "docker.io/library/busybox@" + DIGEST),
        ("quay.io/x/y:1@sha256:" + "cd" * 32, "quay.io/x/y@" + DIGEST),
    ],
)
def test_pinned(ref: str, expected: str) -> None:
    assert pinned(ref, DIGEST) == expected
    assert same_image(pinned(ref, DIGEST), expected)


@pytest.mark.parametrize(("ref", "digest"), [("app:1", "sha256:short"), ("app:1", "ab" * 32), ("Bad Ref", DIGEST)])
def test_pinned_refuses(ref: str, digest: str) -> None:
    with pytest.raises(ValueError):
        pinned(ref, digest)
