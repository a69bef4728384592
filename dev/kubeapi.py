"""A small JSON client for the Kubernetes API (httpx), from a kubeconfig with client certificates.

The node agent and the cluster launcher use it; tests may use lightkube on the same kubeconfig.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

Obj = dict[str, Any]
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


class ApiError(RuntimeError):
    def __init__(self, status: int, body: str, what: str) -> None:
        self.status = status
        self.body = body
        try:
            self.reason = str(json.loads(body).get("reason", ""))
            self.message = str(json.loads(body).get("message", body))
        except ValueError:
            self.reason, self.message = "", body
        super().__init__(f"{what}: HTTP {status}: {self.message}")


def _ssl_context(kubeconfig: Path) -> tuple[str, ssl.SSLContext]:
    config = yaml.safe_load(kubeconfig.read_text())
    ctx_name = config.get("current-context")
    context = next(c["context"] for c in config["contexts"] if c["name"] == ctx_name)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
    ctx = ssl.create_default_context()
    if "certificate-authority-data" in cluster:
        ctx.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    elif "certificate-authority" in cluster:
        ctx.load_verify_locations(cafile=cluster["certificate-authority"])
    if "client-certificate-data" in user:
        # ssl only loads client keys from files: a private temp file, removed at once.
        with tempfile.TemporaryDirectory(prefix="kiln-kubeapi-") as tmp:
            cert, key = Path(tmp) / "c", Path(tmp) / "k"
            cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
            fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(base64.b64decode(user["client-key-data"]))
            ctx.load_cert_chain(cert, key)
    elif "client-certificate" in user:
        ctx.load_cert_chain(user["client-certificate"], user["client-key"])
    return str(cluster["server"]).rstrip("/"), ctx


class KubeApi:
    def __init__(self, kubeconfig: Path, *, timeout: float = 30.0) -> None:
        self.server, ctx = _ssl_context(Path(kubeconfig))
        self._http = httpx.Client(base_url=self.server, verify=ctx, timeout=timeout)
        self._stream_http = httpx.Client(base_url=self.server, verify=ctx, timeout=httpx.Timeout(timeout, read=None))

    def close(self) -> None:
        self._http.close()
        self._stream_http.close()

    def __enter__(self) -> KubeApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, body: Obj | None = None, *, content_type: str = "application/json",
                params: dict[str, str] | None = None) -> Obj:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        resp = self._http.request(method, path, content=data, headers=headers, params=params)
        if resp.status_code >= 300:
            raise ApiError(resp.status_code, resp.text, f"{method} {path}")
        if not resp.content:
            return {}
        result: Obj = resp.json()
        return result

    def get(self, path: str, params: dict[str, str] | None = None) -> Obj:
        return self.request("GET", path, params=params)

    def get_or_none(self, path: str) -> Obj | None:
        try:
            return self.get(path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    def create(self, path: str, body: Obj) -> Obj:
        return self.request("POST", path, body)

    def patch(self, path: str, body: Obj, patch_type: str = MERGE) -> Obj:
        return self.request("PATCH", path, body, content_type=patch_type)

    def replace(self, path: str, body: Obj) -> Obj:
        return self.request("PUT", path, body)

    def delete(self, path: str, body: Obj | None = None) -> Obj:
        return self.request("DELETE", path, body)

    def text(self, path: str, params: dict[str, str] | None = None) -> str:
        resp = self._http.get(path, params=params)
        if resp.status_code >= 300:
            raise ApiError(resp.status_code, resp.text, f"GET {path}")
        return resp.text

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 60) -> Iterator[Obj]:
        """Events ({"type", "object"}) of a watch from ``resource_version`` until the server ends it."""
        params = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        with self._stream_http.stream("GET", path, params=params) as resp:
            if resp.status_code >= 300:
                resp.read()
                raise ApiError(resp.status_code, resp.text, f"WATCH {path}")
            for line in resp.iter_lines():
                if line.strip():
                    yield json.loads(line)


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, *, user: str = "kiln-admin",
                     embed: bool = True) -> None:
    """A kubeconfig with one cluster/user/context ("kiln-dev"); written atomically, mode 0600."""
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    cluster: Obj = {"server": server}
    creds: Obj = {}
    if embed:
        cluster["certificate-authority-data"] = b64(ca)
        creds = {"client-certificate-data": b64(cert), "client-key-data": b64(key)}
    else:
        cluster["certificate-authority"] = str(ca)
        creds = {"client-certificate": str(cert), "client-key": str(key)}
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kiln-dev", "cluster": cluster}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": "kiln-dev", "context": {"cluster": "kiln-dev", "user": user, "namespace": "default"}}],
        "current-context": "kiln-dev",
        "preferences": {},
    }
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    os.replace(tmp, path)
