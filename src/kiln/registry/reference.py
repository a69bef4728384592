"""Image references: parsing, validation and Docker Hub normalisation.

Grammar (distribution's reference package, restated)::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path
    domain     := host [ ":" port ]   host: DNS name, IPv4 or "[" IPv6 "]"
    path       := component ( "/" component )*
    component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [\\w][\\w.-]{0,127}

The first path element is a registry only when it contains "." or ":" or is "localhost";
otherwise the image lives on Docker Hub (``docker.io``), where single-element names are in
``library/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from kiln.errors import ReferenceError_
from kiln.oci.digest import Digest

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_PATH_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST_RE = re.compile(rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?$")
_DIGEST_SYNTAX_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
_MAX_NAME = 255


def _bad(text: str, why: str) -> ReferenceError_:
    return ReferenceError_(f"invalid image reference {text!r}: {why}")


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return DOCKER_HUB, name


@dataclass(frozen=True)
class Reference:
    """A normalized image reference. ``str()`` is the full form, e.g. ``docker.io/library/busybox:latest``.

    A reference has a tag, a digest or both; one parsed with neither gets the tag ``latest``.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str, *, default_tag: str = DEFAULT_TAG) -> Reference:
        if not text or text != text.strip():
            raise _bad(text, "empty or surrounded by whitespace")
        rest, at, digest_text = text.partition("@")
        digest: Digest | None = None
        if at:
            if not _DIGEST_SYNTAX_RE.match(digest_text):
                raise _bad(text, f"malformed digest {digest_text!r}")
            try:
                digest = Digest(digest_text)
            except Exception:
                raise _bad(text, f"unsupported or malformed digest {digest_text!r}") from None
        # A ":" after the last "/" starts the tag; one before it is a registry port.
        tag: str | None = None
        colon = rest.rfind(":")
        if colon > rest.rfind("/"):
            rest, tag = rest[:colon], rest[colon + 1 :]
            if not _TAG_RE.match(tag):
                raise _bad(text, f"invalid tag {tag!r}")
        if not rest:
            raise _bad(text, "missing repository name")
        registry, path = _split_domain(rest)
        if not _HOST_RE.match(registry):
            raise _bad(text, f"invalid registry host {registry!r}")
        if registry.lower() in _HUB_ALIASES:
            registry = DOCKER_HUB
        if registry == DOCKER_HUB and "/" not in path:
            path = "library/" + path
        if not path:
            raise _bad(text, "missing repository name")
        if not _PATH_RE.match(path):
            why = "repository name must be lowercase" if path.lower() != path else "invalid repository name"
            raise _bad(text, f"{why} {path!r}")
        if len(registry) + 1 + len(path) > _MAX_NAME:
            raise _bad(text, f"name longer than {_MAX_NAME} characters")
        if tag is None and digest is None:
            tag = default_tag
        return cls(registry=registry, repository=path, tag=tag, digest=digest)

    # -- forms --------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        out = self.name
        if self.tag:
            out += ":" + self.tag
        if self.digest:
            out += "@" + self.digest
        return out

    @property
    def familiar(self) -> str:
        """The short form a person types: ``busybox:latest``, ``user/app:1``, ``quay.io/x/y@sha256:..``."""
        name = self.name
        if self.registry == DOCKER_HUB:
            name = (
                self.repository.removeprefix("library/")
                if self.repository.count("/") == 1
                else self.repository
            )
        out = name
        if self.tag:
            out += ":" + self.tag
        if self.digest:
            out += "@" + self.digest
        return out

    @property
    def identifier(self) -> str:
        """What goes after ``/manifests/``: the digest when there is one (it is exact), else the tag."""
        if self.digest:
            return str(self.digest)
        assert self.tag is not None
        return self.tag

    @property
    def api_host(self) -> str:
        """The host serving the distribution API (Docker Hub's differs from its name)."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    # -- derived references -------------------------------------------------------------------

    def with_tag(self, tag: str) -> Reference:
        """Same repository at ``tag``; any digest is dropped (a tag names a moving target)."""
        if not _TAG_RE.match(tag):
            raise _bad(f"{self.name}:{tag}", f"invalid tag {tag!r}")
        return replace(self, tag=tag, digest=None)

    def with_digest(self, digest: str) -> Reference:
        """Same repository pinned to ``digest``; the tag is kept (``name:tag@digest``)."""
        try:
            d = Digest(digest)
        except Exception:
            raise _bad(f"{self.name}@{digest}", f"malformed digest {digest!r}") from None
        return replace(self, digest=d)

    def in_repository(self, repository: str) -> Reference:
        """Same registry, tag and digest in another repository (used for mount sources)."""
        return replace(self, repository=repository)
