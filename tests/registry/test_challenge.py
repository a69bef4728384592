"""WWW-Authenticate parsing, Retry-After parsing and the plain-HTTP rule (pure logic)."""

from __future__ import annotations

import email.utils
import time

import pytest

from kiln.registry.challenge import parse_all, parse_challenges
from kiln.registry.options import RegistryOptions
from kiln.registry.transport import Backoff, base_url, is_loopback, parse_retry_after


def test_docker_hub_style_bearer() -> None:
    [c] = parse_challenges(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:samalba/my-app:pull,push"'
    )
    assert c.scheme == "bearer"
    assert c.realm == "https://auth.docker.io/token"
    assert c.service == "registry.docker.io"
    assert c.scopes == ["repository:samalba/my-app:pull,push"]


def test_several_challenges_and_commas_in_quotes() -> None:
    cs = parse_challenges('Basic realm="a, b=c", Bearer realm="https://t/x?y=1,2",service=svc , error="x"')
    assert [c.scheme for c in cs] == ["basic", "bearer"]
    assert cs[0].realm == "a, b=c"
    assert cs[1].params == {"realm": "https://t/x?y=1,2", "service": "svc", "error": "x"}


def test_case_spacing_and_escapes() -> None:
    [c] = parse_challenges(
        'BEARER  Realm = "x\\"y"  ,  SERVICE=s,scope="repository:a:pull repository:b:pull"'
    )
    assert c.scheme == "bearer"
    assert c.realm == 'x"y'
    assert c.service == "s"
    assert c.scopes == ["repository:a:pull", "repository:b:pull"]


def test_token68_and_bare_schemes() -> None:
    cs = parse_challenges("Negotiate abc123==, Basic")
    assert [(c.scheme, c.token68) for c in cs] == [("negotiate", "abc123=="), ("basic", None)]


@pytest.mark.parametrize("garbage", ["", ",,,", '"', "=", 'Bearer realm="unterminated', "\x00\x01 ; ; ;"])
def test_garbage_never_raises(garbage: str) -> None:
    parse_challenges(garbage)


def test_unterminated_quote_is_lenient() -> None:
    [c] = parse_challenges('Bearer realm="https://a/token')
    assert c.realm == "https://a/token"


def test_multiple_header_values() -> None:
    cs = parse_all(['Basic realm="r"', 'Bearer realm="t"'])
    assert [c.scheme for c in cs] == ["basic", "bearer"]


def test_retry_after_seconds_date_and_cap() -> None:
    assert parse_retry_after("3", cap=30) == 3
    assert parse_retry_after("300", cap=30) == 30
    assert parse_retry_after("-5", cap=30) == 0
    assert parse_retry_after(None, cap=30) is None
    assert parse_retry_after("soon", cap=30) is None
    future = email.utils.formatdate(time.time() + 20, usegmt=True)
    got = parse_retry_after(future, cap=30)
    assert got is not None and 10 < got <= 20
    past = email.utils.formatdate(time.time() - 100, usegmt=True)
    assert parse_retry_after(past, cap=30) == 0


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    b = Backoff(RegistryOptions(backoff_base=1.0, backoff_max=8.0))
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 8.0), (10, 8.0)]:
        for _ in range(20):
            assert ceiling / 2 <= b.delay(attempt) <= ceiling
    assert b.delay(5, retry_after=1.5) == 1.5


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.9.8.7", True),
        ("[::1]:5000", True),
        ("registry-1.docker.io", False),
        ("10.0.0.1:5000", False),
        ("localhost.example.com", False),
        ("128.0.0.1", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_plain_http_only_for_loopback_and_named_insecure_hosts() -> None:
    opts = RegistryOptions(insecure_registries=frozenset({"reg.internal:5000", "other.internal"}))
    assert base_url("127.0.0.1:5000", opts) == "http://127.0.0.1:5000"
    assert base_url("reg.internal:5000", opts) == "http://reg.internal:5000"
    assert base_url("other.internal:443", opts) == "http://other.internal:443"
    assert base_url("reg.internal:5001", RegistryOptions()) == "https://reg.internal:5001"
    assert base_url("registry-1.docker.io", opts) == "https://registry-1.docker.io"
    assert base_url("localhost:5000", RegistryOptions(loopback_plain_http=False)) == "https://localhost:5000"
