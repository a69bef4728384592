"""HTTP plumbing: client construction, scheme choice, retries with backoff, error translation.

Plain HTTP is used only for loopback hosts (localhost, 127.0.0.0/8, ::1) and hosts the user named
insecure; everything else is HTTPS verified against the system CAs or ``ca_file``.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import logging
import os
import random
import ssl
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from kiln.errors import AuthError, RegistryError
from kiln.registry.options import RegistryOptions

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


class TransientError(RegistryError):
    """A failure worth another try: connection reset or timeout, 429 or 5xx after the retries.

    ``retry_after`` is the server's Retry-After in seconds (uncapped), when it sent one: a caller
    that does not retry in place (the digest poller) schedules its next attempt by it.
    """

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


USER_AGENT = "kiln/0.1"


def split_host(registry: str) -> str:
    """The host part of ``host[:port]`` / ``[v6]:port``, brackets removed."""
    if registry.startswith("["):
        return registry[1 : registry.find("]")]
    return registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry


def is_loopback(registry: str) -> bool:
    host = split_host(registry).lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def uses_plain_http(registry: str, options: RegistryOptions) -> bool:
    if registry in options.insecure_registries or split_host(registry) in options.insecure_registries:
        return True
    return options.loopback_plain_http and is_loopback(registry)


def base_url(api_host: str, options: RegistryOptions) -> str:
    scheme = "http" if uses_plain_http(api_host, options) else "https"
    return f"{scheme}://{api_host}"


class RegistryHTTPClient(httpx.Client):
    """An httpx.Client whose TLS trust (the system CAs, plus ``ca_file``) loads on the first HTTPS request.

    Loading the system CA bundle costs 50-100 ms of CPU in every process, and an operation that
    talks only to plain-HTTP registries (loopback, --insecure-registry) never needs it (Go's
    crypto/x509, hence skopeo, loads it lazily too). Every request passes through :meth:`send`;
    until the trust is loaded the context trusts no CA at all, so a request that somehow skipped
    the load would fail verification, never bypass it.
    """

    def __init__(self, ctx: ssl.SSLContext, ca_file: str | None, **kwargs: Any) -> None:
        super().__init__(verify=ctx, **kwargs)
        self._tls = ctx
        self._ca_file = ca_file
        self._trust_loaded = False
        self._trust_lock = threading.Lock()

    def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        if request.url.scheme == "https" and not self._trust_loaded:
            self._load_trust()
        return super().send(request, **kwargs)

    def _load_trust(self) -> None:
        with self._trust_lock:
            if self._trust_loaded:
                return
            if self._ca_file:
                self._tls.load_verify_locations(cafile=self._ca_file)
            # A private CA bundle adds to the system's trust rather than replacing it.
            self._tls.load_default_certs()
            self._trust_loaded = True


def _client_tls_context() -> ssl.SSLContext:
    """What ssl.create_default_context() returns, before it loads the system CAs."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    if sys.version_info >= (3, 13):
        # The stricter chain checks create_default_context() sets from Python 3.13 on.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT
    keylog = os.environ.get("SSLKEYLOGFILE")
    if keylog and not sys.flags.ignore_environment:
        ctx.keylog_filename = keylog
    return ctx


#: Bytes httpcore asks the socket for per read of a response (its default: 64 KiB). Each read is a
#: trip through httpcore's and h11's Python code, a tenth of a pull's CPU at 64 KiB; 256 KiB reads
#: save most of it. Larger ones save nothing more: every read allocates its full size first.
RESPONSE_READ_SIZE = 256 << 10


def _widen_response_reads() -> None:
    # httpx makes its httpcore connections itself, so the read size can only be set on httpcore's
    # HTTP/1.1 connection class. It changes how much one recv() may return, nothing else, and is
    # only ever raised, so any other httpcore user in the process keeps at least what it had.
    import httpcore

    if httpcore.HTTP11Connection.READ_NUM_BYTES < RESPONSE_READ_SIZE:
        httpcore.HTTP11Connection.READ_NUM_BYTES = RESPONSE_READ_SIZE


def make_http_client(options: RegistryOptions) -> httpx.Client:
    """One pooled client for every host of an operation. Redirects are followed by hand (see send)."""
    _widen_response_reads()
    t = options.timeout
    return RegistryHTTPClient(
        _client_tls_context(),
        str(options.ca_file) if options.ca_file else None,
        timeout=httpx.Timeout(connect=t, read=t, write=t, pool=t),
        limits=httpx.Limits(
            max_connections=options.concurrency * 2 + 4, max_keepalive_connections=options.concurrency * 2
        ),
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,
        trust_env=False,
    )


def parse_retry_after(value: str | None, cap: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), capped; None if absent."""
    if not value:
        return None
    value = value.strip()
    try:
        return min(max(float(value), 0.0), cap)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max((when - datetime.now(UTC)).total_seconds(), 0.0), cap)


class Backoff:
    """Exponential backoff with full jitter; a server's Retry-After wins when it is given."""

    def __init__(self, options: RegistryOptions) -> None:
        self.options = options

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return retry_after
        ceiling = min(self.options.backoff_max, self.options.backoff_base * (2**attempt))
        return random.uniform(ceiling / 2, ceiling)

    def sleep(self, attempt: int, retry_after: float | None = None) -> None:
        time.sleep(self.delay(attempt, retry_after))


def describe_transport_error(e: BaseException) -> str:
    kind = type(e).__name__
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if "WRONG_VERSION_NUMBER" in text:
        text += " (the registry may speak plain HTTP: see --insecure-registry)"
    return f"{kind}: {text}" if text else kind


def send(
    client: httpx.Client,
    build: Callable[[], httpx.Request],
    *,
    options: RegistryOptions,
    what: str,
    stream: bool = False,
    retry: bool = True,
) -> httpx.Response:
    """Send ``build()`` with retries on connection failures and on 429/5xx (honouring Retry-After).

    ``build`` makes a fresh request per attempt, so bodies must be bytes. Redirects are followed
    (GET/HEAD only), with the Authorization header dropped when the host changes. After the last
    attempt a retryable status is returned to the caller; a connection failure raises
    TransientError (RegistryError when retrying cannot help, e.g. a certificate that fails). With ``retry=False`` nothing is retried (non-idempotent upload steps).
    """
    backoff = Backoff(options)
    attempts = options.max_retries + 1 if retry else 1
    for attempt in range(attempts):
        last = attempt == attempts - 1
        try:
            resp = _send_following(client, build(), stream=stream)
        except httpx.TransportError as e:
            if not _retryable_transport_error(e):
                raise RegistryError(f"{what}: {describe_transport_error(e)}") from None
            if last:
                raise TransientError(f"{what}: {describe_transport_error(e)}") from None
            log.info("%s: %s; retrying", what, describe_transport_error(e))
            backoff.sleep(attempt)
            continue
        if resp.status_code in RETRY_STATUSES and not last:
            wait = parse_retry_after(resp.headers.get("Retry-After"), options.retry_after_max)
            resp.close()
            log.info("%s: HTTP %d; retrying", what, resp.status_code)
            backoff.sleep(attempt, wait)
            continue
        return resp
    raise AssertionError("unreachable")


def _retryable_transport_error(e: httpx.TransportError) -> bool:
    if isinstance(e, httpx.UnsupportedProtocol | httpx.ProxyError):
        return False
    # A certificate that does not verify will not verify on the next attempt either.
    text = str(e)
    # (An SSL EOF mid-stream is a dropped connection like any other and stays retryable.)
    return not ("CERTIFICATE_VERIFY_FAILED" in text or "WRONG_VERSION_NUMBER" in text)


def _send_following(client: httpx.Client, request: httpx.Request, *, stream: bool) -> httpx.Response:
    for _ in range(10):
        resp = client.send(request, stream=stream)
        if not resp.is_redirect or request.method not in ("GET", "HEAD"):
            return resp
        location = resp.headers.get("Location")
        if not location:
            return resp
        resp.close()
        target = request.url.join(location)
        headers = dict(request.headers)
        headers.pop("host", None)
        if (
            target.host != request.url.host
            or target.port != request.url.port
            or target.scheme != request.url.scheme
        ):
            # Blob storage behind a redirect gets a signed URL, never our registry credentials.
            headers.pop("authorization", None)
        request = client.build_request(request.method, target, headers=headers)
    raise httpx.UnsupportedProtocol("too many redirects", request=request)


def error_message(resp: httpx.Response, what: str) -> str:
    """One line for a failed response: ``<what>: CODE: message`` from distribution's error JSON."""
    try:
        if not resp.is_stream_consumed:
            resp.read()
        body = json.loads(resp.content) if resp.content else None
    except (json.JSONDecodeError, UnicodeDecodeError, httpx.HTTPError):
        body = None
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        first = errors[0]
        code = str(first.get("code") or f"HTTP {resp.status_code}")
        msg = str(first.get("message") or "").strip().splitlines()[0] if first.get("message") else ""
        extra = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"{what}: {code}: {msg}{extra}" if msg else f"{what}: {code}{extra}"
    reason = resp.reason_phrase or ""
    return f"{what}: HTTP {resp.status_code} {reason}".rstrip()


def raise_for_status(resp: httpx.Response, what: str) -> None:
    """Turn a failed response into RegistryError (AuthError for 401/403)."""
    if resp.is_success:
        return
    msg = error_message(resp, what)
    resp.close()
    if resp.status_code in (401, 403):
        raise AuthError(msg)
    if resp.status_code in RETRY_STATUSES:
        raise TransientError(msg, parse_retry_after(resp.headers.get("Retry-After"), float("inf")))
    raise RegistryError(msg)
