"""The controller's one HTTP endpoint for build triggers, served from a background thread.

    POST /webhooks/<namespace>/<buildconfig>/<kind>   -> on_webhook(namespace, name, kind, headers, body)
    POST /notifications                               -> on_push([PushEvent, ...])  (registry events)
    GET  /healthz                                     -> 200 "ok"

    server = TriggerServer(("0.0.0.0", 8443), on_webhook=..., on_push=..., notification_token=tok,
                           tls=("tls.crt", "tls.key"))
    port = server.start(); ...; server.stop()

The server checks framing only (routes, lengths, the registry's bearer token); what a webhook may
do is on_webhook's decision, because its secret belongs to the BuildConfig. Both callbacks run on
the request's thread and must return quickly: senders time out and then deliver again. Bodies,
query strings and secrets never reach the log.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from kiln.cluster.triggers.notifications import ENVELOPE_MEDIA_TYPE, PushEvent, push_events
from kiln.cluster.triggers.webhooks import WebhookKind

log = logging.getLogger("kiln.triggers")

OnWebhook = Callable[[str, str, str, Mapping[str, str], bytes], tuple[int, dict[str, Any]]]
OnPush = Callable[[list[PushEvent]], None]

# Kubernetes object names (DNS-1123 subdomains); anything else cannot name a BuildConfig.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_KINDS = frozenset(kind.value for kind in WebhookKind)
_CHUNK = 64 * 1024
_BUSY_BODY = b'{"message":"too many connections; try again","status":"Failure"}'
_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)


class _Reply(Exception):
    def __init__(self, status: int, message: str, *, allow: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = allow


@dataclass(frozen=True)
class _Settings:
    on_webhook: OnWebhook
    on_push: OnPush
    notification_token: bytes | None
    max_body: int
    read_timeout: float
    health: Callable[[], str | None] | None
    max_connections: int


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stuck handler must not keep the controller process alive

    def __init__(self, listen: tuple[str, int], settings: _Settings) -> None:
        self.address_family = socket.AF_INET6 if ":" in listen[0] else socket.AF_INET
        self.settings = settings
        # Each connection has a thread; past the cap a connection is answered 503 and closed at once,
        # so a flood of slow clients cannot make the controller start threads without end.
        self._slots = threading.BoundedSemaphore(settings.max_connections)
        super().__init__(listen, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("%s: %d connections open already; answered 503", client_address[0], self.settings.max_connections)
            with contextlib.suppress(OSError):
                request.settimeout(1.0)
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Failed TLS handshakes and dropped connections are the client's business, not a traceback.
        log.debug("connection from %s failed", client_address[0], exc_info=True)


def _printable(text: str, limit: int = 200) -> str:
    return "".join(c if c.isprintable() else "?" for c in text[:limit])


def _body(status: int, message: str) -> dict[str, Any]:
    return {"status": "Success" if status < 400 else "Failure", "message": message}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # One request per connection: an idle keep-alive connection would pin a thread.
    protocol_version = "HTTP/1.0"
    server_version = "kiln-triggers"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        # Bounds each read of the request line and headers; _read_body sets its own deadline.
        self.connection.settimeout(self.server.settings.read_timeout)
        if isinstance(self.connection, ssl.SSLSocket):
            # The listening socket defers handshakes to here, so a slow client blocks only its thread.
            self.connection.do_handshake()

    # ---- responses and the one log line per request ---------------------------------------
    def _send(self, status: int, payload: dict[str, Any] | bytes, *, allow: str | None = None) -> None:
        is_json = isinstance(payload, dict)
        data = json.dumps(payload).encode() + b"\n" if isinstance(payload, dict) else payload
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if is_json else "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        if allow is not None:
            self.send_header("Allow", allow)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Malformed request lines and header timeouts get the same JSON shape as everything else.
        self.close_connection = True
        self._send(code, _body(code, message or HTTPStatus(code).phrase))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = _printable(urlsplit(getattr(self, "path", "") or "").path)
        log.info("%s %s %s -> %s", self.client_address[0], self.command or "-", path, int(code))

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)

    # ---- routing --------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_OPTIONS(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            status, payload = self._route(urlsplit(self.path).path)
        except _Reply as reply:
            self.close_connection = True
            self._send(reply.status, _body(reply.status, reply.message), allow=reply.allow)
            return
        except Exception:
            log.exception("%s %s failed", self.command, _printable(urlsplit(self.path).path))
            self._send(500, _body(500, "internal error"))
            return
        self._send(status, payload)

    def _route(self, path: str) -> tuple[int, dict[str, Any] | bytes]:
        parts = path.split("/")
        if path == "/healthz":
            self._allow("GET", "HEAD")
            problem = self.server.settings.health() if self.server.settings.health else None
            if problem is not None:
                raise _Reply(503, problem)
            return 200, b"ok\n"
        if path == "/notifications":
            self._allow("POST")
            return self._notifications()
        if len(parts) == 5 and parts[1] == "webhooks" and parts[4] in _KINDS:
            namespace, name = parts[2], parts[3]
            if _NAME.fullmatch(namespace) and _NAME.fullmatch(name):
                self._allow("POST")
                return self._webhook(namespace, name, parts[4])
        raise _Reply(404, "not found")

    def _allow(self, *methods: str) -> None:
        if self.command not in methods:
            raise _Reply(405, f"use {' or '.join(methods)}", allow=", ".join(methods))

    # ---- the two POST endpoints -----------------------------------------------------------
    def _webhook(self, namespace: str, name: str, kind: str) -> tuple[int, dict[str, Any]]:
        body = self._read_body()
        headers = dict(self.headers.items())
        status, payload = self.server.settings.on_webhook(namespace, name, kind, headers, body)
        if not 200 <= status <= 599:
            raise ValueError(f"on_webhook returned HTTP status {status}")
        return status, payload

    def _notifications(self) -> tuple[int, dict[str, Any]]:
        token = self.server.settings.notification_token
        if token is not None:
            offered = (self.headers.get("Authorization") or "").strip().encode("latin-1", "replace")
            if not hmac.compare_digest(offered, b"Bearer " + token):
                raise _Reply(401, "missing or invalid bearer token")
        media_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if media_type not in (ENVELOPE_MEDIA_TYPE, "application/json"):
            raise _Reply(415, f"the body must be {ENVELOPE_MEDIA_TYPE}")
        body = self._read_body()
        try:
            events = push_events(body)
        except ValueError as exc:
            raise _Reply(400, str(exc)) from None
        if events:
            self.server.settings.on_push(events)
        return 200, _body(200, f"{len(events)} manifest push(es) accepted")

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise _Reply(411, "chunked bodies are not accepted; send Content-Length")
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise _Reply(411, "Content-Length is required")
        if not raw.strip().isdigit():
            raise _Reply(400, "invalid Content-Length")
        length, limit = int(raw), self.server.settings.max_body
        if length > limit:
            # Refused from the header alone: the body is never read, the connection just closes.
            raise _Reply(413, f"the body is larger than {limit} bytes")
        # One deadline for the whole body: a per-read timeout would let a client that trickles a
        # byte at a time hold this thread indefinitely.
        deadline = time.monotonic() + self.server.settings.read_timeout
        chunks: list[bytes] = []
        left = length
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Reply(408, "the body did not arrive in time")
            self.connection.settimeout(remaining)
            try:
                chunk = self.rfile.read1(min(left, _CHUNK))
            except TimeoutError:
                raise _Reply(408, "the body did not arrive in time") from None
            if not chunk:
                raise _Reply(400, "the body ended before Content-Length bytes")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)


class TriggerServer:
    """Webhooks and registry notifications on one listener; see the module docstring."""

    def __init__(
        self,
        listen: tuple[str, int],
        *,
        on_webhook: OnWebhook,
        on_push: OnPush,
        notification_token: str | None,
        max_body: int = 5 * 1024 * 1024,
        tls: tuple[str, str] | None = None,
        read_timeout: float = 10.0,
        health: Callable[[], str | None] | None = None,
        max_connections: int = 64,
    ) -> None:
        """``health`` answers /healthz: None while all is well, else what is wrong (503).
        ``max_connections``: connections served at once; more are answered 503 at once."""
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if notification_token == "":
            # "Bearer " with nothing after it would be a password everybody knows.
            raise ValueError("notification_token is empty; pass None to accept notifications unauthenticated")
        self._listen = listen
        self._tls = tls
        self._settings = _Settings(
            on_webhook=on_webhook,
            on_push=on_push,
            notification_token=None if notification_token is None else notification_token.encode(),
            max_body=max_body,
            read_timeout=read_timeout,
            health=health,
            max_connections=max_connections,
        )
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind, serve from a daemon thread, and return the bound port (`listen` may ask for 0)."""
        if self._server is not None:
            raise RuntimeError("the trigger server is already running")
        server = _Server(self._listen, self._settings)
        if self._tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(*self._tls)
            server.socket = context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        # shutdown() waits up to one poll interval; 0.2 s keeps stop() prompt at negligible cost.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="kiln-triggers", daemon=True
        )
        self._thread.start()
        log.info("trigger server listening on %s", self.url)
        return self.port

    def stop(self) -> None:
        """Stop accepting and close the listener; requests in flight finish on their own threads."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=10)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the trigger server is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Where clients on this host reach the server, e.g. "https://127.0.0.1:8443"."""
        host = self._listen[0]
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"{'https' if self._tls else 'http'}://{host}:{self.port}"

    def __enter__(self) -> TriggerServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
