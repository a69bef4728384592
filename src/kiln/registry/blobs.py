"""Moving one blob: reading it with resume, downloading it into the store, uploading it.

Reads from a registry resume a dropped connection with ``Range: bytes=<offset>-`` (or skip
ahead when the server ignores the range and starts over). Uploads skip blobs the destination
has (HEAD), try a cross-repository mount when a source repository on the same registry is
known, and otherwise upload monolithically (POST, then PUT with the bytes) up to
``chunk_size`` bytes and in PATCH chunks above it. After a dropped PATCH the upload's status
(``GET <location>``, ``Range`` header) tells where to resume; when the registry cannot say
(distribution invalidates an upload whose state token no longer matches), the upload starts
over.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import BinaryIO, Protocol

import httpx

from kiln.errors import DigestMismatchError
from kiln.oci.digest import BLOCK_SIZE, Digest, VerifyingHasher
from kiln.oci.models import Descriptor
from kiln.oci.store import Store
from kiln.registry import progress as pg
from kiln.registry.client import RegistryClient
from kiln.registry.options import RegistryOptions
from kiln.registry.parallel import Aborted
from kiln.registry.progress import ProgressSink
from kiln.registry.transport import Backoff, TransientError, describe_transport_error

log = logging.getLogger(__name__)


class ChunkSource(Protocol):
    """Bytes of one blob by offset. Offsets normally only grow; going back is allowed (resume).

    ``read`` returns at most ``n`` bytes and at least one unless the blob ends at ``offset``: a
    registry's bytes are handed on in the pieces they arrived in, because gathering them into one
    buffer would copy every byte once more. :func:`read_exactly` gathers, for callers that need to.
    """

    def read(self, offset: int, n: int, abort: threading.Event) -> bytes: ...

    def verify(self) -> None: ...

    def close(self) -> None: ...


def read_exactly(source: ChunkSource, offset: int, n: int, abort: threading.Event) -> bytes:
    """``n`` bytes of ``source`` at ``offset`` (fewer only where the blob ends)."""
    pieces: list[bytes] = []
    got = 0
    while got < n:
        data = source.read(offset + got, n - got, abort)
        if not data:
            break
        pieces.append(data)
        got += len(data)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


class _SequentialHash:
    """Hashes bytes in blob order even when some are read twice after a resume."""

    def __init__(self, digest: Digest, size: int, what: str) -> None:
        self._h = VerifyingHasher(digest, what=what)
        self._upto = 0
        self._size = size

    def feed(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if offset <= self._upto < end:
            self._h.update(data[self._upto - offset :])
            self._upto = end

    def verify(self) -> None:
        self._h.verify(self._size)


class StoreSource:
    """A blob in the local store."""

    def __init__(self, store: Store, digest: Digest, size: int, what: str) -> None:
        # Opened on first read: a blob the registry already has, or can mount, is never read,
        # so it need not be in the store at all (lazily pulled bases, remote cache layers).
        self._store = store
        self._digest = digest
        self._file: BinaryIO | None = None
        self._hash = _SequentialHash(digest, size, what)

    def read(self, offset: int, n: int, abort: threading.Event) -> bytes:
        if abort.is_set():
            raise Aborted
        if self._file is None:
            self._file = self._store.open_blob(self._digest)
        self._file.seek(offset)
        data = self._file.read(n)
        self._hash.feed(offset, data)
        return data

    def verify(self) -> None:
        self._hash.verify()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class _ByteQueue:
    """Bytes received and not yet read, kept as the pieces they arrived in.

    A bytearray appended to in network-sized pieces and emptied from the front reallocates and
    copies as it goes, then copies twice more per read (slice, bytes). Reads here hand out whole
    pieces, which copies nothing; only a piece split by a read's limit is sliced.
    """

    def __init__(self) -> None:
        self._pieces: deque[bytes] = deque()
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def append(self, piece: bytes) -> None:
        if piece:
            self._pieces.append(piece)
            self._len += len(piece)

    def take(self, n: int) -> bytes:
        """Up to ``n`` bytes from the front, out of the first piece only; removed from the queue."""
        if not self._pieces or n <= 0:
            return b""
        piece = self._pieces[0]
        if len(piece) <= n:
            self._pieces.popleft()
        else:
            self._pieces[0] = piece[n:]
            piece = piece[:n]
        self._len -= len(piece)
        return piece

    def drop(self, n: int) -> None:
        """Discard the first ``n`` bytes (at most what is held)."""
        while n > 0 and self._pieces:
            n -= len(self.take(n))


class RemoteSource:
    """A blob streamed from a registry, resuming dropped connections with Range requests."""

    def __init__(
        self, client: RegistryClient, digest: Digest, size: int, what: str, *, verify: bool = True
    ) -> None:
        self._client = client
        self._digest = digest
        self._size = size
        self._what = what
        self._options = client.session.options
        self._hash = _SequentialHash(digest, size, what) if verify else None
        self._resp: httpx.Response | None = None
        self._iter: Iterator[bytes] | None = None
        self._skip = 0  # bytes the stream will yield that precede the position we asked for
        # _buf holds blob bytes from _buf_start; the stream continues at _buf_start + len(_buf).
        self._buf = _ByteQueue()
        self._buf_start = 0
        self.resumes = 0

    def _open_stream(self) -> None:
        """(Re)open the GET where the buffer ends."""
        self.close()
        at = self._buf_start + len(self._buf)
        resp = self._client.open_blob(self._digest, self._what, at)
        # Raw bytes as they arrive: a chunker would swallow what it buffered when the stream breaks,
        # and Range offsets count the bytes on the wire (blob GETs ask for no content coding).
        self._resp, self._iter = resp, resp.iter_raw()
        # A 200 to a range request is the whole blob: drop what we already have.
        self._skip = at if at and resp.status_code == 200 else 0

    def _pull(self) -> None:
        """Append the stream's next bytes to the buffer; raise TransportError when it breaks."""
        assert self._iter is not None
        piece = next(self._iter, None)
        if piece is None:
            raise httpx.RemoteProtocolError("connection closed before the end of the blob")
        if self._skip:
            drop = min(self._skip, len(piece))
            self._skip -= drop
            piece = piece[drop:]
        self._buf.append(piece)
        if self._buf_start + len(self._buf) > self._size:
            raise DigestMismatchError(f"{self._what}: blob is longer than its {self._size} bytes")

    def read(self, offset: int, n: int, abort: threading.Event) -> bytes:
        n = max(0, min(n, self._size - offset))
        if self._resp is None or not self._buf_start <= offset <= self._buf_start + len(self._buf):
            self._buf, self._buf_start = _ByteQueue(), offset
            if n:
                self._open_stream()
        else:
            self._buf.drop(offset - self._buf_start)
            self._buf_start = offset
        failures = 0
        backoff = Backoff(self._options)
        while n and not self._buf:
            if abort.is_set():
                raise Aborted
            try:
                self._pull()
            except httpx.TransportError as e:
                failures += 1
                if failures > self._options.max_retries:
                    raise TransientError(f"{self._what}: {describe_transport_error(e)}") from None
                at = self._buf_start + len(self._buf)
                log.info("%s: %s at byte %d; resuming", self._what, describe_transport_error(e), at)
                backoff.sleep(failures - 1)
                self.resumes += 1
                self._open_stream()
                continue
            failures = 0
        data = self._buf.take(n)
        self._buf_start += len(data)
        if self._hash is not None:
            self._hash.feed(offset, data)
        return data

    def verify(self) -> None:
        if self._hash is not None:
            self._hash.verify()

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None
            self._iter = None


def download_blob(
    client: RegistryClient,
    store: Store,
    desc: Descriptor,
    *,
    label: str,
    what: str,
    progress: ProgressSink,
    abort: threading.Event,
) -> str:
    """Stream a blob into the store, digest-verified before it becomes visible."""
    digest = desc.dgst
    if store.has_blob(digest):
        progress.start(digest, label, desc.size)
        progress.done(digest, pg.CACHED)
        return pg.CACHED
    progress.start(digest, label, desc.size)
    source = RemoteSource(client, digest, desc.size, f"{what}: {label} {digest}", verify=False)
    try:
        with store.blob_writer(expected=digest, expected_size=desc.size) as w:
            offset = 0
            while offset < desc.size:
                data = source.read(offset, BLOCK_SIZE, abort)
                w.write(data)
                offset += len(data)
                progress.advance(digest, len(data))
    except DigestMismatchError as e:
        progress.done(digest, pg.FAILED)
        raise DigestMismatchError(f"{what}: {label}: {e.message}; nothing was stored") from None
    except BaseException:
        progress.done(digest, pg.FAILED)
        raise
    finally:
        source.close()
    progress.done(digest, pg.PULLED)
    return pg.PULLED


def upload_blob(
    client: RegistryClient,
    desc: Descriptor,
    source: ChunkSource,
    *,
    label: str,
    what: str,
    progress: ProgressSink,
    abort: threading.Event,
    mount_from: str | None = None,
) -> str:
    """Make ``client``'s repository hold the blob; returns how: exists, mounted or pushed."""
    digest, size = desc.dgst, desc.size
    options = client.session.options
    what = f"{what}: {label} {digest}"
    progress.start(digest, label, size)
    try:
        if client.blob_size(digest, what) is not None:
            progress.done(digest, pg.EXISTS)
            return pg.EXISTS
        location = client.start_upload(what, mount=digest if mount_from else None, mount_from=mount_from)
        if location is None:
            progress.done(digest, pg.MOUNTED)
            return pg.MOUNTED
        backoff = Backoff(options)
        restarts = 0
        sent = [0]
        while True:
            try:
                if size <= options.chunk_size:
                    _monolithic(client, location, desc, source, what=what, abort=abort)
                    progress.advance(digest, size)
                else:
                    _chunked(
                        client,
                        location,
                        desc,
                        source,
                        options,
                        sent,
                        what=what,
                        progress=progress,
                        abort=abort,
                    )
                break
            except TransientError as e:
                restarts += 1
                if restarts > options.max_retries:
                    raise
                log.info("%s: %s; restarting the upload", what, e.message)
                client.cancel_upload(location, what)
                backoff.sleep(restarts - 1)
                progress.advance(digest, -sent[0])
                sent[0] = 0
                if client.blob_size(digest, what) is not None:
                    break  # the failed request did complete after all
                location = client.start_upload(what)
                assert location is not None
    except BaseException:
        progress.done(digest, pg.FAILED)
        raise
    progress.done(digest, pg.PUSHED)
    return pg.PUSHED


def _monolithic(
    client: RegistryClient,
    location: str,
    desc: Descriptor,
    source: ChunkSource,
    *,
    what: str,
    abort: threading.Event,
) -> None:
    data = read_exactly(source, 0, desc.size, abort)
    if len(data) != desc.size:
        raise DigestMismatchError(f"{what}: got {len(data)} bytes, expected {desc.size}")
    _verify_or_cancel(client, location, source, what)
    client.finish_upload(location, desc.dgst, data, what)


def _chunked(
    client: RegistryClient,
    location: str,
    desc: Descriptor,
    source: ChunkSource,
    options: RegistryOptions,
    sent: list[int],
    *,
    what: str,
    progress: ProgressSink,
    abort: threading.Event,
) -> None:
    size, digest = desc.size, desc.dgst
    offset = 0
    failures = 0
    backoff = Backoff(options)
    # Bytes of the current chunk handed to the PATCH so far.
    streamed = [0]

    def chunk_body(start: int, n: int) -> Callable[[], Iterator[bytes]]:
        # Each chunk streams from the source in BLOCK_SIZE reads: no chunk is ever held in memory,
        # and in a copy the destination receives bytes while the source is still sending them.
        # Progress still moves once the registry has accepted the chunk.
        def body() -> Iterator[bytes]:
            streamed[0] = 0  # a fresh attempt (after a 401) sends the chunk again
            pos, end = start, start + n
            while pos < end:
                data = source.read(pos, min(BLOCK_SIZE, end - pos), abort)
                if not data:
                    raise DigestMismatchError(f"{what}: source ended at byte {pos} of {size}")
                pos += len(data)
                streamed[0] += len(data)
                yield data

        return body

    while offset < size:
        n = min(options.chunk_size, size - offset)
        try:
            location = client.patch_upload(location, chunk_body(offset, n), offset, what, length=n)
        except TransientError as e:
            failures += 1
            if failures > options.max_retries:
                raise
            backoff.sleep(failures - 1)
            status = client.upload_status(location, what)
            held = status[1] if status is not None else None
            if status is None or held is None or not 0 <= held <= size:
                raise TransientError(f"{what}: upload lost after {e.message}") from None
            location, resumed_at = status[0], held
            log.info("%s: chunk at %d failed; registry holds %d bytes, resuming", what, offset, resumed_at)
            progress.advance(digest, resumed_at - offset)
            sent[0] += resumed_at - offset
            offset = resumed_at
            continue
        if streamed[0] != n:
            raise DigestMismatchError(
                f"{what}: sent {streamed[0]} bytes of the chunk at {offset}, expected {n}"
            )
        offset += n
        sent[0] += n
        progress.advance(digest, n)
    _verify_or_cancel(client, location, source, what)
    client.finish_upload(location, digest, b"", what)


def _verify_or_cancel(client: RegistryClient, location: str, source: ChunkSource, what: str) -> None:
    try:
        source.verify()
    except DigestMismatchError as e:
        client.cancel_upload(location, what)
        raise DigestMismatchError(f"{what}: {e.message}; upload cancelled") from None
