"""Exception hierarchy. Errors are raised deep with context and shown once, by the CLI."""

from __future__ import annotations


class KilnError(Exception):
    """Base for every error kiln reports to a user as one line."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(KilnError):
    """Bad command-line input."""

    exit_code = 2


class DigestMismatchError(KilnError):
    """Content did not hash to the digest it was announced with."""


class BlobUnknownError(KilnError):
    """A blob is not in the store or registry."""


class ManifestError(KilnError):
    """A manifest, index or config that cannot be parsed or is not valid."""


class ReferenceError_(KilnError):
    """A malformed image reference."""


class RegistryError(KilnError):
    """A registry answered with an error, or could not be reached."""


class AuthError(RegistryError):
    """Credentials were missing or refused."""


class LayerError(KilnError):
    """A layer tar that cannot be read or that is hostile."""


class StoreError(KilnError):
    """The local content store is inconsistent or cannot be written."""


class ImageNotFoundError(KilnError):
    """An image reference that is in neither the store nor the registry."""


class BuildError(KilnError):
    """A build failed."""


class SandboxError(KilnError):
    """The rootless sandbox could not be set up or a process in it failed."""
