"""The part of the kubelet's HTTPS API the API server calls for ``pods/log``:
``GET /containerLogs/{namespace}/{pod}/{container}`` with follow, tailLines, timestamps,
limitBytes, sinceSeconds, sinceTime and previous; plus ``/healthz``.

Clients must present a certificate signed by the cluster CA (the API server's kubelet client
certificate); there is no further authorization.
"""

from __future__ import annotations

import datetime as dt
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from dev.node.containers import ContainerState

# (namespace, pod, container) -> the container's state, or None
Finder = Callable[[str, str, str], tuple[ContainerState | None, str]]


class LogRequestError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _records(path: Path, follow: Callable[[], bool], offset: int = 0) -> Iterator[bytes]:
    """Complete CRI log records of ``path`` from ``offset``; keeps reading while ``follow()``."""
    with open(path, "rb") as f:
        f.seek(offset)
        pending = b""
        while True:
            chunk = f.readline()
            if chunk:
                pending += chunk
                if pending.endswith(b"\n"):
                    yield pending
                    pending = b""
                continue
            if not follow():
                # one last read: the attempt may have written its final lines before ending
                rest = f.read()
                if rest:
                    yield from (pending + rest).splitlines(keepends=True)
                return
            time.sleep(0.1)


def render(records: Iterator[bytes], *, timestamps: bool, since: dt.datetime | None, tail: int | None,
           limit: int | None) -> Iterator[bytes]:
    def lines() -> Iterator[bytes]:
        for record in records:
            parts = record.split(b" ", 3)
            if len(parts) < 4:
                continue
            stamp, _stream, tag, content = parts
            if since is not None and _parse_time(stamp.decode()) < since:
                continue
            if tag == b"P" and content.endswith(b"\n"):
                content = content[:-1]
            yield (stamp + b" " + content) if timestamps else content

    source: Iterator[bytes] = lines()
    if tail is not None:
        # tail applies to what exists now; a follow then continues after it
        buffered: list[bytes] = []
        for item in source:
            buffered.append(item)
        source = iter(buffered[-tail:] if tail > 0 else [])
    sent = 0
    for item in source:
        if limit is not None:
            if sent >= limit:
                return
            item = item[: limit - sent]
        sent += len(item)
        yield item


class _Handler(BaseHTTPRequestHandler):
    finder: Finder
    server_version = "kiln-node-agent"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path in ("/healthz", "/readyz", "/livez"):
            self._reply(200, b"ok")
            return
        parts = [unquote(p) for p in url.path.split("/") if p]
        if len(parts) != 4 or parts[0] != "containerLogs":
            self._reply(404, b"404 page not found")
            return
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            self._logs(parts[1], parts[2], parts[3], query)
        except LogRequestError as exc:
            self._reply(exc.status, str(exc).encode())
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _logs(self, ns: str, pod: str, name: str, query: dict[str, str]) -> None:
        container, problem = type(self).finder(ns, pod, name)
        if container is None:
            raise LogRequestError(404, problem)
        previous = query.get("previous") in ("true", "1")
        path = container.previous_log if previous else container.log_path
        if path is None or not path.exists():
            if previous:
                raise LogRequestError(400, f'previous terminated container "{name}" in pod "{pod}" not found')
            raise LogRequestError(
                400, f'container "{name}" in pod "{pod}" is waiting to start: {container.reason or "ContainerCreating"}'
            )
        follow = query.get("follow") in ("true", "1") and not previous
        since = None
        if "sinceTime" in query:
            since = _parse_time(query["sinceTime"])
        elif "sinceSeconds" in query:
            since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=int(query["sinceSeconds"]))
        tail = int(query["tailLines"]) if "tailLines" in query else None
        limit = int(query["limitBytes"]) if "limitBytes" in query else None
        attempt = path

        def keep_following() -> bool:
            return follow and container.log_path == attempt and not container.attempt_done

        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Connection", "close")
        self.end_headers()
        timestamps = query.get("timestamps") in ("true", "1")
        records = _records(path, keep_following)
        if tail is not None and follow:
            # the tail of what exists now, then the rest as it comes
            existing = list(_records(path, lambda: False))
            for item in render(iter(existing), timestamps=timestamps, since=since, tail=tail, limit=limit):
                self.wfile.write(item)
            self.wfile.flush()
            records = _records(path, keep_following, offset=sum(len(r) for r in existing))
            tail = None
        for item in render(records, timestamps=timestamps, since=since, tail=tail, limit=limit):
            self.wfile.write(item)
            self.wfile.flush()


class KubeletServer:
    """ThreadingHTTPServer with TLS on 127.0.0.1 (port 0: the kernel picks one)."""

    def __init__(self, finder: Finder, cert: Path, key: Path, client_ca: Path, port: int = 0) -> None:
        handler = type("Handler", (_Handler,), {"finder": staticmethod(finder)})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="kubelet-server", daemon=True)

    def start(self) -> KubeletServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
