"""`ADD <url>`: downloading a remote file once per build, verified before anything uses it.

The body goes to a temporary file while it is hashed, so a `--checksum` mismatch is known
before a single layer entry is written and a large download never sits in memory. As in
BuildKit the file is named after the last segment of the URL path (`__unnamed__` when there is
none), gets mode 0600 and, when the server sends Last-Modified, that time as its mtime.
Remote archives are never extracted.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import os
import posixpath
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

from kiln.errors import KilnError
from kiln.oci.digest import BLOCK_SIZE

#: Algorithms `--checksum` accepts (those of the OCI digest grammar that hashlib has).
CHECKSUM_ALGORITHMS = ("sha256", "sha384", "sha512")


class FetchError(KilnError):
    """A URL that could not be downloaded or whose content did not match its checksum."""


@dataclass(frozen=True)
class Fetched:
    url: str
    path: Path  # the downloaded body, owned by the fetcher
    size: int
    sha256: str  # hex, always computed (it is the cache key of the content)
    filename: str
    mtime: int | None  # from Last-Modified


def url_filename(url: str) -> str:
    """The file name BuildKit gives a download: the URL path's last segment."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    base = posixpath.basename(path.rstrip("/")) if path not in ("", "/") else ""
    return base if base not in ("", ".", "..") else "__unnamed__"


def parse_checksum(checksum: str) -> tuple[str, str]:
    algo, sep, hexpart = checksum.partition(":")
    hexpart = hexpart.lower()
    size = {"sha256": 64, "sha384": 96, "sha512": 128}.get(algo)
    if not sep or size is None or len(hexpart) != size or any(c not in "0123456789abcdef" for c in hexpart):
        raise FetchError(
            f"invalid checksum {checksum!r}: expected <algorithm>:<hex> with one of {', '.join(CHECKSUM_ALGORITHMS)}"
        )
    return algo, hexpart


def _last_modified(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(email.utils.parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None  # an unparsable date is not worth failing a build over


class UrlFetcher:
    """Downloads URLs into a private temp dir; each URL is fetched at most once."""

    def __init__(self, tmp_dir: Path | None = None, *, timeout: float = 60.0, client: httpx.Client | None = None) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="kiln-add-", dir=tmp_dir))
        self._client = client
        self._own_client = client is None
        self._timeout = timeout
        self._done: dict[str, Fetched] = {}

    def fetch(self, url: str, checksum: str | None = None, *, what: str = "ADD") -> Fetched:
        got = self._done.get(url)
        if got is None:
            got = self._download(url, what)
            self._done[url] = got
        if checksum:
            self._verify(got, checksum, what)
        return got

    def _verify(self, got: Fetched, checksum: str, what: str) -> None:
        algo, expected = parse_checksum(checksum)
        if algo == "sha256":
            actual = got.sha256
        else:
            h = hashlib.new(algo)
            with open(got.path, "rb") as f:
                while chunk := f.read(BLOCK_SIZE):
                    h.update(chunk)
            actual = h.hexdigest()
        if actual != expected:
            raise FetchError(
                f"{what} {got.url}: checksum mismatch: expected {algo}:{expected}, got {algo}:{actual}"
            )

    def _download(self, url: str, what: str) -> Fetched:
        if self._client is None:
            self._client = httpx.Client(follow_redirects=True, timeout=self._timeout)
        fd, name = tempfile.mkstemp(dir=self._dir, prefix="dl-")
        h = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out, self._client.stream("GET", url, follow_redirects=True) as resp:
                if resp.status_code >= 400:
                    raise FetchError(f"{what} {url}: the server answered {resp.status_code} {resp.reason_phrase}")
                for chunk in resp.iter_bytes(BLOCK_SIZE):
                    out.write(chunk)
                    h.update(chunk)
                    size += len(chunk)
                mtime = _last_modified(resp.headers.get("last-modified"))
        except httpx.HTTPError as e:
            os.unlink(name)
            raise FetchError(f"{what} {url}: download failed: {e}") from None
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise
        return Fetched(url, Path(name), size, h.hexdigest(), url_filename(url), mtime)

    def close(self) -> None:
        if self._client is not None and self._own_client:
            self._client.close()
        self._client = None
        for f in self._done.values():
            with contextlib.suppress(OSError):
                f.path.unlink()
        self._done.clear()
        with contextlib.suppress(OSError):
            for leftover in self._dir.iterdir():
                leftover.unlink()
            self._dir.rmdir()

    def __enter__(self) -> UrlFetcher:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
