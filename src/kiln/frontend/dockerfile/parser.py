"""Dockerfile lexer and line parser: source text to a BuildKit-shaped AST.

The tree has BuildKit's shape on purpose (`Node.value`, a `next` chain of arguments, `children`
for ONBUILD) so that `dump()` reproduces BuildKit's parser test results byte for byte and the
typed layer (instructions.py) can follow BuildKit's rules directly.

    >>> result = parse("FROM alpine AS base\\nRUN echo hi\\n")
    >>> [(n.keyword, n.start_line, [a.value for a in n.args()]) for n in result.ast.children]
    [('from', 1, ['alpine', 'AS', 'base']), ('run', 2, ['echo hi'])]

Errors are `DockerfileError`s whose message is `FILE:LINE: reason`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from kiln.errors import KilnError
from kiln.frontend.dockerfile.dump import go_quote
from kiln.frontend.dockerfile.shell import (
    ExpansionError,
    ShellLexer,
    go_trim_left_space,
    go_trim_space,
    is_go_space,
)


class DockerfileError(KilnError):
    """Bad Dockerfile input, located: the message reads `FILE:LINE: reason`.

    `source_line` is the text of the offending physical line (for the CLI to print under the
    message); `source_lines` holds every line of a multi-line instruction.
    """

    def __init__(
        self,
        filename: str,
        line: int,
        reason: str,
        *,
        source_lines: tuple[str, ...] = (),
        end_line: int | None = None,
    ) -> None:
        super().__init__(f"{filename}:{line}: {reason}")
        self.filename = filename
        self.line = line
        self.end_line = end_line if end_line is not None else line
        self.reason = reason
        self.source_lines = source_lines
        self.source_line = source_lines[0] if source_lines else ""


class LineError(KilnError):
    """An error about one line's text, not yet located. Whoever knows the line number turns it
    into a DockerfileError (`ParseResult.error(line, e.message)`)."""


@dataclass(frozen=True)
class Heredoc:
    """A here-document attached to RUN/COPY/ADD: `<<EOF`, `<<-EOF` (chomp), `<<"EOF"` (no expand)."""

    name: str
    file_descriptor: int = 0
    expand: bool = True
    chomp: bool = False
    content: str = ""


@dataclass(eq=False)
class Node:
    """One AST node, as BuildKit's parser.Node: `value`, then arguments chained through `next`."""

    value: str = ""
    next: Node | None = None
    children: list[Node] = field(default_factory=list)
    heredocs: list[Heredoc] = field(default_factory=list)
    attributes: dict[str, bool] = field(default_factory=dict)
    original: str = ""
    flags: list[str] = field(default_factory=list)
    start_line: int = 0
    end_line: int = 0
    prev_comment: list[str] = field(default_factory=list)

    @property
    def keyword(self) -> str:
        """The instruction name in lower case (`value` keeps the case it was written in)."""
        return self.value.lower()

    @property
    def is_json(self) -> bool:
        return self.attributes.get("json", False)

    def args(self) -> Iterator[Node]:
        node = self.next
        while node is not None:
            yield node
            node = node.next


@dataclass(frozen=True)
class Directive:
    """A parser directive (`# syntax=...`, `# escape=...`, `# check=...`) and its line."""

    name: str
    value: str
    line: int


@dataclass(frozen=True)
class ParseWarning:
    message: str
    line: int


@dataclass(frozen=True)
class ParseResult:
    ast: Node
    escape_token: str
    directives: tuple[Directive, ...]
    warnings: tuple[ParseWarning, ...]
    source_lines: tuple[str, ...]
    filename: str

    def error(self, start_line: int, reason: str, end_line: int | None = None) -> DockerfileError:
        """A DockerfileError located at `start_line`, carrying its source text."""
        return _located(self.filename, self.source_lines, start_line, end_line, reason)


def _located(
    filename: str, lines: tuple[str, ...], start: int, end: int | None, reason: str
) -> DockerfileError:
    end = start if end is None or end < start else end
    text = tuple(lines[i - 1] for i in range(max(start, 1), end + 1) if i - 1 < len(lines))
    return DockerfileError(filename, start, reason, source_lines=text, end_line=end)


_VALID_DIRECTIVES = frozenset({"syntax", "escape", "check"})
# Go regexp: \s is [\t\n\f\r ] and `.` is any character but \n.
_DIRECTIVE_RE = re.compile(r"([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*\Z")
_WHITESPACE_RE = re.compile(r"[\t\v\f\r ]+")
_HEREDOC_RE = re.compile(r"\A([0-9]*)<<(-?)([^<]*)\Z")
_LEADING_TABS_RE = re.compile(r"^\t+", re.MULTILINE)
_HEREDOC_INSTRUCTIONS = frozenset({"add", "copy", "run"})


class _Directives:
    """Directive state. Directives are only recognised until the first line that is not one
    (instruction, other comment or blank line); each may appear once."""

    def __init__(self) -> None:
        self.done = False
        self.seen: set[str] = set()
        self.found: list[Directive] = []
        self.escape = "\\"
        self.continuation = _continuation_re("\\")

    def set_escape(self, value: str) -> None:
        if value not in ("`", "\\"):
            raise LineError(f"invalid escape token '{value}' does not match ` or \\")
        self.escape = value
        self.continuation = _continuation_re(value)

    def parse_line(self, line: str, number: int) -> bool:
        if self.done:
            return False
        if not line.startswith("#"):
            self.done = True
            return False
        m = _DIRECTIVE_RE.match(go_trim_left_space(line[1:]))
        if m is None or m.group(1).lower() not in _VALID_DIRECTIVES:
            self.done = True
            return False
        name = m.group(1).lower()
        if name in self.seen:
            raise LineError(f"only one {name} parser directive can be used")
        self.seen.add(name)
        if name == "escape":
            self.set_escape(m.group(2))
        self.found.append(Directive(name, m.group(2), number))
        return True


def _continuation_re(escape: str) -> re.Pattern[str]:
    # The escape token continues a line when it is the last non-blank character, unless it is
    # itself escaped (`foo \\` ends the line) -- BuildKit's rule, see the trailing-backslash case.
    e = re.escape(escape)
    return re.compile(rf"([^{e}]){e}[ \t]*\Z|^{e}[ \t]*\Z")


def _is_comment(line: str) -> bool:
    return go_trim_left_space(line).startswith("#")


def _trim_newline(line: str) -> str:
    return line.rstrip("\r\n")


def _split_lines(text: str) -> list[str]:
    """Split after each \\n, keeping line endings (Go bufio with BuildKit's scanLines)."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def parse(source: str | bytes, filename: str = "Dockerfile") -> ParseResult:
    """Parse Dockerfile text into an AST. Bytes are decoded as UTF-8; invalid bytes survive."""
    text = source.decode("utf-8", "surrogateescape") if isinstance(source, bytes) else source
    lines = _split_lines(text)
    if lines:
        lines[0] = lines[0].removeprefix("\ufeff")
    plain = tuple(_trim_newline(line) for line in lines)
    d = _Directives()
    root = Node(start_line=-1)
    warnings: list[ParseWarning] = []
    comments: list[str] = []
    current = 0
    i = 0

    def fail(start: int, end: int | None, reason: str) -> DockerfileError:
        return _located(filename, plain, start, end, reason)

    while i < len(lines):
        raw = lines[i]
        i += 1
        if _is_comment(raw):
            comment = go_trim_space(raw[1:])
            if comment:
                comments.append(comment)
            else:
                comments = []
        token = go_trim_left_space(_trim_newline(raw))
        try:
            if d.parse_line(token, current + 1) and comments:
                comments.pop()  # a directive is not documentation for the next instruction
        except LineError as e:
            raise fail(current + 1, None, e.message) from None
        token = "" if _is_comment(token) else token
        current += 1
        start = current
        token, end_of_line = _trim_continuation(token, d)
        if end_of_line and not token:
            continue
        parts = [token]
        empty_continuation = False
        while not end_of_line and i < len(lines):
            raw = lines[i]
            i += 1
            current += 1
            if _is_comment(raw):
                continue
            token = _trim_newline(raw)
            if not go_trim_left_space(token):
                empty_continuation = True
                continue
            token, end_of_line = _trim_continuation(token, d)
            parts.append(token)
        line = "".join(parts)
        if empty_continuation:
            warnings.append(ParseWarning(f"Empty continuation line found in: {line}", current))

        try:
            child = _node_from_line(line, d, comments)
            heredocs = _heredocs_from_line(line) if _can_contain_heredoc(child) and "<<" in line else []
        except (LineError, ExpansionError) as e:
            raise fail(start, current, e.message) from None
        for doc in heredocs:
            content: list[str] = []
            terminated = False
            while i < len(lines):
                raw = lines[i]
                i += 1
                current += 1
                candidate = _trim_newline(raw)
                if doc.chomp:
                    candidate = candidate.lstrip("\t")
                if candidate == doc.name:
                    terminated = True
                    break
                content.append(raw)
            if not terminated:
                raise fail(start, current, f"unterminated heredoc {doc.name!r}")
            child.heredocs.append(
                Heredoc(doc.name, doc.file_descriptor, doc.expand, doc.chomp, "".join(content))
            )
        _add_child(root, child, start, current)
        comments = []

    if root.start_line < 0:
        raise fail(max(current, 1), None, "file with no instructions")
    return ParseResult(root, d.escape, tuple(d.found), tuple(warnings), plain, filename)


def _add_child(root: Node, child: Node, start: int, end: int) -> None:
    _set_lines(child, start, end)
    if root.start_line < 0:
        root.start_line = start
    root.end_line = end
    root.children.append(child)


def _set_lines(node: Node, start: int, end: int) -> None:
    # BuildKit only locates top-level nodes; kiln locates arguments and ONBUILD's sub-instruction
    # too, so that any node can be reported
    node.start_line, node.end_line = start, end
    for child in node.children:
        _set_lines(child, start, end)
    for arg in node.args():
        _set_lines(arg, start, end)


def _trim_continuation(line: str, d: _Directives) -> tuple[str, bool]:
    if d.continuation.search(line):
        return d.continuation.sub(r"\1", line), False
    return line, True


def _can_contain_heredoc(node: Node) -> bool:
    if node.keyword == "onbuild" and node.next is not None and node.next.children:
        node = node.next.children[0]
    return node.keyword in _HEREDOC_INSTRUCTIONS and not node.is_json


def parse_heredoc(word: str) -> Heredoc | None:
    """The heredoc a word like `<<EOF`, `<<-"EOF"` or `3<<EOF` opens, or None."""
    m = _HEREDOC_RE.match(word)
    if m is None or not m.group(3):
        return None
    fd = int(m.group(1)) if m.group(1) else 0
    rest = m.group(3)
    words = ShellLexer(skip_unset_env=True).process_words(rest, {})
    if len(words) != 1:
        return None
    raw = ShellLexer(skip_unset_env=True, raw_quotes=True).process_words(rest, {})
    if len(raw) != len(words):
        raise LineError(f"internal lexing of heredoc produced inconsistent results: {rest}")
    # a quoted part in the delimiter (quotes vanish in `words`, stay in `raw`) means: no expansion
    quotes = words[0].count("'") + words[0].count('"')
    raw_quotes = raw[0].count("'") + raw[0].count('"')
    return Heredoc(words[0], fd, expand=quotes == raw_quotes, chomp=m.group(2) == "-")


def chomp_heredoc_content(content: str) -> str:
    """Strip leading tabs from every line, as `<<-EOF` asks."""
    return _LEADING_TABS_RE.sub("", content)


def _heredocs_from_line(line: str) -> list[Heredoc]:
    # BuildKit lexes the whole line with the default escape, keeping quotes, escapes and unset
    # variables, and ignores lexing errors (no heredocs then).
    lexer = ShellLexer(raw_quotes=True, raw_escapes=True, skip_unset_env=True)
    try:
        words = lexer.process_words(line, {})
    except ExpansionError:
        return []
    docs = []
    for word in words:
        doc = parse_heredoc(word)
        if doc is not None:
            docs.append(doc)
    return docs


# ---- line parsers: one per instruction kind, each turning the argument text into a `next` chain


def _chain(values: list[str]) -> Node | None:
    head: Node | None = None
    prev: Node | None = None
    for value in values:
        node = Node(value)
        if prev is None:
            head = node
        else:
            prev.next = node
        prev = node
    return head


def _node_from_line(line: str, d: _Directives, comments: list[str] | None) -> Node:
    cmd, flags, args = _split_command(line)
    parser = _DISPATCH.get(cmd.lower(), _parse_ignore)
    nxt, attrs = parser(args, d)
    return Node(
        value=cmd,
        original=line,
        flags=flags,
        next=nxt,
        attributes=attrs,
        prev_comment=list(comments or []),
    )


def _split_command(line: str) -> tuple[str, list[str], str]:
    cmdline = _WHITESPACE_RE.split(go_trim_space(line), maxsplit=1)
    args, flags = "", list[str]()
    if len(cmdline) == 2:
        args, flags = _extract_builder_flags(cmdline[1])
    return cmdline[0], flags, go_trim_space(args)


def _extract_builder_flags(line: str) -> tuple[str, list[str]]:
    """Split leading `--flag[=value]` words off the arguments; `--` ends the flags.

    Flags always use backslash as escape, whatever the escape directive says (as BuildKit).
    """
    words: list[str] = []
    word: list[str] = []
    phase, quote, blank_ok = _SPACES, "", False
    pos, n = 0, len(line)
    while pos <= n:
        ch = line[pos] if pos < n else ""
        if phase == _SPACES:
            if pos == n:
                break
            if is_go_space(ch):
                pos += 1
                continue
            if not line.startswith("--", pos):
                return line[pos:], words
            phase = _WORD
        if pos == n:
            if "".join(word) != "--" and (blank_ok or word):
                words.append("".join(word))
            break
        if phase == _WORD:
            if is_go_space(ch):
                phase = _SPACES
                if "".join(word) == "--":
                    return line[pos:], words
                if blank_ok or word:
                    words.append("".join(word))
                word, blank_ok = [], False
            elif ch in "'\"":
                quote, blank_ok, phase = ch, True, _QUOTE
            elif ch == "\\" and pos + 1 == n:
                pass  # a trailing backslash vanishes
            else:
                if ch == "\\":
                    pos += 1
                    ch = line[pos]
                word.append(ch)
        elif ch == quote or (ch == "\\" and pos + 1 == n):
            phase = _WORD  # a closing quote, or a trailing backslash that vanishes
        else:
            if ch == "\\":
                pos += 1
                ch = line[pos]
            word.append(ch)
        pos += 1
    return "", words


_SPACES, _WORD, _QUOTE = range(3)


def parse_words(rest: str, escape: str) -> list[str]:
    """Split ENV/LABEL/ARG arguments into words, keeping quotes and escapes (expansion removes
    them later); whitespace inside quotes does not split."""
    words: list[str] = []
    buf: list[str] = []
    phase, quote, blank_ok = _SPACES, "", False
    pos, n = 0, len(rest)
    while pos <= n:
        ch = rest[pos] if pos < n else ""
        if phase == _SPACES:
            if pos == n:
                break
            if is_go_space(ch):
                pos += 1
                continue
            phase = _WORD
        if pos == n:
            if blank_ok or buf:
                words.append("".join(buf))
            break
        if phase == _WORD:
            if is_go_space(ch):
                phase = _SPACES
                if blank_ok or buf:
                    words.append("".join(buf))
                buf, blank_ok = [], False
                pos += 1
                continue
            if ch in "'\"":
                quote, blank_ok, phase = ch, True, _QUOTE
            if ch == escape:
                if pos + 1 == n:
                    pos += 1
                    continue  # an escape at the very end vanishes
                # unquoted, an escape and the character after it are kept together, even a quote
                buf.append(ch)
                pos += 1
                ch = rest[pos]
            buf.append(ch)
        else:
            if ch == quote:
                phase = _WORD
            if ch == escape and quote != "'":
                if pos + 1 == n:
                    phase = _WORD
                    pos += 1
                    continue
                buf.append(ch)
                pos += 1
                ch = rest[pos]
            buf.append(ch)
        pos += 1
    return words


_Parsed = tuple[Node | None, dict[str, bool]]


def _parse_ignore(rest: str, d: _Directives) -> _Parsed:
    # unknown instructions parse (the typed layer rejects them, with a location)
    return Node(), {}


def _parse_sub_command(rest: str, d: _Directives) -> _Parsed:
    if not rest:
        return None, {}
    return Node(children=[_node_from_line(rest, d, None)]), {}


def _parse_name_val(rest: str, key: str, d: _Directives) -> Node | None:
    # `KEY name value` (legacy: the first word has no =) or `KEY name=value ...`; a third node
    # per pair records which (""/"=") so the typed layer can tell them apart.
    words = parse_words(rest, d.escape)
    if not words:
        return None
    if "=" not in words[0]:
        parts = _WHITESPACE_RE.split(rest, maxsplit=1)
        if len(parts) < 2:
            raise LineError(f"{key} must have two arguments")
        return _chain([parts[0], parts[1], ""])
    values: list[str] = []
    for word in words:
        if "=" not in word:
            raise LineError(
                f"Syntax error - can't find = in {go_quote(word)}. Must be of the form: name=value"
            )
        name, value = word.split("=", 1)
        values += [name, value, "="]
    return _chain(values)


def _parse_env(rest: str, d: _Directives) -> _Parsed:
    return _parse_name_val(rest, "ENV", d), {}


def _parse_label(rest: str, d: _Directives) -> _Parsed:
    return _parse_name_val(rest, "LABEL", d), {}


def _parse_name_or_name_val(rest: str, d: _Directives) -> _Parsed:
    return _chain(parse_words(rest, d.escape)), {}


def _parse_strings_whitespace_delimited(rest: str, d: _Directives) -> _Parsed:
    if not rest:
        return None, {}
    return _chain(_WHITESPACE_RE.split(rest)), {}


def _parse_string(rest: str, d: _Directives) -> _Parsed:
    return (Node(rest) if rest else None), {}


class _NotJSON(Exception):
    pass


def _reject_constant(value: str) -> object:
    raise ValueError(value)


def _finite(value: str) -> float:
    # Go cannot hold out-of-range numbers in float64 and fails the whole decode
    number = float(value)
    if math.isinf(number):
        raise ValueError(value)
    return number


_SURROGATE_RE = re.compile("[\ud800-\udfff]")


def _parse_json(rest: str) -> _Parsed:
    rest = go_trim_left_space(rest)
    if not rest.startswith("["):
        raise _NotJSON
    try:
        # Go's encoding/json: one document, no NaN/Infinity, invalid UTF-8 becomes U+FFFD
        value = json.loads(rest, parse_constant=_reject_constant, parse_float=_finite, parse_int=_finite)
    except ValueError:
        raise _NotJSON from None
    if not isinstance(value, list):
        raise _NotJSON
    strings: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise LineError("when using JSON array syntax, arrays must be comprised of strings only")
        strings.append(_SURROGATE_RE.sub("\ufffd", item))
    return _chain(strings), {"json": True}


def _parse_maybe_json(rest: str, d: _Directives) -> _Parsed:
    if not rest:
        return None, {}
    try:
        return _parse_json(rest)
    except _NotJSON:
        return Node(rest), {}


def _parse_maybe_json_to_list(rest: str, d: _Directives) -> _Parsed:
    try:
        return _parse_json(rest)
    except _NotJSON:
        return _parse_strings_whitespace_delimited(rest, d)


def _parse_health_config(rest: str, d: _Directives) -> _Parsed:
    # like CMD, with the type (CMD/NONE) first
    sep = 0
    while sep < len(rest) and not is_go_space(rest[sep]):
        sep += 1
    nxt = sep
    while nxt < len(rest) and is_go_space(rest[nxt]):
        nxt += 1
    if sep == 0:
        return None, {}
    cmd, attrs = _parse_maybe_json(rest[nxt:], d)
    return Node(rest[:sep], next=cmd), attrs


_DISPATCH = {
    "add": _parse_maybe_json_to_list,
    "arg": _parse_name_or_name_val,
    "cmd": _parse_maybe_json,
    "copy": _parse_maybe_json_to_list,
    "entrypoint": _parse_maybe_json,
    "env": _parse_env,
    "expose": _parse_strings_whitespace_delimited,
    "from": _parse_strings_whitespace_delimited,
    "healthcheck": _parse_health_config,
    "label": _parse_label,
    "maintainer": _parse_string,
    "onbuild": _parse_sub_command,
    "run": _parse_maybe_json,
    "shell": _parse_maybe_json,
    "stopsignal": _parse_string,
    "user": _parse_string,
    "volume": _parse_maybe_json_to_list,
    "workdir": _parse_string,
}
