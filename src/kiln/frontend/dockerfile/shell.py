"""Shell-style word lexing and variable expansion, with BuildKit's semantics.

This follows BuildKit's `frontend/dockerfile/shell` lexer rule for rule, because a Dockerfile must
mean the same thing under kiln as under `docker build`:

- `$VAR`, `${VAR}`, `${VAR:-x}`, `${VAR-x}`, `${VAR:+x}`, `${VAR+x}`, `${VAR:?msg}`, `${VAR?msg}`,
  `${VAR#pat}`, `${VAR##pat}`, `${VAR%pat}`, `${VAR%%pat}`, `${VAR/pat/rep}`, `${VAR//pat/rep}`;
- single quotes take everything literally; double quotes expand `$` and let the escape token
  escape only `"`, `$` and itself; outside quotes the escape token escapes any character;
- word splitting (`process_words`) happens after expansion; quoted text never splits.

    >>> expand("${NAME:-world}!", {})
    'world!'
    >>> expand_words('a "b c" $X', {"X": "d e"})
    ['a', 'b c', 'd', 'e']
    >>> ShellLexer().process_word("$A-$B", {"A": "1"}).unmatched
    frozenset({'B'})
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kiln.errors import KilnError

# Go's unicode.IsSpace: the Latin-1 spaces plus the Unicode White_Space property. Python's
# str.isspace() differs (it counts U+001C..U+001F), so BuildKit's set is spelled out.
GO_SPACE = frozenset(
    "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)

_EOF = ""


def is_go_space(ch: str) -> bool:
    return ch in GO_SPACE


def go_trim_space(s: str) -> str:
    """Go's strings.TrimSpace."""
    start, end = 0, len(s)
    while start < end and s[start] in GO_SPACE:
        start += 1
    while end > start and s[end - 1] in GO_SPACE:
        end -= 1
    return s[start:end]


def go_trim_left_space(s: str) -> str:
    i = 0
    while i < len(s) and s[i] in GO_SPACE:
        i += 1
    return s[i:]


def _is_letter(ch: str) -> bool:
    return unicodedata.category(ch).startswith("L")


def _is_digit(ch: str) -> bool:
    return unicodedata.category(ch) == "Nd"


class ExpansionError(KilnError):
    """A word could not be expanded: bad `${}` syntax, `${VAR:?msg}` on an unset variable, ..."""


@dataclass(frozen=True)
class Expansion:
    """The outcome of expanding one word.

    `matched` are the variables that were looked up and found, `unmatched` those looked up and not
    set: together they are what the word depended on (cache keys need exactly this).
    """

    result: str
    words: tuple[str, ...]
    matched: frozenset[str] = frozenset()
    unmatched: frozenset[str] = frozenset()


@dataclass
class _Words:
    """Accumulates words for word splitting; only unquoted, expanded whitespace splits."""

    buf: list[str] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    in_word: bool = False

    def add_char(self, ch: str) -> None:
        if ch in GO_SPACE:
            if self.in_word and any(self.buf):
                self.words.append("".join(self.buf))
                self.buf.clear()
                self.in_word = False
        else:
            self.add_raw_char(ch)

    def add_raw_char(self, ch: str) -> None:
        self.buf.append(ch)
        self.in_word = True

    def add_string(self, s: str) -> None:
        for ch in s:
            self.add_char(ch)

    def add_raw_string(self, s: str) -> None:
        self.buf.append(s)
        self.in_word = True

    def get_words(self) -> list[str]:
        if any(self.buf):
            self.words.append("".join(self.buf))
        self.buf.clear()
        self.in_word = False
        return self.words


class _Error(Exception):
    """Internal: carries a lexer message up to `ShellLexer._process`, which adds the word."""


class ShellLexer:
    """Configurable lexer; the flags mirror BuildKit's `shell.Lex` fields of the same names.

    raw_quotes keeps quote characters in the output, raw_escapes keeps escape tokens,
    skip_process_quotes treats quotes as ordinary characters, skip_unset_env leaves references to
    unset variables untouched (`$X` stays `$X`).
    """

    def __init__(
        self,
        escape_token: str = "\\",
        *,
        raw_quotes: bool = False,
        raw_escapes: bool = False,
        skip_process_quotes: bool = False,
        skip_unset_env: bool = False,
    ) -> None:
        if escape_token not in ("\\", "`"):
            raise ValueError(f"escape token must be \\ or `, not {escape_token!r}")
        self.escape_token = escape_token
        self.raw_quotes = raw_quotes
        self.raw_escapes = raw_escapes
        self.skip_process_quotes = skip_process_quotes
        self.skip_unset_env = skip_unset_env

    def process_word(self, word: str, env: Mapping[str, str]) -> Expansion:
        """Expand `word` as one word (quotes removed, whitespace kept), reporting lookups."""
        return _ShellWord(self, word, env).run()

    def process_words(self, word: str, env: Mapping[str, str]) -> list[str]:
        """Expand `word` and split it into words the way a shell would."""
        return list(_ShellWord(self, word, env).run().words)


class _ShellWord:
    def __init__(self, lexer: ShellLexer, source: str, env: Mapping[str, str]) -> None:
        self.lx = lexer
        self.src = source
        self.pos = 0
        self.env = env
        self.raw_escapes = lexer.raw_escapes
        self.matches: set[str] = set()
        self.nonmatches: set[str] = set()

    def run(self) -> Expansion:
        try:
            result, words = self.process_stop_on(_EOF, self.raw_escapes)
        except _Error as e:
            quoted = '"' + self.src.replace("\\", "\\\\").replace('"', '\\"') + '"'
            raise ExpansionError(f"failed to process {quoted}: {e}") from None
        return Expansion(result, tuple(words), frozenset(self.matches), frozenset(self.nonmatches))

    # scanner primitives (text/scanner's Peek/Next over runes)
    def peek(self) -> str:
        return self.src[self.pos] if self.pos < len(self.src) else _EOF

    def next(self) -> str:
        if self.pos >= len(self.src):
            return _EOF
        ch = self.src[self.pos]
        self.pos += 1
        return ch

    def process_stop_on(self, stop: str, raw_escapes: bool) -> tuple[str, list[str]]:
        result: list[str] = []
        words = _Words()
        saved_raw = self.raw_escapes
        self.raw_escapes = raw_escapes
        try:
            while self.peek() != _EOF:
                ch = self.peek()
                if stop != _EOF and ch == stop:
                    self.next()
                    return "".join(result), words.get_words()
                special = self._special(ch)
                if special is not None:
                    tmp = special()
                    result.append(tmp)
                    if ch == "$":
                        words.add_string(tmp)
                    else:
                        words.add_raw_string(tmp)
                    continue
                ch = self.next()
                if ch == self.lx.escape_token:
                    if self.raw_escapes:
                        words.add_raw_char(ch)
                        result.append(ch)
                    # the escape token escapes the next character; at the end it vanishes
                    ch = self.next()
                    if ch == _EOF:
                        break
                    words.add_raw_char(ch)
                else:
                    words.add_char(ch)
                result.append(ch)
            if stop != _EOF:
                raise _Error(f"unexpected end of statement while looking for matching {stop}")
            return "".join(result), words.get_words()
        finally:
            self.raw_escapes = saved_raw

    def _special(self, ch: str) -> Callable[[], str] | None:
        if ch == "$":
            return self.process_dollar
        if self.lx.skip_process_quotes:
            return None
        if ch == "'":
            return self.process_single_quote
        if ch == '"':
            return self.process_double_quote
        return None

    def process_single_quote(self) -> str:
        # POSIX: everything between single quotes is literal, and a single quote cannot be escaped.
        out: list[str] = []
        ch = self.next()
        if self.lx.raw_quotes:
            out.append(ch)
        while True:
            ch = self.next()
            if ch == _EOF:
                raise _Error("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                if self.lx.raw_quotes:
                    out.append(ch)
                return "".join(out)
            out.append(ch)

    def process_double_quote(self) -> str:
        # POSIX: inside double quotes only $, ` and \ stay special; the escape token escapes only
        # the quote, $ and itself and is otherwise literal.
        out: list[str] = []
        ch = self.next()
        if self.lx.raw_quotes:
            out.append(ch)
        while True:
            nxt = self.peek()
            if nxt == _EOF:
                raise _Error("unexpected end of statement while looking for matching double-quote")
            if nxt == '"':
                ch = self.next()
                if self.lx.raw_quotes:
                    out.append(ch)
                return "".join(out)
            if nxt == "$":
                out.append(self.process_dollar())
                continue
            ch = self.next()
            if ch == self.lx.escape_token:
                if self.raw_escapes:
                    out.append(ch)
                after = self.peek()
                if after == _EOF:
                    continue
                if after in ('"', "$", self.lx.escape_token):
                    ch = self.next()
            out.append(ch)

    def process_dollar(self) -> str:
        self.next()
        if self.peek() != "{":
            name = self.process_name()
            if not name:
                return "$"
            value, found = self.get_env(name)
            if not found and self.lx.skip_unset_env:
                return "$" + name
            return value

        self.next()
        if self.peek() == _EOF:
            raise _Error("syntax error: missing '}'")
        if self.peek() in ("{", "}", ":"):
            raise _Error("syntax error: bad substitution")
        name = self.process_name()
        ch = self.next()
        if ch == _EOF:
            raise _Error("syntax error: missing '}'")
        chs = ch
        if ch == "}":
            value, found = self.get_env(name)
            if not found and self.lx.skip_unset_env:
                return "${" + name + "}"
            return value
        if ch == "/":
            return self._substitute(name)
        if ch not in (":", "+", "-", "?", "#", "%"):
            raise _Error(f"unsupported modifier ({chs}) in substitution")
        null_is_unset = False
        if ch == ":":
            null_is_unset = True
            ch = self.next()
            chs += ch
        raw_escapes = ch in ("#", "%")
        if null_is_unset and raw_escapes:
            raise _Error(f"unsupported modifier ({chs}) in substitution")
        try:
            word, _ = self.process_stop_on("}", raw_escapes)
        except _Error:
            if self.peek() == _EOF:
                raise _Error("syntax error: missing '}'") from None
            raise

        value, found = self.get_env(name)
        if self.lx.skip_unset_env and not found:
            return "${" + name + chs + word + "}"
        if ch == "-":
            return word if not found or (null_is_unset and value == "") else value
        if ch == "+":
            return "" if not found or (null_is_unset and value == "") else word
        if ch == "?":
            if not found:
                raise _Error(f"{name}: {word or 'is not allowed to be unset'}")
            if null_is_unset and value == "":
                raise _Error(f"{name}: {word or 'is not allowed to be empty'}")
            return value
        if ch in ("%", "#"):
            # %/# remove the shortest match, %%/## the longest
            greedy = word.startswith(ch)
            if greedy:
                word = word[1:]
            if ch == "%":
                return _trim_suffix(word, value, greedy)
            return _trim_prefix(word, value, greedy)
        raise _Error(f"unsupported modifier ({chs}) in substitution")

    def _substitute(self, name: str) -> str:
        replace_all = self.peek() == "/"
        if replace_all:
            self.next()
        try:
            pattern, _ = self.process_stop_on("/", True)
        except _Error:
            if self.peek() == _EOF:
                raise _Error("syntax error: missing '/' in ${}") from None
            raise
        try:
            replacement, _ = self.process_stop_on("}", True)
        except _Error:
            if self.peek() == _EOF:
                raise _Error("syntax error: missing '}'") from None
            raise
        value, found = self.get_env(name)
        if self.lx.skip_unset_env and not found:
            return "${" + name + "/" + pattern + "/" + replacement + "}"
        rx = _shell_pattern_to_regex(pattern, greedy=True, anchored=False)
        if replace_all:
            return _go_replace_all(rx, value, replacement)
        m = rx.search(value)
        if m is None:
            return value
        return value[: m.start()] + replacement + value[m.end() :]

    def process_name(self) -> str:
        # a name is letters, digits and _; a leading digit reads only digits ($1); a special
        # parameter ($@, $#, ...) is one character
        name: list[str] = []
        while self.peek() != _EOF:
            ch = self.peek()
            if not name and _is_digit(ch):
                while self.peek() != _EOF and _is_digit(self.peek()):
                    name.append(self.next())
                return "".join(name)
            if not name and ch in "@*#?-$!0":
                return self.next()
            if not (_is_letter(ch) or _is_digit(ch) or ch == "_"):
                break
            name.append(self.next())
        return "".join(name)

    def get_env(self, name: str) -> tuple[str, bool]:
        if name in self.env:
            self.matches.add(name)
            return self.env[name], True
        self.nonmatches.add(name)
        return "", False


def _shell_pattern_to_regex(pattern: str, *, greedy: bool, anchored: bool) -> re.Pattern[str]:
    """POSIX shell pattern (`*`, `?`, backslash escapes; no bracket expressions) to a regex."""
    out = ["^"] if anchored else []
    star = ".*" if greedy else ".*?"
    i = 0
    while i < len(pattern):
        tok = pattern[i]
        i += 1
        if tok == "*":
            out.append(star)
            continue
        if tok == "?":
            out.append(".")
            continue
        if tok == "\\":
            nxt = pattern[i] if i < len(pattern) else _EOF
            # inside ${} the separators } and / are escaped, but the escape is not pattern syntax
            if nxt in ("}", "/"):
                continue
            i += 1
            if nxt not in ("*", "?", "\\"):
                raise _Error(f"invalid pattern ({pattern}) in substitution: invalid escape '\\{nxt}'")
            out.append("\\" + nxt)
            continue
        if tok in "[]{}.+()|^$":
            out.append("\\" + tok)
            continue
        out.append(tok)
    return re.compile("".join(out))


def _trim_prefix(pattern: str, value: str, greedy: bool) -> str:
    m = _shell_pattern_to_regex(pattern, greedy=greedy, anchored=True).match(value)
    return value[m.end() :] if m else value


def _reverse_pattern(pattern: str) -> str:
    # reverse, but keep each escape before the character it escapes: a\*c -> c\*a
    out = [""] * len(pattern)
    last = len(pattern) - 1
    i = 0
    while i <= last:
        tok = pattern[i]
        j = last - i
        if tok == "\\" and i != last:
            out[j - 1] = tok
            out[j] = pattern[i + 1]
            i += 2
        else:
            out[j] = tok
            i += 1
    return "".join(out)


def _trim_suffix(pattern: str, value: str, greedy: bool) -> str:
    # a regex cannot find the shortest rightmost match, so search the reversed string instead
    return _trim_prefix(_reverse_pattern(pattern), value[::-1], greedy)[::-1]


def _go_replace_all(rx: re.Pattern[str], src: str, template: str) -> str:
    """regexp.ReplaceAllString: Go skips an empty match right after a match, and expands $0/${0}
    in the replacement (the pattern has no groups, so any other $name expands to nothing)."""
    out: list[str] = []
    last_end = 0
    search = 0
    while search <= len(src):
        m = rx.search(src, search)
        if m is None:
            break
        a0, a1 = m.span()
        out.append(src[last_end:a0])
        if a1 > last_end or a0 == 0:
            out.append(_go_expand(template, m.group(0)))
        last_end = a1
        if search + 1 > a1:
            search += 1
        else:
            search = a1
    out.append(src[last_end:])
    return "".join(out)


def _go_expand(template: str, whole: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(template):
        ch = template[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        i += 1
        if template.startswith("$", i):
            out.append("$")
            i += 1
            continue
        brace = template.startswith("{", i)
        j = i + 1 if brace else i
        k = j
        while k < len(template) and (_is_letter(template[k]) or _is_digit(template[k]) or template[k] == "_"):
            k += 1
        if k == j or (brace and not template.startswith("}", k)):
            out.append("$")  # malformed reference: Go keeps the $ as text
            continue
        name = template[j:k]
        i = k + 1 if brace else k
        if name == "0":
            out.append(whole)
    return "".join(out)


_DEFAULT = ShellLexer()
_BACKTICK = ShellLexer("`")


def _lexer(escape: str) -> ShellLexer:
    return _DEFAULT if escape == "\\" else _BACKTICK if escape == "`" else ShellLexer(escape)


def expand(word: str, env: Mapping[str, str], escape: str = "\\") -> str:
    """Expand variables in `word` and remove its quotes (BuildKit's ProcessWord)."""
    return _lexer(escape).process_word(word, env).result


def expand_with_matches(word: str, env: Mapping[str, str], escape: str = "\\") -> Expansion:
    """Like `expand`, also reporting which variables the word used (for cache keys and lint)."""
    return _lexer(escape).process_word(word, env)


def expand_words(word: str, env: Mapping[str, str], escape: str = "\\") -> list[str]:
    """Expand `word` and split it into shell words (BuildKit's ProcessWords)."""
    return _lexer(escape).process_words(word, env)
