"""Parsing ``WWW-Authenticate`` headers (RFC 7235), robustly.

A header holds one or more challenges: ``Bearer realm="https://a/token",service="reg",
scope="repository:x:pull,push"``, ``Basic realm="r"``, or both separated by commas. Quoted
strings may contain commas, spaces and backslash escapes; parameter names are case-insensitive.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN68_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


@dataclass(frozen=True)
class Challenge:
    scheme: str  # lower case: "basic", "bearer"
    params: dict[str, str] = field(default_factory=dict)  # lower-case names
    token68: str | None = None

    @property
    def realm(self) -> str | None:
        return self.params.get("realm")

    @property
    def service(self) -> str | None:
        return self.params.get("service")

    @property
    def scopes(self) -> list[str]:
        """The challenge's ``scope``, which may list several space-separated scopes."""
        return self.params.get("scope", "").split()


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_ws(self) -> None:
        while self.peek() in (" ", "\t"):
            self.pos += 1

    def skip_separators(self) -> None:
        while self.peek() in (" ", "\t", ","):
            self.pos += 1

    def token(self) -> str | None:
        m = _TOKEN_RE.match(self.text, self.pos)
        if not m:
            return None
        self.pos = m.end()
        return m.group(0)

    def quoted(self) -> str:
        # Caller saw the opening quote. An unterminated string runs to the end (lenient).
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == "\\" and self.pos + 1 < len(self.text):
                out.append(self.text[self.pos + 1])
                self.pos += 2
                continue
            self.pos += 1
            if c == '"':
                break
            out.append(c)
        return "".join(out)


def _param(sc: _Scanner) -> tuple[str, str] | None:
    """``name = value`` at the cursor, or None (cursor unchanged) when what follows is not one."""
    start = sc.pos
    name = sc.token()
    if name is None:
        return None
    sc.skip_ws()
    if sc.peek() != "=":
        sc.pos = start
        return None
    sc.pos += 1
    sc.skip_ws()
    value = sc.quoted() if sc.peek() == '"' else sc.token() or ""
    return name.lower(), value


def parse_challenges(header: str) -> list[Challenge]:
    """Every challenge in one header value, in order. Garbage is skipped, never raised on."""
    sc = _Scanner(header)
    out: list[Challenge] = []
    while True:
        sc.skip_separators()
        if sc.at_end():
            return out
        scheme = sc.token()
        if scheme is None:
            sc.pos += 1  # not a token: skip one character and resynchronise
            continue
        sc.skip_ws()
        params: dict[str, str] = {}
        token68: str | None = None
        # token68 form: `Scheme abc123==` followed by end or a comma.
        m = _TOKEN68_RE.match(sc.text, sc.pos)
        if m:
            after = sc.text[m.end() :].lstrip(" \t")
            if after == "" or after.startswith(","):
                token68 = m.group(0)
                sc.pos = m.end()
        if token68 is None:
            while True:
                mark = sc.pos
                sc.skip_separators()
                p = _param(sc)
                if p is None:
                    sc.pos = mark
                    break
                params.setdefault(p[0], p[1])
        out.append(Challenge(scheme=scheme.lower(), params=params, token68=token68))


def parse_all(headers: list[str]) -> list[Challenge]:
    out: list[Challenge] = []
    for h in headers:
        out.extend(parse_challenges(h))
    return out
