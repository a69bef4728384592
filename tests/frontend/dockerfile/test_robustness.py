"""Bad input of any shape gives a KilnError, never a traceback."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kiln.build.ignore import IgnoreMatcher, IgnorePatternError
from kiln.frontend.dockerfile import (
    DockerfileError,
    ExpansionError,
    LineError,
    dump_result,
    expand,
    expand_words,
    parse,
    parse_chmod,
    parse_dockerfile,
    parse_mount,
)

# fragments that reach the interesting corners: flags, heredocs, quotes, escapes, directives
FRAGMENTS = st.sampled_from(
    [*"FROMRUNCOPYADDENV \t\n\\`\"'$={}[]:#-+%/?*<>,0x", "--mount=", "type=secret,", "type=cache,",
     "<<EOF", "\nEOF\n", "${", "ONBUILD ", "COPY --chmod=", "HEALTHCHECK --interval=", "# escape=`\n",
     "--link", "FROM a\n", "é", "\r"]
)  # fmt: skip
TEXTS = st.lists(FRAGMENTS, max_size=40).map("".join)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@SETTINGS
@given(TEXTS)
def test_dockerfiles_parse_or_fail_with_a_located_error(text: str) -> None:
    for source in (text, "FROM base\n" + text):
        try:
            dump_result(parse(source))
            parse_dockerfile(source)
        except DockerfileError as e:
            assert str(e).startswith("Dockerfile:")


@SETTINGS
@given(st.binary(max_size=80))
def test_arbitrary_bytes(data: bytes) -> None:
    try:
        dump_result(parse(b"FROM a\n" + data))
    except DockerfileError:
        pass


@SETTINGS
@given(TEXTS)
def test_words_and_flag_values(text: str) -> None:
    for escape in ("\\", "`"):
        try:
            expand(text, {"a": "x y", "b": ""}, escape)
            expand_words(text, {"a": "x y"}, escape)
        except ExpansionError:
            pass
    for parser in (parse_mount, parse_chmod):
        try:
            parser(text)
        except LineError:
            pass
    try:
        matcher = IgnoreMatcher.from_text(text)
        matcher.is_excluded("a/b/c")
        matcher.might_include_children("a")
    except IgnorePatternError:
        pass
