"""Content digests (OCI image-spec descriptor.md#digests)."""

from __future__ import annotations

import hashlib
import re
from typing import BinaryIO

from kiln.errors import DigestMismatchError, ManifestError

_DIGEST_RE = re.compile(r"^sha256:[a-f0-9]{64}$|^sha512:[a-f0-9]{128}$")

#: Read size for hashing and copying: large blocks keep hashlib near memory bandwidth.
BLOCK_SIZE = 1 << 20


class Digest(str):
    """A validated `algorithm:hex` digest. Only sha256 is produced; sha512 is accepted."""

    __slots__ = ()

    def __new__(cls, value: str) -> Digest:
        if not _DIGEST_RE.match(value):
            raise ManifestError(f"invalid digest {value!r}")
        return super().__new__(cls, value)

    @property
    def algorithm(self) -> str:
        return self.split(":", 1)[0]

    @property
    def hex(self) -> str:
        return self.split(":", 1)[1]

    @property
    def short(self) -> str:
        return self.hex[:12]

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls("sha256:" + hashlib.sha256(data).hexdigest())

    @classmethod
    def of_stream(cls, stream: BinaryIO) -> tuple[Digest, int]:
        h = hashlib.sha256()
        size = 0
        while chunk := stream.read(BLOCK_SIZE):
            h.update(chunk)
            size += len(chunk)
        return cls("sha256:" + h.hexdigest()), size

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)


def is_digest(value: str) -> bool:
    return bool(_DIGEST_RE.match(value))


class VerifyingHasher:
    """Hashes a stream as it passes and checks it against an expected digest at the end."""

    def __init__(self, expected: Digest | None, *, algorithm: str = "sha256", what: str = "blob") -> None:
        self.expected = expected
        self._h = hashlib.new(expected.algorithm if expected else algorithm)
        self.size = 0
        self.what = what

    def update(self, data: bytes) -> None:
        self._h.update(data)
        self.size += len(data)

    @property
    def digest(self) -> Digest:
        return Digest(f"{self._h.name}:{self._h.hexdigest()}")

    def verify(self, expected_size: int | None = None) -> Digest:
        got = self.digest
        if self.expected is not None and got != self.expected:
            raise DigestMismatchError(f"{self.what}: digest mismatch: expected {self.expected}, got {got}")
        if expected_size is not None and expected_size >= 0 and self.size != expected_size:
            raise DigestMismatchError(
                f"{self.what}: size mismatch: expected {expected_size} bytes, got {self.size}"
            )
        return got
