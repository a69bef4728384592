"""What an S2I build is asked to do (``S2IRequest``), and parsing of s2i's small text formats.

    >>> parse_env_lines("# comment\\nA = 1\\nno equals sign\\nB=x=y\\n")
    [('A', '1'), ('B', 'x=y')]
    >>> parse_input_files("/opt/app/app.jar:.;/opt/app/lib:libs")
    (PathMapping(source='/opt/app/app.jar', dest='.'), PathMapping(source='/opt/app/lib', dest='libs'))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kiln.errors import UsageError
from kiln.frontend.s2i.source import DEFAULT_EXCLUDE
from kiln.frontend.s2i.users import UidRange

PullPolicy = Literal["always", "never", "if-not-present"]


@dataclass(frozen=True)
class PathMapping:
    source: str
    dest: str


@dataclass(frozen=True)
class S2IRequest:
    source: str
    builder: str
    tag: str | None = None
    env: tuple[tuple[str, str], ...] = ()  # -E files then -e flags, in order (later wins)
    scripts_url: str | None = None
    context_dir: str = ""
    ref: str | None = None
    assemble_user: str | None = None
    allowed_uids: tuple[UidRange, ...] | None = None
    runtime_image: str | None = None
    runtime_artifacts: tuple[PathMapping, ...] = ()
    exclude: str = DEFAULT_EXCLUDE
    incremental: bool = False
    incremental_pull_policy: PullPolicy = "if-not-present"
    force_copy: bool = False
    injections: tuple[PathMapping, ...] = field(default_factory=tuple)


def parse_env_lines(text: str) -> list[tuple[str, str]]:
    """s2i's environment file: KEY=VALUE lines, '#' comments, both sides trimmed, other lines skipped."""
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, eq, value = line.partition("=")
        if eq and key.strip():
            out.append((key.strip(), value.strip()))
    return out


def parse_env_flag(item: str) -> tuple[str, str]:
    key, eq, value = item.partition("=")
    if not eq or not key.strip():
        raise UsageError(f"-e {item!r}: expected KEY=VALUE")
    return key.strip(), value


def parse_mapping(text: str, flag: str) -> PathMapping:
    """``SRC:DEST`` (SRC may not be empty; DEST defaults to ``.``)."""
    source, _, dest = text.partition(":")
    if not source.strip():
        raise UsageError(f"{flag} {text!r}: expected SOURCE:DESTINATION")
    return PathMapping(source.strip(), dest.strip() or ".")


def parse_input_files(label: str) -> tuple[PathMapping, ...]:
    """The ``io.openshift.s2i.assemble-input-files`` label: ``SRC:DEST;SRC2:DEST2``."""
    return tuple(parse_mapping(part, "label io.openshift.s2i.assemble-input-files") for part in label.split(";") if part.strip())
