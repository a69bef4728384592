"""The Dockerfile lexer/line parser: directives, comments, continuations, heredocs, line numbers,
JSON and shell forms, flags, and located errors."""

from __future__ import annotations

import pytest

from kiln.errors import KilnError
from kiln.frontend.dockerfile.dump import dump, dump_result, go_quote
from kiln.frontend.dockerfile.parser import (
    DockerfileError,
    Heredoc,
    Node,
    chomp_heredoc_content,
    parse,
    parse_heredoc,
)


def nodes(text: str) -> list[Node]:
    return parse(text).ast.children


def dumped(text: str | bytes) -> list[str]:
    return dump_result(parse(text)).splitlines()


# ------------------------------------------------------------------------------- directives


def test_directives_are_read_case_insensitively_at_the_top() -> None:
    result = parse("# SYNTAX = docker/dockerfile:1.7\n#Escape=`\n#  check=skip=all\nFROM a\n")
    assert [(d.name, d.value, d.line) for d in result.directives] == [
        ("syntax", "docker/dockerfile:1.7", 1),
        ("escape", "`", 2),
        ("check", "skip=all", 3),
    ]
    assert result.escape_token == "`"


def test_backtick_escape_continues_lines_and_backslash_is_literal() -> None:
    result = parse("# escape=`\nFROM windows\nRUN dir c:\\ `\n  /s\n")
    assert result.ast.children[1].next is not None
    assert result.ast.children[1].next.value == "dir c:\\   /s"


def test_duplicate_directive_is_an_error_at_its_line() -> None:
    with pytest.raises(DockerfileError) as info:
        parse("# syntax=a\n# syntax=b\nFROM x\n", "df/Dockerfile")
    assert str(info.value) == "df/Dockerfile:2: only one syntax parser directive can be used"
    assert info.value.source_line == "# syntax=b"
    assert info.value.line == 2


def test_invalid_escape_value_is_an_error() -> None:
    with pytest.raises(DockerfileError, match=r"Dockerfile:1: invalid escape token '\^'"):
        parse("# escape=^\nFROM x\n")


@pytest.mark.parametrize(
    "text",
    [
        "# a comment\n# escape=`\nFROM x\nRUN a `\n",  # after another comment
        "\n# escape=`\nFROM x\nRUN a `\n",  # after a blank line
        "FROM x\n# escape=`\nRUN a `\n",  # after an instruction
        "# unknown=1\n# escape=`\nFROM x\nRUN a `\n",  # after an unknown directive
    ],
)
def test_directives_after_anything_else_are_plain_comments(text: str) -> None:
    result = parse(text)
    assert result.escape_token == "\\"
    assert result.directives == ()
    assert dumped(text)[-1] == '(run "a `")'


def test_repeated_directive_after_the_directive_block_is_just_a_comment() -> None:
    result = parse("# syntax=a\nFROM x\n# syntax=b\n")
    assert [d.value for d in result.directives] == ["a"]


# --------------------------------------------------------------------- comments, continuations


def test_comments_and_blank_lines_inside_continuations_are_dropped() -> None:
    text = "FROM x\nRUN apt-get update && \\\n    # a comment\n\n    apt-get install -y \\\n  curl\n"
    result = parse(text)
    run = result.ast.children[1]
    assert dump(run) == '(run "apt-get update &&     apt-get install -y   curl")'[1:-1]
    assert (run.start_line, run.end_line) == (2, 6)
    assert [w.line for w in result.warnings] == [6]
    assert "Empty continuation line" in result.warnings[0].message


def test_escaped_escape_at_end_of_line_does_not_continue() -> None:
    assert dumped("FROM x\nENV A=b\\\\\nENV C=d\n")[1:] == ['(env "A" "b\\\\\\\\" "=")', '(env "C" "d" "=")']


def test_continuation_at_end_of_file_ends_the_instruction() -> None:
    assert dumped("FROM x\nRUN a \\") == ['(from "x")', '(run "a")']


def test_leading_whitespace_and_crlf_and_bom_are_ignored() -> None:
    text = "\ufeffFROM x\r\n   RUN a \\\r\n  b\r\n"
    assert dumped(text) == ['(from "x")', '(run "a   b")']


def test_instruction_case_is_kept_in_value_and_lowered_in_keyword_and_dump() -> None:
    node = nodes("from x\nRuN y\n")[1]
    assert (node.value, node.keyword) == ("RuN", "run")
    assert dump(node) == 'run "y"'


def test_prev_comments_are_attached_without_directives() -> None:
    result = parse("# syntax=x\n# about the base\nFROM a\n\n# about run\n# more\nRUN b\n")
    assert result.ast.children[0].prev_comment == ["about the base"]
    assert result.ast.children[1].prev_comment == ["about run", "more"]


def test_line_numbers_are_one_based_and_span_continuations() -> None:
    children = nodes("\n# c\nFROM a\nRUN b \\\n c \\\n d\nUSER e\n")
    assert [(c.start_line, c.end_line) for c in children] == [(3, 3), (4, 6), (7, 7)]


def test_original_text_is_the_joined_line() -> None:
    assert nodes("FROM a\nRUN --network=none echo \\\n  hi\n")[1].original == "RUN --network=none echo   hi"


# -------------------------------------------------------------------------------- arguments


def test_json_and_shell_forms() -> None:
    assert dumped('FROM a\nCMD ["sh", "-c", "echo"]\nCMD sh -c echo\nENTRYPOINT ["x"] y\n')[1:] == [
        '(cmd "sh" "-c" "echo")',
        '(cmd "sh -c echo")',
        '(entrypoint "[\\"x\\"] y")',  # trailing text after the array: not JSON
    ]
    children = nodes('FROM a\nCMD ["a"]\nCMD a\n')
    assert children[1].is_json and not children[2].is_json


def test_json_with_a_non_string_is_an_error() -> None:
    with pytest.raises(DockerfileError, match=r"Dockerfile:2: when using JSON array syntax"):
        parse('FROM a\nRUN ["echo", 1]\n')


def test_json_escapes_and_unicode_are_decoded_then_quoted_like_go() -> None:
    assert dumped('FROM a\nCMD ["\\u00e9\\t\\u0001", "\\ud83d\\ude00", "\\u00a0"]\n')[1] == (
        '(cmd "é\\t\\x01" "😀" "\\u00a0")'
    )


def test_flags_are_split_off_and_double_dash_ends_them() -> None:
    assert dumped("FROM a\nCOPY --chown=1:1 --from=b -- --weird /d\nRUN --x='a b' c\n")[1:] == [
        '(copy ["--chown=1:1" "--from=b"] "--weird" "/d")',
        '(run ["--x=a b"] "c")',
    ]


def test_env_label_and_arg_words_keep_quotes() -> None:
    assert dumped('FROM a\nENV A="x y" B=z\\ w\nLABEL "k"=v\nARG X="1 2" Y\n')[1:] == [
        '(env "A" "\\"x y\\"" "=" "B" "z\\\\ w" "=")',
        '(label "\\"k\\"" "v" "=")',
        '(arg "X=\\"1 2\\"" "Y")',
    ]


def test_env_without_equals_mixing_is_an_error() -> None:
    with pytest.raises(DockerfileError, match='can\'t find = in "B"'):
        parse("FROM a\nENV A=1 B\n")


def test_onbuild_wraps_a_sub_instruction() -> None:
    assert dumped("FROM a\nONBUILD COPY --from=x a b\n")[1] == '(onbuild (copy ["--from=x"] "a" "b"))'


def test_healthcheck_type_then_command() -> None:
    assert dumped('FROM a\nHEALTHCHECK --retries=2 CMD ["true"]\nHEALTHCHECK NONE\n')[1:] == [
        '(healthcheck ["--retries=2"] "CMD" "true")',
        '(healthcheck "NONE")',
    ]


def test_unknown_instructions_parse_with_an_empty_argument() -> None:
    assert dumped("FROM a\nFOO bar\n")[1] == '(foo "")'


def test_invalid_utf8_survives_and_dumps_as_hex() -> None:
    assert dumped(b"FROM a\nRUN echo \xff\n")[1] == '(run "echo \\xff")'


@pytest.mark.parametrize("text", ["", "\n\n", "# only\n# comments\n", "\ufeff  \n"])
def test_files_without_instructions_are_rejected(text: str) -> None:
    with pytest.raises(DockerfileError, match="file with no instructions"):
        parse(text)


# --------------------------------------------------------------------------------- heredocs


def test_heredoc_content_and_line_span() -> None:
    text = "FROM a\nRUN <<EOF\necho $HOME\n  indented\nEOF\nUSER b\n"
    run, user = nodes(text)[1:]
    assert run.heredocs == [Heredoc("EOF", content="echo $HOME\n  indented\n")]
    assert (run.start_line, run.end_line) == (2, 5)
    assert user.start_line == 6
    assert dump(run) == 'run "<<EOF"'  # heredoc bodies are not part of the dump


def test_several_heredocs_are_read_in_order() -> None:
    copy = nodes("FROM a\nCOPY <<one <<two /dst/\n1\none\n2\ntwo\n")[1]
    assert [(h.name, h.content) for h in copy.heredocs] == [("one", "1\n"), ("two", "2\n")]


def test_chomp_strips_tabs_before_the_terminator_and_on_request_in_content() -> None:
    run = nodes("FROM a\nRUN <<-EOT\n\tline\n\t\tEOT\n")[1]
    assert run.heredocs == [Heredoc("EOT", chomp=True, content="\tline\n")]
    assert chomp_heredoc_content("\tline\n\t\tdeeper\nkeep\t\n") == "line\ndeeper\nkeep\t\n"


def test_quoted_delimiters_disable_expansion() -> None:
    docs = [
        nodes(f"FROM a\nRUN {opener}\nx\nEOF\n")[1].heredocs[0]
        for opener in ("<<EOF", "<<'EOF'", '<<"EOF"', '<<E"O"F')
    ]
    assert [(d.name, d.expand) for d in docs] == [
        ("EOF", True),
        ("EOF", False),
        ("EOF", False),
        ("EOF", False),
    ]


def test_heredoc_with_file_descriptor_and_in_onbuild() -> None:
    run = nodes("FROM a\nRUN cat 3<<X\nx\nX\n")[1]
    assert run.heredocs[0].file_descriptor == 3
    onbuild = nodes("FROM a\nONBUILD RUN <<X\nbody\nX\n")[1]
    assert [h.content for h in onbuild.heredocs] == ["body\n"]


@pytest.mark.parametrize(
    "line",
    ['RUN ["<<EOF"]', "RUN '<<EOF'", 'RUN "<<EOF"', "LABEL a=<<EOF", "CMD <<EOF", "RUN <<"],
)
def test_no_heredoc_in_json_quoted_or_other_instructions(line: str) -> None:
    children = nodes(f"FROM a\n{line}\nEOF\n")
    assert children[1].heredocs == []
    assert children[2].value == "EOF"  # the would-be body is parsed as an instruction


def test_unterminated_heredoc_is_an_error_at_the_instruction() -> None:
    with pytest.raises(DockerfileError) as info:
        parse("FROM a\nRUN <<EOF\necho\n", "Dockerfile")
    assert str(info.value).startswith("Dockerfile:2: unterminated heredoc")
    assert info.value.source_line == "RUN <<EOF"
    assert info.value.end_line == 3


def test_parse_heredoc_words() -> None:
    assert parse_heredoc("<<-'A B'") == Heredoc("A B", expand=False, chomp=True)
    assert parse_heredoc("2<<X") == Heredoc("X", file_descriptor=2)
    for word in ("<<", "<X", "<<<X", "X", "<<a b"):
        assert parse_heredoc(word) is None
    with pytest.raises(KilnError):
        parse_heredoc("<<'EOF")


# ------------------------------------------------------------------------------------- dump


def test_go_quote_matches_strconv_quote() -> None:
    assert go_quote('a"b\\c') == '"a\\"b\\\\c"'
    assert go_quote("\x07\x08\x0c\n\r\t\x0b\x00\x7f") == '"\\a\\b\\f\\n\\r\\t\\v\\x00\\x7f"'
    assert go_quote("\u0085\u200b\U000e0001") == '"\\u0085\\u200b\\U000e0001"'
    assert go_quote("日本 ☃") == '"日本 ☃"'


def test_error_carries_all_lines_of_a_multi_line_instruction() -> None:
    with pytest.raises(DockerfileError) as info:
        parse('FROM a\nRUN ["a", \\\n  2]\n')
    assert info.value.source_lines == ('RUN ["a", \\', "  2]")
    assert (info.value.line, info.value.end_line) == (2, 3)


def test_every_node_is_located() -> None:
    onbuild = nodes("FROM a\nONBUILD RUN \\\n  b\n")[1]
    assert onbuild.next is not None
    (child,) = onbuild.next.children
    located = [onbuild, onbuild.next, child, *child.args()]
    assert [(n.start_line, n.end_line) for n in located] == [(2, 3)] * 4
