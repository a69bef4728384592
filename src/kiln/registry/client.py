"""Low-level distribution API calls (OCI distribution spec), one repository at a time.

A :class:`Session` owns the HTTP connection pool and the auth state of one operation and hands
out :class:`RegistryClient` objects, each bound to a repository and to the scopes its token
must cover. Every call goes through :func:`kiln.registry.transport.send` (retries, backoff) and
answers a 401 by refreshing its credentials once.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Iterable
from types import TracebackType

import httpx

from kiln.errors import DigestMismatchError, ManifestError, RegistryError
from kiln.oci import mediatypes as mt
from kiln.oci.digest import Digest
from kiln.oci.models import Descriptor
from kiln.registry import credentials
from kiln.registry.auth import Authenticator, CredentialSource, repository_scope
from kiln.registry.options import RegistryOptions
from kiln.registry.reference import DOCKER_HUB, DOCKER_HUB_API, Reference
from kiln.registry.transport import (
    Backoff,
    TransientError,
    base_url,
    describe_transport_error,
    make_http_client,
    raise_for_status,
    send,
)

log = logging.getLogger(__name__)

#: Manifests larger than this are refused (distribution's own limit is 4 MiB).
MAX_MANIFEST_SIZE = 4 << 20
_RANGE_RE = re.compile(r"^(?:bytes=)?(\d+)-(\d+)$")

#: A request body: bytes, or a function returning a fresh iterator of its bytes per attempt.
Body = bytes | Callable[[], Iterable[bytes]]


class Session:
    """HTTP pool plus auth state for one pull, push or copy. Use as a context manager."""

    def __init__(self, options: RegistryOptions, credential_source: CredentialSource | None = None) -> None:
        self.options = options
        self.http = make_http_client(options)

        def lookup(name: str, repository: str) -> credentials.Credential | None:
            return credentials.lookup(name, repository, options)

        self.auth = Authenticator(self.http, options, credential_source or lookup)
        # One /v2/ ping per registry even when several blob threads start at once.
        self.ping_lock = threading.Lock()

    def client(self, ref: Reference, *, push: bool = False, mount_from: Iterable[str] = ()) -> RegistryClient:
        """A client for ``ref``'s repository; ``mount_from`` names repositories to mount blobs from."""
        actions = ("pull", "push") if push else ("pull",)
        scopes = {repository_scope(ref.repository, *actions)}
        scopes.update(repository_scope(r, "pull") for r in mount_from if r != ref.repository)
        return RegistryClient(self, ref.registry, ref.repository, frozenset(scopes))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _media_type(resp: httpx.Response, body: bytes) -> str:
    ct = str(resp.headers.get("Content-Type", "")).split(";", 1)[0].strip()
    if ct in mt.MANIFEST_TYPES or ct in mt.INDEX_TYPES:
        return ct
    try:
        obj: object = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        obj = None
    if isinstance(obj, dict):
        embedded = obj.get("mediaType")
        if isinstance(embedded, str) and embedded:
            return embedded
        return mt.OCI_INDEX if "manifests" in obj else mt.OCI_MANIFEST
    return ct or mt.OCI_MANIFEST


def _digest_of(data: bytes, like: Digest | None) -> Digest:
    if like is not None and like.algorithm != "sha256":
        h = like.hasher()
        h.update(data)
        return Digest(f"{like.algorithm}:{h.hexdigest()}")
    return Digest.of(data)


class RegistryClient:
    """Endpoint calls for one repository. ``what`` arguments name the object in error messages."""

    def __init__(self, session: Session, name: str, repository: str, scopes: frozenset[str]) -> None:
        self.session = session
        self.name = name  # registry as written in references ("docker.io")
        self.host = DOCKER_HUB_API if name == DOCKER_HUB else name
        self.repository = repository
        self.scopes = scopes
        self.base = base_url(self.host, session.options)

    def __repr__(self) -> str:
        return f"RegistryClient({self.name}/{self.repository})"

    @property
    def label(self) -> str:
        return f"{self.name}/{self.repository}"

    def url(self, path: str) -> str:
        return f"{self.base}/v2/{self.repository}/{path}"

    # -- plumbing -----------------------------------------------------------------------------

    def _ping(self, what: str) -> None:
        auth = self.session.auth
        if auth.knows(self.host):
            return
        with self.session.ping_lock:
            if not auth.knows(self.host):
                self._ping_now(what)

    def _ping_now(self, what: str) -> None:
        auth, http = self.session.auth, self.session.http
        resp = send(
            http,
            lambda: http.build_request("GET", f"{self.base}/v2/"),
            options=self.session.options,
            what=what,
        )
        try:
            if resp.status_code == 401:
                auth.learn(self.host, resp)
            elif resp.is_success or resp.status_code == 404:
                # 404: not a distribution v2 root, but maybe still serves repositories; try anonymously.
                auth.learn(self.host, None)
            else:
                raise_for_status(resp, what)
        finally:
            resp.close()

    def request(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        what: str,
        headers: dict[str, str] | None = None,
        content: Body | None = None,
        params: dict[str, str] | None = None,
        stream: bool = False,
        retry: bool = True,
    ) -> httpx.Response:
        """Send with auth; on 401 refresh credentials and try once more. The caller closes the response.

        ``content`` is bytes, or a function returning a fresh iterator of the body's bytes for each
        attempt (a streamed body cannot be replayed); give its Content-Length in ``headers``.
        """
        self._ping(what)
        auth, http = self.session.auth, self.session.http
        for attempt in (0, 1):
            hdrs = dict(headers or {})
            authz = auth.header(self.host, self.name, self.repository, self.scopes, what)
            if authz:
                hdrs["Authorization"] = authz

            def build(h: dict[str, str] = hdrs) -> httpx.Request:
                body = content() if callable(content) else content
                return http.build_request(method, url, headers=h, content=body, params=params)

            resp = send(http, build, options=self.session.options, what=what, stream=stream, retry=retry)
            if resp.status_code == 401 and attempt == 0:
                resp.close()
                auth.learn(self.host, resp)
                auth.invalidate(self.host, self.scopes)
                log.debug("%s: 401, refreshing credentials", what)
                continue
            return resp
        raise AssertionError("unreachable")

    def _location(self, resp: httpx.Response, what: str) -> str:
        loc = resp.headers.get("Location")
        if not loc:
            raise RegistryError(f"{what}: registry answered {resp.status_code} without an upload Location")
        return str(resp.request.url.join(loc))

    # -- manifests ----------------------------------------------------------------------------

    def get_manifest(self, identifier: str, what: str) -> tuple[bytes, str, Digest]:
        """Raw bytes, media type and verified digest of a manifest or index."""
        backoff = Backoff(self.session.options)
        for attempt in range(self.session.options.max_retries + 1):
            resp = self.request(
                "GET",
                self.url(f"manifests/{identifier}"),
                what=what,
                headers={"Accept": mt.ACCEPT_MANIFESTS},
                stream=True,
            )
            try:
                raise_for_status(resp, what)
                chunks: list[bytes] = []
                size = 0
                for chunk in resp.iter_bytes():
                    size += len(chunk)
                    if size > MAX_MANIFEST_SIZE:
                        raise ManifestError(f"{what}: manifest larger than {MAX_MANIFEST_SIZE} bytes")
                    chunks.append(chunk)
                break
            except httpx.TransportError as e:
                # The headers came but the body broke off: a manifest GET is safe to repeat.
                if attempt == self.session.options.max_retries:
                    raise TransientError(
                        f"{what}: reading the manifest: {describe_transport_error(e)}"
                    ) from None
                backoff.sleep(attempt)
            finally:
                resp.close()
        body = b"".join(chunks)
        pinned = Digest(identifier) if identifier.startswith(("sha256:", "sha512:")) else None
        digest = _digest_of(body, pinned)
        if pinned is not None and digest != pinned:
            raise DigestMismatchError(f"{what}: manifest digest mismatch: expected {pinned}, got {digest}")
        announced = resp.headers.get("Docker-Content-Digest")
        if (
            announced
            and announced.startswith("sha256:")
            and digest.algorithm == "sha256"
            and announced != digest
        ):
            raise DigestMismatchError(f"{what}: manifest hashes to {digest}, registry announced {announced}")
        return body, _media_type(resp, body), digest

    def head_manifest(self, identifier: str, what: str) -> Descriptor | None:
        """Descriptor of a manifest without its body; None when the registry does not have it."""
        resp = self.request(
            "HEAD", self.url(f"manifests/{identifier}"), what=what, headers={"Accept": mt.ACCEPT_MANIFESTS}
        )
        try:
            if resp.status_code == 404:
                return None
            raise_for_status(resp, what)
            announced = resp.headers.get("Docker-Content-Digest")
            length = resp.headers.get("Content-Length")
            ct = resp.headers.get("Content-Type", "").split(";", 1)[0].strip()
        finally:
            resp.close()
        if not announced or not length or not (ct in mt.MANIFEST_TYPES or ct in mt.INDEX_TYPES):
            # Not every registry answers HEAD fully; the body tells for sure.
            body, media_type, digest = self.get_manifest(identifier, what)
            return Descriptor(media_type=media_type, digest=digest, size=len(body))
        return Descriptor(media_type=ct, digest=announced, size=int(length))

    def put_manifest(self, identifier: str, data: bytes, media_type: str, what: str) -> Digest:
        resp = self.request(
            "PUT",
            self.url(f"manifests/{identifier}"),
            what=what,
            headers={"Content-Type": media_type},
            content=data,
        )
        try:
            raise_for_status(resp, what)
            announced = resp.headers.get("Docker-Content-Digest")
        finally:
            resp.close()
        digest = Digest.of(data)
        if announced and announced != digest:
            raise RegistryError(f"{what}: registry stored the manifest as {announced}, expected {digest}")
        return digest

    # -- blobs --------------------------------------------------------------------------------

    def blob_size(self, digest: Digest, what: str) -> int | None:
        """The size of a blob the repository has (HEAD), or None."""
        resp = self.request("HEAD", self.url(f"blobs/{digest}"), what=what)
        try:
            if resp.status_code == 404:
                return None
            raise_for_status(resp, what)
            length = resp.headers.get("Content-Length")
        finally:
            resp.close()
        return int(length) if length and length.isdigit() else -1

    def open_blob(self, digest: Digest, what: str, offset: int = 0) -> httpx.Response:
        """A streamed GET of a blob from ``offset`` (redirects followed). 206 means the range was honoured.

        The caller closes the response.
        """
        # Blobs are already compressed; a content coding would also make Range offsets meaningless.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        resp = self.request("GET", self.url(f"blobs/{digest}"), what=what, headers=headers, stream=True)
        if resp.status_code not in (200, 206):
            raise_for_status(resp, what)
        return resp

    def start_upload(
        self, what: str, *, mount: Digest | None = None, mount_from: str | None = None
    ) -> str | None:
        """POST an upload. Returns its Location, or None when the blob was mounted (201)."""
        params = {"mount": str(mount), "from": mount_from} if mount and mount_from else None
        resp = self.request("POST", self.url("blobs/uploads/"), what=what, params=params, content=b"")
        try:
            if resp.status_code == 201 and params:
                return None
            if resp.status_code != 202:
                raise_for_status(resp, what)
                raise RegistryError(f"{what}: unexpected HTTP {resp.status_code} starting an upload")
            return self._location(resp, what)
        finally:
            resp.close()

    def patch_upload(
        self, location: str, data: Body, start: int, what: str, *, length: int | None = None
    ) -> str:
        """Append ``data`` at ``start``; returns the next Location. Not retried: see upload_status.

        ``data`` is bytes, or a body function (see :meth:`request`) yielding exactly ``length`` bytes,
        so a chunk streams from its source without being held in memory.
        """
        if isinstance(data, bytes):
            length = len(data)
        elif length is None:
            raise ValueError("a streamed chunk needs its length")
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(length),
            "Content-Range": f"{start}-{start + length - 1}",
        }
        resp = self.request("PATCH", location, what=what, headers=headers, content=data, retry=False)
        try:
            if resp.status_code != 202:
                raise_for_status(resp, what)
                raise RegistryError(f"{what}: unexpected HTTP {resp.status_code} for an upload chunk")
            return self._location(resp, what)
        finally:
            resp.close()

    def upload_status(self, location: str, what: str) -> tuple[str, int | None] | None:
        """(Location, bytes the server holds) of an upload; None when the upload is gone or invalid.

        The offset is None when the answer is ambiguous (``Range: 0-0`` is 0 or 1 byte).
        """
        resp = self.request("GET", location, what=what)
        try:
            if resp.status_code in (400, 404):
                return None
            raise_for_status(resp, what)
            new_location = self._location(resp, what)
            m = _RANGE_RE.match(resp.headers.get("Range", "").strip())
        finally:
            resp.close()
        if m is None:
            return new_location, None
        end = int(m.group(2))
        return new_location, None if end == 0 else end + 1

    def finish_upload(self, location: str, digest: Digest, data: bytes, what: str) -> None:
        url = httpx.URL(location).copy_merge_params({"digest": str(digest)})
        headers = {"Content-Type": "application/octet-stream"}
        resp = self.request("PUT", url, what=what, headers=headers, content=data, retry=False)
        try:
            if resp.status_code not in (201, 204):
                raise_for_status(resp, what)
                raise RegistryError(f"{what}: unexpected HTTP {resp.status_code} completing an upload")
        finally:
            resp.close()

    def cancel_upload(self, location: str, what: str) -> None:
        try:
            self.request("DELETE", location, what=what, retry=False).close()
        except RegistryError:
            pass  # best effort: the registry purges abandoned uploads itself
