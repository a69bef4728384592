"""The trigger server over real sockets on 127.0.0.1, and a real docker-registry notifying it.

Webhook callbacks here do what the controller's will: verify() and parse() the delivery and
answer with a status, so a request goes through the whole real path. Framing tests that httpx
would not produce (no Content-Length, a body that never arrives) use a raw socket.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiln.cluster.triggers.notifications import ENVELOPE_MEDIA_TYPE, MANIFEST_MEDIA_TYPES, PushEvent
from kiln.cluster.triggers.server import TriggerServer
from kiln.cluster.triggers.webhooks import WebhookRejected, parse, verify
from tests.cluster.test_webhooks import SECRET, SHA, dumps, envelope_event, github_push, sign
from tests.fixtures.images import make_busybox_oci_layout, push_with_skopeo
from tests.fixtures.registry import Registry, notifications_to, write_tls_material

TOKEN = "notify-" + "t0ken" * 6
MAX_BODY = 64 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class Recorder:
    """Callbacks that record their arguments; the webhook one answers like the controller's."""

    def __init__(self) -> None:
        self.webhooks: list[tuple[str, str, str, dict[str, str], bytes]] = []
        self.pushes: list[PushEvent] = []
        self.push_calls = 0
        self.fail_with: Exception | None = None
        self._cond = threading.Condition()

    def on_webhook(
        self, namespace: str, name: str, kind: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        with self._cond:
            self.webhooks.append((namespace, name, kind, dict(headers), body))
        if self.fail_with is not None:
            raise self.fail_with
        try:
            verify(kind, headers, body, SECRET)
            event = parse(kind, headers, body)
        except WebhookRejected as exc:
            return exc.status, {"status": "Failure", "message": exc.message}
        return 202, {"status": "Success", "message": f"build of {event.commit} for {namespace}/{name}"}

    def on_push(self, events: list[PushEvent]) -> None:
        with self._cond:
            self.push_calls += 1
            self.pushes.extend(events)
            self._cond.notify_all()

    def wait_for_push(self, match: Callable[[PushEvent], bool], timeout: float) -> PushEvent | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = next((e for e in self.pushes if match(e)), None)
                remaining = deadline - time.monotonic()
                if found is not None or remaining <= 0:
                    return found
                self._cond.wait(remaining)


ServerFactory = Callable[..., tuple[TriggerServer, Recorder]]


@pytest.fixture
def make_server() -> Iterator[ServerFactory]:
    started: list[TriggerServer] = []

    def factory(**kwargs: Any) -> tuple[TriggerServer, Recorder]:
        recorder = Recorder()
        options: dict[str, Any] = {"notification_token": TOKEN, "max_body": MAX_BODY, **kwargs}
        server = TriggerServer(
            ("127.0.0.1", 0), on_webhook=recorder.on_webhook, on_push=recorder.on_push, **options
        )
        server.start()
        started.append(server)
        return server, recorder

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def served(make_server: ServerFactory) -> tuple[TriggerServer, Recorder]:
    return make_server()


def raw_request(port: int, data: bytes, *, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    """Send bytes as they are, read until the server closes; (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def github_delivery(payload: dict[str, Any] | None = None) -> tuple[bytes, dict[str, str]]:
    body = dumps(payload or github_push())
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": "72d3162e-cc78-11e3-81ab-4c9367dc0958",
        "X-Hub-Signature-256": sign(body),
    }
    return body, headers


def envelope(*events: dict[str, Any]) -> bytes:
    return dumps({"events": list(events)})


NOTIFY_HEADERS = {"Content-Type": ENVELOPE_MEDIA_TYPE, "Authorization": f"Bearer {TOKEN}"}


# ---- routes ---------------------------------------------------------------------------------


def test_healthz(served: tuple[TriggerServer, Recorder]) -> None:
    server, _ = served
    assert server.url == f"http://127.0.0.1:{server.port}"
    response = httpx.get(f"{server.url}/healthz")
    assert (response.status_code, response.text) == (200, "ok\n")
    assert httpx.head(f"{server.url}/healthz").status_code == 200
    post = httpx.post(f"{server.url}/healthz")
    assert post.status_code == 405 and post.headers["Allow"] == "GET, HEAD"
    assert post.json()["status"] == "Failure"


def test_healthz_reports_what_the_health_check_says_is_stuck() -> None:
    problem: list[str] = []
    server = TriggerServer(("127.0.0.1", 0), on_webhook=Recorder().on_webhook, on_push=lambda _e: None, notification_token=None,
                           health=lambda: problem[0] if problem else None)  # fmt: skip
    server.start()
    try:
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        problem.append("resync in flight for 301 s")
        stuck = httpx.get(f"{server.url}/healthz")
        assert stuck.status_code == 503
        assert stuck.json() == {"status": "Failure", "message": "resync in flight for 301 s"}
        problem.clear()
        assert httpx.get(f"{server.url}/healthz").text == "ok\n"
    finally:
        server.stop()


def test_a_signed_webhook_reaches_the_callback(served: tuple[TriggerServer, Recorder]) -> None:
    server, recorder = served
    body, headers = github_delivery()
    response = httpx.post(f"{server.url}/webhooks/team-a/app.web/github", content=body, headers=headers)
    assert response.status_code == 202
    assert response.json() == {"status": "Success", "message": f"build of {SHA} for team-a/app.web"}
    [(namespace, name, kind, seen_headers, seen_body)] = recorder.webhooks
    assert (namespace, name, kind, seen_body) == ("team-a", "app.web", "github", body)
    lowered = {k.lower(): v for k, v in seen_headers.items()}
    assert lowered["x-github-event"] == "push"
    assert lowered["x-hub-signature-256"] == headers["X-Hub-Signature-256"]


def test_the_callbacks_status_is_returned(served: tuple[TriggerServer, Recorder]) -> None:
    server, _ = served
    body, headers = github_delivery()
    headers["X-Hub-Signature-256"] = sign(body, b"not the secret")
    response = httpx.post(f"{server.url}/webhooks/ns/app/github", content=body, headers=headers)
    assert response.status_code == 401
    assert response.json()["status"] == "Failure"
    gitlab = httpx.post(
        f"{server.url}/webhooks/ns/app/gitlab",
        content=b"{",
        headers={
            "X-Gitlab-Token": SECRET.decode(),
            "X-Gitlab-Event": "Push Hook",
            "Content-Type": "application/json",
        },
    )
    assert gitlab.status_code == 400


@pytest.mark.parametrize(
    "path",
    [
        "/webhooks/ns/app/gitea",
        "/webhooks/ns/app/GitHub",
        "/webhooks/ns/app",
        "/webhooks/ns/app/github/extra",
        "/webhooks/NS/app/github",
        "/webhooks/ns/-app/github",
        "/webhooks/ns/a%2Fb/github",
        "/webhook/ns/app/github",
        "/",
    ],
)
def test_unknown_paths_are_404(served: tuple[TriggerServer, Recorder], path: str) -> None:
    server, recorder = served
    body, headers = github_delivery()
    response = httpx.post(f"{server.url}{path}", content=body, headers=headers)
    assert response.status_code == 404
    assert response.json() == {"status": "Failure", "message": "not found"}
    assert recorder.webhooks == []


def test_wrong_methods_are_405(served: tuple[TriggerServer, Recorder]) -> None:
    server, recorder = served
    for method, path in (
        ("GET", "/webhooks/ns/app/github"),
        ("PUT", "/notifications"),
        ("DELETE", "/healthz"),
    ):
        response = httpx.request(method, f"{server.url}{path}")
        assert response.status_code == 405, (method, path)
    assert recorder.webhooks == [] and recorder.push_calls == 0


def test_a_failing_callback_is_500_without_details(served: tuple[TriggerServer, Recorder]) -> None:
    server, recorder = served
    recorder.fail_with = RuntimeError("kube API said: secret value xyz")
    body, headers = github_delivery()
    response = httpx.post(f"{server.url}/webhooks/ns/app/github", content=body, headers=headers)
    assert response.status_code == 500
    assert response.json() == {"status": "Failure", "message": "internal error"}


# ---- framing --------------------------------------------------------------------------------


def test_content_length_is_required(served: tuple[TriggerServer, Recorder]) -> None:
    server, recorder = served
    status, body = raw_request(server.port, b"POST /webhooks/ns/app/generic HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 411 and "Content-Length" in body["message"]

    def chunks() -> Iterator[bytes]:
        yield b"{}"

    chunked = httpx.post(f"{server.url}/webhooks/ns/app/generic", content=chunks())
    assert chunked.status_code == 411
    status, _ = raw_request(
        server.port, b"POST /webhooks/ns/app/generic HTTP/1.1\r\nHost: x\r\nContent-Length: 1_0\r\n\r\n"
    )
    assert status == 400
    assert recorder.webhooks == []


def test_too_large_is_413_before_the_body_is_read(served: tuple[TriggerServer, Recorder]) -> None:
    server, recorder = served
    # Only the headers are sent: had the server waited for the body, recv() would time out.
    for path in ("/webhooks/ns/app/github", "/notifications"):
        request = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n"
        ).encode()
        started = time.monotonic()
        status, body = raw_request(server.port, request, timeout=5)
        assert status == 413 and str(MAX_BODY) in body["message"]
        assert time.monotonic() - started < 4
    assert recorder.webhooks == []
    # Exactly max_body is fine.
    at_limit = b" " * (MAX_BODY - 2) + b"{}"
    response = httpx.post(
        f"{server.url}/webhooks/ns/app/generic",
        content=at_limit,
        headers={"Content-Type": "application/json", "X-Kiln-Webhook-Secret": SECRET.decode()},
    )
    assert response.status_code == 202


def test_connections_past_the_cap_are_answered_503_at_once(make_server: ServerFactory) -> None:
    server, _ = make_server(max_connections=2, read_timeout=30.0)
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]
    try:
        time.sleep(0.3)  # both accepted, each holding a thread that waits for a request line
        started = time.monotonic()
        busy = httpx.get(f"{server.url}/healthz", timeout=10)
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        assert busy.json()["status"] == "Failure"
        assert time.monotonic() - started < 5  # not queued behind the idle ones (their read timeout is 30 s)
    finally:
        for sock in idle:
            sock.close()

    def served_again() -> bool:
        return httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200

    deadline = time.monotonic() + 10
    while not served_again():  # the idle connections' threads end once their sockets close
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_slow_body_times_out_on_one_deadline(make_server: ServerFactory) -> None:
    server, recorder = make_server(read_timeout=1.0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /webhooks/ns/app/generic HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        started = time.monotonic()
        # A byte every 0.3 s never lets a single read wait 1 s; the whole body still must.
        response = b""
        sock.settimeout(0.3)
        for _ in range(30):
            try:
                sock.sendall(b" ")
            except OSError:
                break
            try:
                response = sock.recv(65536)
                break
            except TimeoutError:
                continue
        elapsed = time.monotonic() - started
    assert response.startswith(b"HTTP/1.0 408"), response[:40]
    assert 0.9 < elapsed < 5
    assert recorder.webhooks == []


# ---- notifications --------------------------------------------------------------------------


def test_notifications_require_the_bearer_token(served: tuple[TriggerServer, Recorder]) -> None:
    server, recorder = served
    body = envelope(envelope_event("push", OCI_MANIFEST, tag="v1"))
    url = f"{server.url}/notifications"
    for authorization in (
        None,
        f"Bearer {TOKEN[:-1]}x",
        f"Bearer {TOKEN}x",
        f"Basic {TOKEN}",
        TOKEN,
        "Bearer",
    ):
        headers = {"Content-Type": ENVELOPE_MEDIA_TYPE}
        if authorization is not None:
            headers["Authorization"] = authorization
        response = httpx.post(url, content=body, headers=headers)
        assert response.status_code == 401, authorization
        assert TOKEN not in response.text
    assert recorder.push_calls == 0


def test_notifications_are_parsed_and_passed_on(served: tuple[TriggerServer, Recorder]) -> None:
    server, recorder = served
    url = f"{server.url}/notifications"
    blobs_only = envelope(envelope_event("push", "application/octet-stream"))
    response = httpx.post(url, content=blobs_only, headers=NOTIFY_HEADERS)
    assert response.status_code == 200 and recorder.push_calls == 0
    body = envelope(
        envelope_event("push", "application/octet-stream"),
        envelope_event("push", OCI_MANIFEST, tag="v1"),
    )
    response = httpx.post(url, content=body, headers=NOTIFY_HEADERS)
    assert response.status_code == 200
    assert response.json()["status"] == "Success"
    assert recorder.push_calls == 1
    [event] = recorder.pushes
    assert (event.registry_host, event.repository, event.tag, event.media_type) == (
        "192.168.100.227:5000",
        "hello-world",
        "v1",
        OCI_MANIFEST,
    )


def test_malformed_notifications(served: tuple[TriggerServer, Recorder]) -> None:
    server, recorder = served
    url = f"{server.url}/notifications"
    assert httpx.post(url, content=b'{"events": 1}', headers=NOTIFY_HEADERS).status_code == 400
    text = {**NOTIFY_HEADERS, "Content-Type": "text/plain"}
    assert httpx.post(url, content=envelope(), headers=text).status_code == 415
    assert recorder.push_calls == 0


def test_without_a_token_notifications_are_open(make_server: ServerFactory) -> None:
    server, recorder = make_server(notification_token=None)
    body = envelope(envelope_event("push", OCI_MANIFEST, tag="v1"))
    response = httpx.post(
        f"{server.url}/notifications", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200 and recorder.push_calls == 1


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        TriggerServer(
            ("127.0.0.1", 0),
            on_webhook=Recorder().on_webhook,
            on_push=Recorder().on_push,
            notification_token="",
        )


# ---- logging --------------------------------------------------------------------------------


def test_one_log_line_per_request_without_secrets(
    served: tuple[TriggerServer, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = served
    caplog.set_level(logging.DEBUG, logger="kiln.triggers")
    body, headers = github_delivery({**github_push(), "marker": "BODY-MARKER"})
    httpx.post(f"{server.url}/webhooks/ns/app/github?token=QUERY-SECRET", content=body, headers=headers)
    httpx.post(f"{server.url}/notifications", content=envelope(), headers=NOTIFY_HEADERS)
    httpx.get(f"{server.url}/nope")
    lines = [
        r.getMessage() for r in caplog.records if r.name == "kiln.triggers" and r.levelno == logging.INFO
    ]
    assert len(lines) == 3, lines
    assert lines[0].endswith("POST /webhooks/ns/app/github -> 202")
    assert lines[1].endswith("POST /notifications -> 200")
    assert lines[2].endswith("GET /nope -> 404")
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for secret in (SECRET.decode(), TOKEN, "QUERY-SECRET", "BODY-MARKER", headers["X-Hub-Signature-256"]):
        assert secret not in everything


# ---- TLS ------------------------------------------------------------------------------------


def test_tls(make_server: ServerFactory, tmp_path: Path) -> None:
    ca_file, cert_file, key_file = write_tls_material(tmp_path / "tls")
    server, recorder = make_server(tls=(str(cert_file), str(key_file)), read_timeout=5.0)
    assert server.url.startswith("https://127.0.0.1:")
    trust = ssl.create_default_context(cafile=str(ca_file))
    # A client that connects and never says hello must hold only its own thread.
    with socket.create_connection(("127.0.0.1", server.port)):
        started = time.monotonic()
        assert httpx.get(f"{server.url}/healthz", verify=trust).text == "ok\n"
        assert time.monotonic() - started < 4
    body, headers = github_delivery()
    response = httpx.post(f"{server.url}/webhooks/ns/app/github", content=body, headers=headers, verify=trust)
    assert response.status_code == 202 and recorder.webhooks[0][4] == body
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz")  # the throwaway CA is not in the system store


# ---- a real registry ------------------------------------------------------------------------


def test_a_real_registry_push_notifies_the_server(make_server: ServerFactory, tmp_path: Path) -> None:
    server, recorder = make_server()
    image = make_busybox_oci_layout(tmp_path / "layout", tag="v1")
    overrides = notifications_to(f"{server.url}/notifications", TOKEN, backoff="500ms")
    with Registry.plain(tmp_path / "registry", config_overrides=overrides) as reg:
        push_with_skopeo(image.layout, reg, "team/notified:v1")
        event = recorder.wait_for_push(lambda e: (e.repository, e.tag) == ("team/notified", "v1"), timeout=20)
        assert event is not None, f"no push event; got {recorder.pushes}\n{reg.log_tail()}"
        head = httpx.head(
            f"{reg.url}/v2/team/notified/manifests/v1",
            headers={"Accept": ", ".join(sorted(MANIFEST_MEDIA_TYPES))},
        )
        assert head.status_code == 200
        assert event.digest == head.headers["Docker-Content-Digest"]
        assert event.media_type == head.headers["Content-Type"]
        assert event.registry_host == reg.host
    # Layer and config blobs were announced too, and filtered out.
    assert all(e.media_type in MANIFEST_MEDIA_TYPES for e in recorder.pushes)
    assert {(e.repository, e.tag) for e in recorder.pushes} == {("team/notified", "v1")}
