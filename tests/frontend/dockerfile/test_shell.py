"""Variable expansion and word splitting, case by case against BuildKit's shell lexer rules."""

from __future__ import annotations

import pytest

from kiln.frontend.dockerfile.shell import (
    ExpansionError,
    ShellLexer,
    expand,
    expand_with_matches,
    expand_words,
)

ENV = {
    "PWD": "/home",
    "SHELL": "bash",
    "KOREAN": "한국어",
    "NULL": "",
    "E": "a  b",
    "FILE": "/a/b/c.tar.gz",
    "X": "abc",
}

EXPANSIONS = [
    # plain text, quotes and escapes
    ("hello", "hello"),
    ("he'llo'", "hello"),
    ("he\\'llo", "he'llo"),
    ('"he\'llo"', "he'llo"),
    ("'he\"llo'", 'he"llo'),
    ("'$PWD'", "$PWD"),
    ('"$PWD"', "/home"),
    ("\\$PWD", "$PWD"),
    ('"\\$PWD"', "$PWD"),
    ('"\\a"', "\\a"),  # in double quotes the escape only escapes " $ and itself
    ("\\a", "a"),
    ("'\\a'", "\\a"),
    ('"\\\\"', "\\"),
    ('"a\\"b"', 'a"b'),
    ("a\\", "a"),  # a trailing escape vanishes
    ("'a b'\"c d\"", "a bc d"),
    # simple references
    ("$PWD/x", "/home/x"),
    ("${PWD}x", "/homex"),
    ("$PWDx", ""),
    ("${KOREAN}!", "한국어!"),
    ("$KOREAN", "한국어"),
    ("x$", "x$"),
    ("$ x", "$ x"),
    ("$1$@$#", ""),
    ("$12x", "x"),  # a name that starts with a digit is only digits
    # defaults and alternatives
    ("${NULL:-d}", "d"),
    ("${NULL-d}", ""),
    ("${NOPE-d}", "d"),
    ("${NOPE:-d}", "d"),
    ("${PWD:-d}", "/home"),
    ("${PWD:+set}", "set"),
    ("${NULL:+set}", ""),
    ("${NULL+set}", "set"),
    ("${NOPE+set}", ""),
    ("${NOPE:-$PWD}", "/home"),
    ("${NOPE:-'$PWD'}", "$PWD"),
    ('${NOPE:-"a  b"}', "a  b"),
    ("${NOPE:-a\\}b}", "a}b"),
    ("${NOPE:-${SHELL:-x}y}", "bashy"),
    ("${PWD?msg}", "/home"),
    ("${NULL?msg}", ""),
    ("${PWD:?msg}", "/home"),
    # pattern removal
    ("${PWD#/}", "home"),
    ("${PWD%me}", "/ho"),
    ("${SHELL%?}", "bas"),
    ("${SHELL#*a}", "sh"),
    ("${FILE##*/}", "c.tar.gz"),
    ("${FILE#*/}", "a/b/c.tar.gz"),
    ("${FILE%%.*}", "/a/b/c"),
    ("${FILE%.*}", "/a/b/c.tar"),
    ("${FILE%.zip}", "/a/b/c.tar.gz"),
    ("${X#\\*}", "abc"),
    ("${NOPE#x}", ""),
    # substitution
    ("${FILE/b/X}", "/a/X/c.tar.gz"),
    ("${FILE//\\//_}", "_a_b_c.tar.gz"),
    ("${FILE/#/x}", "/a/b/c.tar.gz"),  # no anchors: # is literal
    ("${X//*/-}", "-"),  # Go skips the empty match right after a match
    ("${X///-}", "-a-b-c-"),
    ("${X/?/}", "bc"),
    ("${X//b/\\$0\\$0}", "a\\b\\bc"),  # Go's ReplaceAllString expands $0 to the match
    ("${NOPE/a/b}", ""),
]


@pytest.mark.parametrize(("word", "expected"), EXPANSIONS)
def test_expand(word: str, expected: str) -> None:
    assert expand(word, ENV) == expected


@pytest.mark.parametrize(
    ("word", "message"),
    [
        ("${", "missing '}'"),
        ("${}", "bad substitution"),
        ("${:x}", "bad substitution"),
        ("${{x}", "bad substitution"),
        ("${PWD", "missing '}'"),
        ("${PWD:-x", "missing '}'"),
        ("${PWD:=x}", "unsupported modifier (:=)"),
        ("${PWD=x}", "unsupported modifier (=)"),
        ("${PWD:#x}", "unsupported modifier (:#)"),
        ("${PWD!}", "unsupported modifier (!)"),
        ("${NOPE:?custom $SHELL}", "NOPE: custom bash"),
        ("${NULL:?}", "NULL: is not allowed to be empty"),
        ("${NOPE?}", "NOPE: is not allowed to be unset"),
        ("'abc", "matching single-quote"),
        ('"abc', "matching double-quote"),
        ("${PWD#\\x}", "invalid escape"),
        ("${PWD//x}", "missing '/' in ${}"),
    ],
)
def test_expansion_errors(word: str, message: str) -> None:
    with pytest.raises(ExpansionError) as info:
        expand(word, ENV)
    assert message in str(info.value)
    assert str(info.value).startswith("failed to process")


@pytest.mark.parametrize(
    ("word", "words"),
    [
        ("a b  c", ["a", "b", "c"]),
        ("$E", ["a", "b"]),
        ('"$E"', ["a  b"]),
        ("x$E", ["xa", "b"]),
        ("'a  b' c", ["a  b", "c"]),
        ("a\\ b", ["a b"]),
        ('a"" b', ["a", "b"]),
        ('"" b', ["b"]),  # BuildKit drops an empty quoted word
        ("${NOPE:-p q}", ["p", "q"]),
        ("  ", []),
    ],
)
def test_word_splitting(word: str, words: list[str]) -> None:
    assert expand_words(word, ENV) == words


def test_matched_and_unmatched_variables_are_reported() -> None:
    result = expand_with_matches("$PWD ${B:-x} ${C+y} ${NULL:+z} ${FILE##*/}", ENV)
    assert result.result == "/home x   c.tar.gz"
    assert result.matched == {"PWD", "NULL", "FILE"}
    assert result.unmatched == {"B", "C"}


def test_backtick_escape_token() -> None:
    assert expand("`$PWD \\n", ENV, escape="`") == "$PWD \\n"
    assert expand('"a`"b"', ENV, escape="`") == 'a"b'
    assert expand_words("a` b c", ENV, escape="`") == ["a b", "c"]


def test_raw_modes_keep_quotes_escapes_and_unset_references() -> None:
    lexer = ShellLexer(raw_quotes=True, raw_escapes=True, skip_unset_env=True)
    assert (
        lexer.process_word("'a' \\\"$X ${Y:-z} ${Z#p} $PWD", {"PWD": "/h"}).result
        == "'a' \\\"$X ${Y:-z} ${Z#p} /h"
    )


def test_skip_process_quotes_treats_quotes_as_text() -> None:
    assert ShellLexer(skip_process_quotes=True).process_word("'$PWD' \"x\"", ENV).result == "'/home' \"x\""


def test_invalid_escape_token_is_refused() -> None:
    with pytest.raises(ValueError):
        ShellLexer("^")
