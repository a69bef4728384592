"""Finding the S2I scripts (assemble, run, save-artifacts, usage, assemble-runtime).

Each script is looked for, in s2i's order, at

1. ``--scripts-url``,
2. ``.s2i/bin/`` in the source,
3. the image's ``io.openshift.s2i.scripts-url`` label,
4. ``image:///usr/libexec/s2i``.

A URL is ``image://DIR`` (the script is DIR/NAME inside the image: it is trusted to be there
and the search stops, as in s2i), ``file://DIR`` (a host directory) or ``http(s)://BASE``
(BASE/NAME is downloaded). A script found on the host (a file, a download, ``.s2i/bin``) is
uploaded into the image by the build. When ``--scripts-url`` is given and no script at all
could be fetched from it, that is an error (s2i: "could not download any scripts from URL").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from kiln.errors import KilnError
from kiln.frontend.s2i.labels import DEFAULT_SCRIPTS_URL

ASSEMBLE = "assemble"
RUN = "run"
SAVE_ARTIFACTS = "save-artifacts"
USAGE = "usage"
ASSEMBLE_RUNTIME = "assemble-runtime"
#: How long one script download may take.
FETCH_TIMEOUT = 60.0


class ScriptsError(KilnError):
    """Scripts could not be fetched from a URL the user gave."""


class NotThere(Exception):
    """A script is not at a location (the reason says why); the search goes on."""


@dataclass(frozen=True)
class Location:
    origin: str  # for messages: "--scripts-url URL", ".s2i/bin", "label URL", "default URL"
    url: str | None  # None: the source's .s2i/bin


@dataclass(frozen=True)
class Script:
    name: str
    origin: str
    image_path: str | None = None  # inside the image (an image:// location)
    content: bytes | None = None  # to upload (file://, http(s)://, .s2i/bin)

    @property
    def uploaded(self) -> bool:
        return self.content is not None


FetchUrl = Callable[[str], bytes]  # URL of one script -> content; raises NotThere
ReadSource = Callable[[str], bytes]  # name -> content of .s2i/bin/NAME; raises NotThere


def locations(user_url: str | None, label_url: str | None) -> list[Location]:
    found = []
    if user_url:
        found.append(Location(f"--scripts-url {user_url}", user_url))
    found.append(Location(".s2i/bin in the source", None))
    if label_url:
        found.append(Location(f"label io.openshift.s2i.scripts-url {label_url}", label_url))
    found.append(Location(f"default {DEFAULT_SCRIPTS_URL}", DEFAULT_SCRIPTS_URL))
    return found


def locate(names: Sequence[str], where: Sequence[Location], fetch: FetchUrl, read_source: ReadSource) -> dict[str, Script]:
    """Each script from the first location that has it (the default location always does)."""
    out: dict[str, Script] = {}
    user = where[0] if where and where[0].origin.startswith("--scripts-url") else None
    user_failures: list[str] = []
    for name in names:
        for loc in where:
            try:
                if loc.url is None:
                    out[name] = Script(name, loc.origin, content=read_source(name))
                elif loc.url.startswith("image://"):
                    out[name] = Script(name, loc.origin, image_path=_join(image_dir(loc.url), name))
                else:
                    out[name] = Script(name, loc.origin, content=fetch(_join(loc.url, name)))
                break
            except NotThere as e:
                if loc is user:
                    user_failures.append(f"{name}: {e}")
    if user is not None and len(user_failures) == len(names):
        raise ScriptsError(f"could not download any scripts from {user.origin.split(' ', 1)[1]} ({'; '.join(user_failures)})")
    return out


def image_dir(url: str) -> str:
    path = url.removeprefix("image://")
    return "/" + path.strip("/") if path.strip("/") else "/"


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def check_url(url: str, flag: str = "--scripts-url") -> None:
    scheme = urlsplit(url).scheme
    if scheme not in ("image", "file", "http", "https") and not url.startswith("/"):
        raise ScriptsError(f"{flag} {url!r}: expected image://DIR, file://DIR or http(s)://URL")


# -- I/O: fetching one script ----------------------------------------------------------------


def fetch_script(url: str) -> bytes:
    """The script at a file://, http:// or https:// URL (or an absolute host path)."""
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        path = Path(unquote(parts.path))
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise NotThere(f"{path} does not exist") from None
        except OSError as e:
            raise NotThere(f"{path}: {e.strerror}") from None
    if parts.scheme in ("http", "https"):
        import httpx

        try:
            response = httpx.get(url, timeout=FETCH_TIMEOUT, follow_redirects=True)
        except httpx.HTTPError as e:
            raise NotThere(f"{url}: {e}") from None
        if response.status_code != 200:
            raise NotThere(f"{url}: HTTP {response.status_code}")
        return response.content
    raise NotThere(f"{url}: unsupported URL scheme {parts.scheme!r}")


def source_reader(source_root: Path) -> ReadSource:
    """Scripts in the source's .s2i/bin (s2i also reads the deprecated .sti/bin)."""

    root = source_root.resolve()

    def read(name: str) -> bytes:
        for folder in (".s2i/bin", ".sti/bin"):
            path = (source_root / folder / name).resolve()
            # a symlink in a (possibly foreign) repository must not upload a host file
            if path.is_relative_to(root) and path.is_file():
                return path.read_bytes()
        raise NotThere(f".s2i/bin/{name} is not in the source")

    return read
