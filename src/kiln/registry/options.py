"""Settings shared by every registry operation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CHUNK_SIZE = 16 << 20


@dataclass(frozen=True)
class RegistryOptions:
    """How kiln talks to registries.

    insecure_registries: hosts (``host`` or ``host:port``) reached over plain HTTP.
    loopback_plain_http: loopback hosts (localhost, 127.0.0.0/8, ::1) use plain HTTP too.
    ca_file: extra CA bundle for HTTPS; by default the system's CAs.
    auth_file: a containers-auth.json to read instead of the usual search path.
    docker_config: a directory holding a Docker ``config.json`` (like ``$DOCKER_CONFIG``).
    timeout: seconds for connect, read, write and pool waits of every request.
    max_retries: extra attempts after a retryable failure (429, 5xx, reset, timeout).
    backoff_base / backoff_max / retry_after_max: seconds of the exponential backoff and the cap on
        a server's Retry-After.
    concurrency: blobs moved in parallel.
    chunk_size: blobs larger than this are uploaded in PATCH chunks of this size.
    """

    insecure_registries: frozenset[str] = field(default_factory=frozenset)
    loopback_plain_http: bool = True
    ca_file: Path | None = None
    auth_file: Path | None = None
    docker_config: Path | None = None
    timeout: float = 60.0
    max_retries: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 10.0
    retry_after_max: float = 30.0
    # Six, like skopeo: with fewer threads than blobs the last blobs start only when earlier ones
    # finish and then move alone (push and copy of a 5-layer image at 4 threads: 5-10% slower).
    concurrency: int = 6
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self) -> None:
        # Accept any iterable of hosts (a set from the CLI) while staying hashable and frozen.
        object.__setattr__(self, "insecure_registries", frozenset(self.insecure_registries))
        if self.chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        if self.concurrency <= 0:
            raise ValueError("concurrency must be positive")
