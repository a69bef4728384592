"""Typed Dockerfile instructions, parsed from the AST with BuildKit's rules.

    >>> df = parse_dockerfile("ARG V=1\\nFROM --platform=$BUILDPLATFORM alpine:$V AS build\\nRUN make\\n")
    >>> df.meta_args[0].args[0].key, df.stages[0].name, df.stages[0].platform
    ('V', 'build', '$BUILDPLATFORM')
    >>> df.stages[0].instructions[0].command
    ('make',)

Words are kept as written: variables are not expanded and quotes in ENV/LABEL/ARG values are not
removed, because only the compiler knows the ARG/ENV scope of each line (see stages.py and
shell.expand). Flags whose meaning cannot depend on variables (--network, --link, ...) are
validated here; values that may hold variables (--chmod, --mount) are validated here when they
hold none, and again by the compiler after expansion (`parse_chmod`, `RunInstruction.expand_mounts`).

Every error is a DockerfileError reading `FILE:LINE: message`. The value parsers used by flags
(mounts, chmod, durations) raise the unlocated LineError, and expansion raises ExpansionError;
the compiler locates both with `Dockerfile.error(instruction.line, e.message, instruction.end_line)`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kiln.errors import KilnError
from kiln.frontend.dockerfile.parser import (
    Directive,
    DockerfileError,
    Heredoc,
    LineError,
    Node,
    ParseResult,
    ParseWarning,
    chomp_heredoc_content,
    parse,
    parse_heredoc,
)

Expander = Callable[[str], str]

# ---------------------------------------------------------------------------- instruction models


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """Fields every instruction has: where it is and how it was written."""

    line: int
    end_line: int
    original: str
    flags: tuple[str, ...] = ()

    keyword = ""


@dataclass(frozen=True)
class KeyValue:
    """One ENV/LABEL pair, raw. `legacy` marks the `ENV key value` form (no `=`)."""

    key: str
    value: str
    legacy: bool = False


@dataclass(frozen=True)
class ArgDefinition:
    key: str
    default: str | None = None


@dataclass(frozen=True)
class SourceContent:
    """A COPY/ADD source given inline as a heredoc (already chomped for `<<-`)."""

    path: str
    data: str
    expand: bool


@dataclass(frozen=True, kw_only=True)
class FromInstruction(Instruction):
    base: str
    name: str | None = None
    platform: str | None = None
    keyword = "FROM"


@dataclass(frozen=True, kw_only=True)
class _CommandLine(Instruction):
    """CMD/ENTRYPOINT/RUN: exec form (`prepend_shell` False) or one shell string."""

    command: tuple[str, ...]
    prepend_shell: bool


@dataclass(frozen=True, kw_only=True)
class RunInstruction(_CommandLine):
    heredocs: tuple[Heredoc, ...] = ()
    mount_specs: tuple[str, ...] = ()
    mounts: tuple[Mount, ...] = ()
    network: str = "default"
    security: str = "sandbox"
    keyword = "RUN"

    def expand_mounts(self, expand: Expander) -> tuple[Mount, ...]:
        """The --mount flags with variables expanded, fully validated (raises LineError)."""
        return tuple(parse_mount(spec, expand) for spec in self.mount_specs)


@dataclass(frozen=True, kw_only=True)
class CmdInstruction(_CommandLine):
    keyword = "CMD"


@dataclass(frozen=True, kw_only=True)
class EntrypointInstruction(_CommandLine):
    keyword = "ENTRYPOINT"


@dataclass(frozen=True, kw_only=True)
class EnvInstruction(Instruction):
    pairs: tuple[KeyValue, ...]
    keyword = "ENV"


@dataclass(frozen=True, kw_only=True)
class LabelInstruction(Instruction):
    pairs: tuple[KeyValue, ...]
    keyword = "LABEL"


@dataclass(frozen=True, kw_only=True)
class ArgInstruction(Instruction):
    args: tuple[ArgDefinition, ...]
    keyword = "ARG"


@dataclass(frozen=True, kw_only=True)
class ExposeInstruction(Instruction):
    ports: tuple[str, ...]
    keyword = "EXPOSE"


@dataclass(frozen=True, kw_only=True)
class VolumeInstruction(Instruction):
    paths: tuple[str, ...]
    keyword = "VOLUME"


@dataclass(frozen=True, kw_only=True)
class UserInstruction(Instruction):
    user: str
    keyword = "USER"


@dataclass(frozen=True, kw_only=True)
class WorkdirInstruction(Instruction):
    path: str
    keyword = "WORKDIR"


@dataclass(frozen=True, kw_only=True)
class ShellInstruction(Instruction):
    shell: tuple[str, ...]
    keyword = "SHELL"


@dataclass(frozen=True, kw_only=True)
class HealthcheckInstruction(Instruction):
    """`test` is ("NONE",), ("CMD", argv...) or ("CMD-SHELL", command); durations are in
    nanoseconds as in the image config, 0 meaning "not set"."""

    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0
    keyword = "HEALTHCHECK"


@dataclass(frozen=True, kw_only=True)
class StopsignalInstruction(Instruction):
    signal: str
    keyword = "STOPSIGNAL"


@dataclass(frozen=True, kw_only=True)
class MaintainerInstruction(Instruction):
    maintainer: str
    keyword = "MAINTAINER"


@dataclass(frozen=True, kw_only=True)
class OnbuildInstruction(Instruction):
    """`expression` is what goes into the image config's OnBuild list; `trigger` is it parsed."""

    expression: str
    trigger: Instruction
    keyword = "ONBUILD"


@dataclass(frozen=True, kw_only=True)
class _FileInstruction(Instruction):
    sources: tuple[str, ...]
    contents: tuple[SourceContent, ...]
    dest: str
    chown: str | None = None
    chmod: str | None = None
    chmod_mode: Chmod | None = None  # parsed --chmod; None when unset or holding variables
    link: bool = False
    excludes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class CopyInstruction(_FileInstruction):
    from_: str | None = None
    parents: bool = False
    keyword = "COPY"


@dataclass(frozen=True, kw_only=True)
class AddInstruction(_FileInstruction):
    checksum: str | None = None
    keep_git_dir: bool = False
    unpack: bool | None = None
    keyword = "ADD"


@dataclass(frozen=True)
class Stage:
    """One build stage: its FROM and the instructions after it."""

    index: int
    name: str | None
    base: str
    platform: str | None
    line: int
    from_instruction: FromInstruction
    instructions: tuple[Instruction, ...]


@dataclass(frozen=True)
class Dockerfile:
    filename: str
    directives: tuple[Directive, ...]
    escape: str
    meta_args: tuple[ArgInstruction, ...]
    stages: tuple[Stage, ...]
    warnings: tuple[ParseWarning, ...]
    source_lines: tuple[str, ...]

    def directive(self, name: str) -> str | None:
        return next((d.value for d in self.directives if d.name == name), None)

    def stage(self, ref: str) -> Stage | None:
        """The stage a `--from`/FROM reference names (case-insensitive; the last one wins, as
        BuildKit resolves duplicate names), or by index."""
        if ref.isdigit():
            index = int(ref)
            return self.stages[index] if index < len(self.stages) else None
        named = [s for s in self.stages if s.name == ref.lower()]
        return named[-1] if named else None

    def error(self, line: int, reason: str, end_line: int | None = None) -> DockerfileError:
        """A located error, for the compiler to report problems found after expansion."""
        text = tuple(
            self.source_lines[i - 1]
            for i in range(line, (end_line or line) + 1)
            if 0 < i <= len(self.source_lines)
        )
        return DockerfileError(self.filename, line, reason, source_lines=text, end_line=end_line)


# --------------------------------------------------------------------------------- flag parsing

_BOOL, _STRING, _STRINGS = "bool", "string", "strings"


class _Flags:
    """BuildKit's BFlags: `--name`, `--name=value`; repeatable only for list flags."""

    def __init__(self, raw: Sequence[str], spec: dict[str, str]) -> None:
        self.values: dict[str, str | bool | list[str]] = {}
        for arg in raw:
            if arg == "--":
                break
            if not arg.startswith("--"):
                raise LineError(f"arg should start with -- : {arg}")
            name, has_value, value = arg[2:].partition("=")
            kind = spec.get(name)
            if kind is None:
                raise LineError(f"unknown flag: --{name}{_suggest(name, spec, '--')}")
            if name in self.values and kind != _STRINGS:
                raise LineError(f"duplicate flag specified: --{name}")
            if kind == _BOOL:
                if has_value and not value:
                    raise LineError(f"missing a value on flag: --{name}")
                if value.lower() not in ("", "true", "false"):
                    raise LineError(f"expecting boolean value for flag --{name}, not: {value}")
                self.values[name] = value.lower() != "false"
            elif not has_value:
                raise LineError(f"missing a value on flag: --{name}")
            elif kind == _STRING:
                self.values[name] = value
            else:
                listed = self.values.setdefault(name, [])
                assert isinstance(listed, list)
                listed.append(value)

    def string(self, name: str) -> str | None:
        value = self.values.get(name)
        return value if isinstance(value, str) else None

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.values.get(name)
        return tuple(value) if isinstance(value, list) else ()

    def boolean(self, name: str) -> bool:
        return self.values.get(name) is True


def _suggest(word: str, candidates: Iterable[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word.lower(), [c.lower() for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


# ------------------------------------------------------------------------------- flag values


_MOUNT_TYPES = ("bind", "cache", "tmpfs", "secret", "ssh")
_MOUNT_KEYS = (
    "type", "from", "source", "src", "target", "dst", "destination", "readonly", "ro", "readwrite",
    "rw", "id", "sharing", "required", "mode", "uid", "gid", "env", "size",
)  # fmt: skip


@dataclass(frozen=True)
class Mount:
    """One `RUN --mount`. `deferred` names the options whose values still hold variables (not
    validated until `RunInstruction.expand_mounts`)."""

    type: str = "bind"
    target: str = ""
    source: str = ""
    from_: str = ""
    id: str = ""
    sharing: str = ""  # shared | private | locked; "" leaves BuildKit's default (shared)
    readonly: bool = True
    required: bool = False
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    env: str | None = None  # secret mounts: expose the secret as this environment variable
    size: int | None = None  # tmpfs mounts: size limit in bytes
    deferred: frozenset[str] = field(default_factory=frozenset)


def parse_mount(spec: str, expand: Expander | None = None) -> Mount:
    """Parse one --mount value (CSV of key=value) with BuildKit's rules.

    Without `expand`, values holding `$` are left for later (see `Mount.deferred`); `from=`
    cannot hold variables at all, as in BuildKit.
    """
    fields: dict[str, Any] = {}
    deferred: set[str] = set()
    mount_type = "bind"
    ro_auto = True
    for item in _csv_fields(spec):
        key, has_value, value = item.partition("=")
        key = key.lower()
        if not has_value:
            if key in ("readonly", "ro", "readwrite", "rw"):
                fields["readonly"], ro_auto = key in ("readonly", "ro"), False
                continue
            if key == "required" and (mount_type in ("secret", "ssh") or "type" in deferred):
                fields["required"] = True
                continue
            if key == "required":
                raise LineError(f"unexpected key '{key}' for mount type '{mount_type}'")
            raise LineError(f"invalid field '{item}' must be a key=value pair")
        if expand is not None:
            value = expand(value)
        elif "$" in value[:-1]:
            if key == "from":
                raise LineError(f"'{key}' doesn't support variable expansion, define alias stage instead")
            deferred.add(key)
            continue
        if key == "type":
            if value.lower() not in _MOUNT_TYPES:
                raise LineError(f"unsupported mount type {value!r}{_suggest(value, _MOUNT_TYPES)}")
            mount_type = value.lower()
        elif key in ("from", "id", "env"):
            fields["from_" if key == "from" else key] = value
        elif key in ("source", "src"):
            fields["source"] = value
        elif key in ("target", "dst", "destination"):
            fields["target"] = value
        elif key in ("readonly", "ro", "readwrite", "rw"):
            flag = _go_bool(value, key)
            fields["readonly"], ro_auto = flag if key in ("readonly", "ro") else not flag, False
        elif key == "required":
            if mount_type not in ("secret", "ssh") and "type" not in deferred:
                raise LineError(f"unexpected key '{key}' for mount type '{mount_type}'")
            fields["required"] = _go_bool(value, key)
        elif key == "size":
            if mount_type != "tmpfs" and "type" not in deferred:
                raise LineError(f"unexpected key '{key}' for mount type '{mount_type}'")
            fields["size"] = _ram_in_bytes(value)
        elif key == "sharing":
            if value.lower() not in ("shared", "private", "locked"):
                raise LineError(f"unsupported sharing value {value!r}")
            fields["sharing"] = value.lower()
        elif key in ("mode", "uid", "gid"):
            fields[key] = _go_uint(value, 8 if key == "mode" else 10, key)
        else:
            raise LineError(f"unexpected key '{key}' in '{item}'{_suggest(key, _MOUNT_KEYS)}")
    if ro_auto:
        fields["readonly"] = mount_type not in ("cache", "tmpfs")
    mount = Mount(type=mount_type, deferred=frozenset(deferred), **fields)
    if "type" not in deferred:
        _check_mount(mount)
    return mount


def _check_mount(m: Mount) -> None:
    if m.type not in ("secret", "ssh", "cache"):
        for key in ("mode", "uid", "gid"):
            if getattr(m, key) is not None:
                raise LineError(f"{key} not allowed for {m.type!r} type mounts")
    if m.sharing and m.type != "cache":
        raise LineError(f"invalid cache sharing set for {m.type} mount")
    if m.type == "secret":
        if m.from_:
            raise LineError("secret mount should not have a from")
        if not (
            m.source
            or m.target
            or m.id
            or {"source", "src", "target", "dst", "destination", "id"} & m.deferred
        ):
            raise LineError("invalid secret mount. one of source, target required")
        if m.source and m.id:
            raise LineError("both source and id can't be set")


def _csv_fields(text: str) -> list[str]:
    """One record of Go's encoding/csv (RFC 4180 quoting, strict about stray quotes)."""
    if not text:
        raise LineError("failed to parse csv mounts: EOF")
    out: list[str] = []
    i = 0
    while True:
        if text.startswith('"', i):
            buf: list[str] = []
            i += 1
            while True:
                j = text.find('"', i)
                if j < 0:
                    raise LineError(
                        f'failed to parse csv mounts: extraneous or missing " in quoted-field: {text}'
                    )
                buf.append(text[i:j])
                if text.startswith('"', j + 1):
                    buf.append('"')
                    i = j + 2
                    continue
                i = j + 1
                break
            if i < len(text) and text[i] != ",":
                raise LineError(
                    f'failed to parse csv mounts: extraneous or missing " in quoted-field: {text}'
                )
            out.append("".join(buf))
        else:
            j = text.find(",", i)
            value = text[i:] if j < 0 else text[i:j]
            if '"' in value:
                raise LineError(f'failed to parse csv mounts: bare " in non-quoted-field: {text}')
            out.append(value)
            i = len(text) if j < 0 else j
        if i >= len(text):
            return out
        i += 1  # the comma
        if i == len(text):
            out.append("")
            return out


def _go_bool(value: str, key: str) -> bool:
    if value in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise LineError(f"invalid value for {key}: {value}")


def _go_uint(value: str, base: int, key: str) -> int:
    digits = "01234567" if base == 8 else "0123456789"
    if not value or any(c not in digits for c in value) or int(value, base) > 0xFFFFFFFF:
        raise LineError(f"invalid value {value} for {key}")
    return int(value, base)


_RAM_RE = re.compile(r"([0-9]+(?:\.[0-9]+)*) ?([kKmMgGtTpP])?[iI]?[bB]?\Z")


def _ram_in_bytes(value: str) -> int:
    """go-units RAMInBytes: "64m", "1.5g", "512KiB" (binary multiples)."""
    m = _RAM_RE.match(value)
    if m is None or m.group(1).count(".") > 1:
        raise LineError(f"invalid value for size: {value}")
    unit = 1024 ** " kmgtp".index((m.group(2) or " ").lower())
    return int(float(m.group(1)) * unit)


_CHMOD_CLASSES = {"u": 6, "g": 3, "o": 0}


@dataclass(frozen=True)
class ChmodClause:
    who: str  # subset of "ugoa"; empty means all (no umask is applied)
    actions: tuple[tuple[str, str], ...]  # (op, perms) with op in "+-=", perms "rwxXst" or one of "ugo"


@dataclass(frozen=True)
class Chmod:
    """A --chmod value: octal (`0755`) or symbolic like chmod(1) (`u+x,g=r`, `a-w`, `g=u`)."""

    raw: str
    octal: int | None = None
    clauses: tuple[ChmodClause, ...] = ()

    def apply(self, mode: int, is_dir: bool = False) -> int:
        """The permission bits (12 low bits) after applying this chmod to `mode`."""
        if self.octal is not None:
            return self.octal
        mode &= 0o7777
        for clause in self.clauses:
            who = clause.who.replace("a", "ugo") or "ugo"
            for op, perms in clause.actions:
                if perms in _CHMOD_CLASSES:
                    rwx = (mode >> _CHMOD_CLASSES[perms]) & 7
                else:
                    executable = is_dir or mode & 0o111
                    rwx = sum(b for p, b in (("r", 4), ("w", 2), ("x", 1)) if p in perms)
                    rwx |= 1 if "X" in perms and executable else 0
                bits = sum(rwx << _CHMOD_CLASSES[c] for c in set(who))
                special = {"u": 0o4000, "g": 0o2000, "o": 0o1000}
                if "s" in perms:
                    bits |= sum(special[c] for c in set(who) if c in "ug")
                if "t" in perms and "o" in who:
                    bits |= 0o1000
                if op == "=":
                    mode &= ~sum((7 << _CHMOD_CLASSES[c]) | special[c] for c in set(who))
                mode = mode & ~bits if op == "-" else mode | bits
        return mode


def parse_chmod(raw: str) -> Chmod:
    """Parse a --chmod value (raises LineError when it is neither octal nor symbolic)."""
    if raw and all(c in "01234567" for c in raw):
        value = int(raw, 8)
        if value > 0o7777:
            raise LineError(f"invalid chmod parameter: {raw!r}: mode out of range")
        return Chmod(raw, octal=value)
    clauses = []
    for text in raw.split(","):
        i = 0
        while i < len(text) and text[i] in "ugoa":
            i += 1
        who, actions = text[:i], []
        while i < len(text) and text[i] in "+-=":
            op, i = text[i], i + 1
            if i < len(text) and text[i] in "ugo":
                perms, i = text[i], i + 1
            else:
                start = i
                while i < len(text) and text[i] in "rwxXst":
                    i += 1
                perms = text[start:i]
            actions.append((op, perms))
        if not actions or i != len(text):
            raise LineError(
                f"invalid chmod parameter: {raw!r}: expected octal digits or a symbolic mode like u+x,g=r"
            )
        clauses.append(ChmodClause(who, tuple(actions)))
    return Chmod(raw, clauses=tuple(clauses))


_DURATION_UNITS = {
    "ns": 1,
    "us": 10**3,
    "µs": 10**3,
    "μs": 10**3,
    "ms": 10**6,
    "s": 10**9,
    "m": 60 * 10**9,
    "h": 3600 * 10**9,
}
_DURATION_RE = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


def parse_duration(text: str) -> int:
    """Go's time.ParseDuration ("1h30m", "1.5s", "300ms"), in nanoseconds."""
    s, sign = text, 1
    if s[:1] in ("-", "+"):
        sign, s = (-1 if s[0] == "-" else 1), s[1:]
    if s == "0":
        return 0
    if not s:
        raise LineError(f"invalid duration {text!r}")
    total = 0
    while s:
        m = _DURATION_RE.match(s)
        assert m is not None
        whole, frac, unit = m.group(1), m.group(2), m.group(3)
        if not whole and not frac:
            raise LineError(f"invalid duration {text!r}")
        if not unit:
            raise LineError(f"missing unit in duration {text!r}")
        if unit not in _DURATION_UNITS:
            raise LineError(f"unknown unit {unit!r} in duration {text!r}")
        scale = _DURATION_UNITS[unit]
        total += int(whole or "0") * scale
        if frac:
            total += int(int(frac) * scale / 10 ** len(frac))
        if total > 2**63 - 1:
            raise LineError(f"invalid duration {text!r}")
        s = s[m.end() :]
    return sign * total


# --------------------------------------------------------------------------- instruction parsing

_FLAGS: dict[str, dict[str, str]] = {
    "from": {"platform": _STRING},
    "run": {"mount": _STRINGS, "network": _STRING, "security": _STRING},
    "copy": {
        "from": _STRING,
        "chown": _STRING,
        "chmod": _STRING,
        "link": _BOOL,
        "exclude": _STRINGS,
        "parents": _BOOL,
    },
    "add": {
        "chown": _STRING,
        "chmod": _STRING,
        "link": _BOOL,
        "exclude": _STRINGS,
        "keep-git-dir": _BOOL,
        "checksum": _STRING,
        "unpack": _BOOL,
    },
    "healthcheck": {
        "interval": _STRING,
        "timeout": _STRING,
        "start-period": _STRING,
        "start-interval": _STRING,
        "retries": _STRING,
    },
}
_STAGE_NAME_RE = re.compile(r"[a-z][a-z0-9-_.]*\Z")
_ONBUILD_PREFIX_RE = re.compile(r"^[\t\n\f\r ]*ONBUILD[\t\n\f\r ]*", re.IGNORECASE)


@dataclass
class _Request:
    node: Node
    args: list[str]
    heredocs: tuple[Heredoc, ...]
    line: int
    end_line: int

    def flags(self, keyword: str | None = None) -> _Flags:
        return _Flags(self.node.flags, _FLAGS.get(keyword or self.node.keyword, {}))

    def common(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "end_line": self.end_line,
            "original": self.node.original,
            "flags": tuple(self.node.flags),
        }


def _node_args(node: Node) -> list[str]:
    out: list[str] = []
    for arg in node.args():
        if not arg.children:
            out.append(arg.value)
        elif len(arg.children) == 1:  # ONBUILD's sub-instruction
            out.append(arg.children[0].value)
            out.extend(_node_args(arg.children[0]))
    return out


def _exactly_one(req: _Request, name: str) -> str:
    if len(req.args) != 1:
        raise LineError(f"{name} requires exactly one argument")
    req.flags()
    return req.args[0]


def _at_least_one(req: _Request, name: str) -> None:
    if not req.args:
        raise LineError(f"{name} requires at least one argument")


def _json_args(req: _Request) -> tuple[str, ...]:
    if not req.args:
        return ()
    return tuple(req.args) if req.node.is_json else (" ".join(req.args),)


def _key_values(req: _Request, name: str) -> tuple[KeyValue, ...]:
    req.flags()
    _at_least_one(req, name)
    if len(req.args) % 3:
        raise LineError(f"Bad input to {name}, too many arguments")
    pairs = []
    for i in range(0, len(req.args), 3):
        if not req.args[i]:
            raise LineError(f"{name} names can not be blank")
        pairs.append(KeyValue(req.args[i], req.args[i + 1], legacy=req.args[i + 2] == ""))
    return tuple(pairs)


def _parse_from(req: _Request) -> FromInstruction:
    args = req.args
    name = None
    if len(args) == 3 and args[1].lower() == "as":
        name = args[2].lower()
        if not _STAGE_NAME_RE.match(name):
            raise LineError(
                f"invalid name for build stage: {args[2]!r}, name can't start with a number or contain symbols"
            )
    elif len(args) != 1:
        raise LineError("FROM requires either one or three arguments")
    return FromInstruction(base=args[0], name=name, platform=req.flags().string("platform"), **req.common())


def _parse_run(req: _Request) -> RunInstruction:
    flags = req.flags()
    network = flags.string("network") or "default"
    if network not in ("default", "none", "host"):
        raise LineError(f"invalid network mode {network!r}")
    security = flags.string("security") or "sandbox"
    if security not in ("sandbox", "insecure"):
        raise LineError(f"security {security!r} is not valid")
    specs = flags.strings("mount")
    return RunInstruction(
        command=_json_args(req),
        prepend_shell=not req.node.is_json,
        heredocs=req.heredocs,
        mount_specs=specs,
        mounts=tuple(parse_mount(spec) for spec in specs),
        network=network,
        security=security,
        **req.common(),
    )


def _parse_healthcheck(req: _Request) -> HealthcheckInstruction:
    _at_least_one(req, "HEALTHCHECK")
    kind, rest = req.args[0].upper(), req.args[1:]
    if kind == "NONE":
        if rest:
            raise LineError("HEALTHCHECK NONE takes no arguments")
        req.flags("none")
        return HealthcheckInstruction(test=("NONE",), **req.common())
    flags = req.flags()
    if kind != "CMD":
        raise LineError(f'Unknown type "{kind}" in HEALTHCHECK (try CMD)')
    command = tuple(rest) if req.node.is_json else ((" ".join(rest),) if rest else ())
    if not command:
        raise LineError("Missing command after HEALTHCHECK CMD")
    interval, timeout, start_period, start_interval = (
        _interval(flags, name) for name in ("interval", "timeout", "start-period", "start-interval")
    )
    retries = 0
    text = flags.string("retries")
    if text:
        if not re.fullmatch(r"[+-]?[0-9]+", text) or not -(2**31) <= int(text) < 2**31:
            raise LineError(f"invalid value for --retries: {text!r}")
        retries = int(text)
        if retries < 0:
            raise LineError(f"--retries cannot be negative ({retries})")
    test = ("CMD", *command) if req.node.is_json else ("CMD-SHELL", *command)
    return HealthcheckInstruction(
        test=test,
        interval=interval,
        timeout=timeout,
        start_period=start_period,
        start_interval=start_interval,
        retries=retries,
        **req.common(),
    )


def _interval(flags: _Flags, name: str) -> int:
    value = flags.string(name)
    nanos = parse_duration(value) if value else 0
    if 0 != nanos < 1_000_000:  # 0 means "inherit"; anything else must be at least 1ms
        raise LineError(f'Interval "{name}" cannot be less than 1ms')
    return nanos


def _parse_arg(req: _Request) -> ArgInstruction:
    _at_least_one(req, "ARG")
    req.flags()
    args = []
    for word in req.args:
        key, has_value, value = word.partition("=")
        if has_value and not key:
            raise LineError("ARG names can not be blank")
        args.append(ArgDefinition(key, value if has_value else None))
    return ArgInstruction(args=tuple(args), **req.common())


def _parse_shell(req: _Request) -> ShellInstruction:
    req.flags()
    if not req.args:
        raise LineError("SHELL requires at least one argument")
    if not req.node.is_json:
        raise LineError("SHELL requires the arguments to be in JSON form")
    return ShellInstruction(shell=tuple(req.args), **req.common())


def _parse_volume(req: _Request) -> VolumeInstruction:
    _at_least_one(req, "VOLUME")
    req.flags()
    paths = tuple(p.strip() for p in req.args)
    if "" in paths:
        raise LineError("VOLUME specified can not be an empty string")
    return VolumeInstruction(paths=paths, **req.common())


def _require_destination(req: _Request, name: str) -> None:
    if len(req.args) < 2:
        raise LineError(
            f"{name} requires at least two arguments, but only one was provided. Destination could not be determined"
        )


def _file_fields(req: _Request, name: str, flags: _Flags) -> dict[str, Any]:
    *sources, dest = req.args
    if parse_heredoc_quietly(dest) is not None:
        raise LineError(f"{name} cannot accept a heredoc as a destination")
    docs = {doc.name: doc for doc in req.heredocs}
    paths, contents = [], []
    for src in sources:
        doc = parse_heredoc_quietly(src)
        if doc is None:
            paths.append(src)
            continue
        data = docs[doc.name].content if doc.name in docs else ""
        contents.append(
            SourceContent(doc.name, chomp_heredoc_content(data) if doc.chomp else data, doc.expand)
        )
    chmod = flags.string("chmod") or None
    return {
        "sources": tuple(paths),
        "contents": tuple(contents),
        "dest": dest,
        "chown": flags.string("chown") or None,
        "chmod": chmod,
        "chmod_mode": parse_chmod(chmod) if chmod and "$" not in chmod else None,
        "link": flags.boolean("link"),
        "excludes": flags.strings("exclude"),
        **req.common(),
    }


def parse_heredoc_quietly(word: str) -> Heredoc | None:
    """BuildKit's MustParseHeredoc: the heredoc a word opens, or None (also when malformed)."""
    try:
        return parse_heredoc(word)
    except KilnError:
        return None


def _parse_copy(req: _Request) -> CopyInstruction:
    _require_destination(req, "COPY")
    flags = req.flags()
    return CopyInstruction(
        from_=flags.string("from"), parents=flags.boolean("parents"), **_file_fields(req, "COPY", flags)
    )


def _parse_add(req: _Request) -> AddInstruction:
    _require_destination(req, "ADD")
    flags = req.flags()
    unpack = flags.boolean("unpack") if "unpack" in flags.values else None
    return AddInstruction(
        checksum=flags.string("checksum"),
        keep_git_dir=flags.boolean("keep-git-dir"),
        unpack=unpack,
        **_file_fields(req, "ADD", flags),
    )


def _parse_onbuild(req: _Request) -> OnbuildInstruction:
    child = req.node.next.children[0] if req.node.next is not None and req.node.next.children else None
    if child is None:
        raise LineError("ONBUILD requires at least one argument")
    req.flags()
    trigger = child.value.upper()
    if trigger == "ONBUILD":
        raise LineError("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger in ("MAINTAINER", "FROM"):
        raise LineError(f"{trigger} isn't allowed as an ONBUILD trigger")
    expression = _ONBUILD_PREFIX_RE.sub("", req.node.original, count=1)
    for doc in req.heredocs:
        expression += "\n" + doc.content + doc.name
    parsed = _parse_node(child, req.heredocs, req.line, req.end_line)
    return OnbuildInstruction(expression=expression, trigger=parsed, **req.common())


def _parse_cmd(req: _Request) -> CmdInstruction:
    req.flags()
    return CmdInstruction(command=_json_args(req), prepend_shell=not req.node.is_json, **req.common())


def _parse_entrypoint(req: _Request) -> EntrypointInstruction:
    req.flags()
    return EntrypointInstruction(command=_json_args(req), prepend_shell=not req.node.is_json, **req.common())


def _parse_expose(req: _Request) -> ExposeInstruction:
    _at_least_one(req, "EXPOSE")
    req.flags()
    return ExposeInstruction(ports=tuple(req.args), **req.common())


_PARSERS: dict[str, Callable[[_Request], Instruction]] = {
    "from": _parse_from,
    "run": _parse_run,
    "cmd": _parse_cmd,
    "entrypoint": _parse_entrypoint,
    "env": lambda r: EnvInstruction(pairs=_key_values(r, "ENV"), **r.common()),
    "label": lambda r: LabelInstruction(pairs=_key_values(r, "LABEL"), **r.common()),
    "arg": _parse_arg,
    "expose": _parse_expose,
    "volume": _parse_volume,
    "user": lambda r: UserInstruction(user=_exactly_one(r, "USER"), **r.common()),
    "workdir": lambda r: WorkdirInstruction(path=_exactly_one(r, "WORKDIR"), **r.common()),
    "shell": _parse_shell,
    "healthcheck": _parse_healthcheck,
    "stopsignal": lambda r: StopsignalInstruction(signal=_exactly_one(r, "STOPSIGNAL"), **r.common()),
    "maintainer": lambda r: MaintainerInstruction(maintainer=_exactly_one(r, "MAINTAINER"), **r.common()),
    "onbuild": _parse_onbuild,
    "copy": _parse_copy,
    "add": _parse_add,
}


def _parse_node(node: Node, heredocs: tuple[Heredoc, ...], line: int, end_line: int) -> Instruction:
    parser = _PARSERS.get(node.keyword)
    if parser is None:
        raise LineError(f"unknown instruction: {node.value.upper()}{_suggest(node.keyword, _PARSERS)}")
    return parser(_Request(node, _node_args(node), heredocs, line, end_line))


def parse_instruction(node: Node, result: ParseResult) -> Instruction:
    """Type one top-level AST node (raises a located DockerfileError)."""
    try:
        return _parse_node(node, tuple(node.heredocs), node.start_line, node.end_line)
    except LineError as e:
        raise result.error(node.start_line, e.message, node.end_line) from None


def parse_dockerfile(text: str | bytes, filename: str = "Dockerfile") -> Dockerfile:
    """Parse a Dockerfile into directives, meta ARGs (before the first FROM) and stages."""
    result = parse(text, filename)
    meta_args: list[ArgInstruction] = []
    stages: list[tuple[FromInstruction, list[Instruction]]] = []
    for node in result.ast.children:
        instruction = parse_instruction(node, result)
        if isinstance(instruction, FromInstruction):
            stages.append((instruction, []))
        elif stages:
            stages[-1][1].append(instruction)
        elif isinstance(instruction, ArgInstruction):
            meta_args.append(instruction)
        else:
            raise result.error(
                node.start_line,
                f"{instruction.keyword} before the first FROM: no build stage in current context (only ARG may precede FROM)",
                node.end_line,
            )
    return Dockerfile(
        filename=filename,
        directives=result.directives,
        escape=result.escape_token,
        meta_args=tuple(meta_args),
        stages=tuple(
            Stage(i, f.name, f.base, f.platform, f.line, f, tuple(body)) for i, (f, body) in enumerate(stages)
        ),
        warnings=result.warnings,
        source_lines=result.source_lines,
    )
