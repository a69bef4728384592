"""ARG/ENV scoping: what each instruction of a stage sees."""

from __future__ import annotations

from collections.abc import Mapping

from kiln.frontend.dockerfile.instructions import parse_dockerfile
from kiln.frontend.dockerfile.stages import (
    PLATFORM_ARGS,
    PROXY_ARGS,
    Scope,
    platform_args,
    resolve_global_args,
    stage_scopes,
)

PLATFORM = platform_args("linux/arm64/v8", "linux/amd64")


def scopes(
    text: str,
    build_args: Mapping[str, str] | None = None,
    base_env: Mapping[str, str] | None = None,
    stage: int = 0,
) -> list[Scope]:
    df = parse_dockerfile(text)
    args = build_args or {}
    global_args = resolve_global_args(df.meta_args, args, PLATFORM, df.escape)
    return stage_scopes(
        df.stages[stage].instructions,
        global_args=global_args,
        build_args=args,
        base_env=base_env,
        escape=df.escape,
    )


def test_platform_args() -> None:
    assert PLATFORM == {
        "TARGETPLATFORM": "linux/arm64/v8", "TARGETOS": "linux", "TARGETARCH": "arm64", "TARGETVARIANT": "v8",
        "BUILDPLATFORM": "linux/amd64", "BUILDOS": "linux", "BUILDARCH": "amd64", "BUILDVARIANT": "",
    }  # fmt: skip
    assert set(PLATFORM) == set(PLATFORM_ARGS)
    assert platform_args("linux/amd64")["BUILDARCH"] == "amd64"


def test_global_scope_for_from_lines() -> None:
    df = parse_dockerfile("ARG REG=docker.io\nARG IMG=$REG/base-$TARGETARCH TAG\nARG V=$X\nFROM $IMG\n")
    assert resolve_global_args(df.meta_args, {}, PLATFORM) == {
        **PLATFORM,
        "REG": "docker.io",
        "IMG": "docker.io/base-arm64",
        "V": "",
    }
    # a --build-arg replaces the default and is not expanded itself
    overridden = resolve_global_args(df.meta_args, {"REG": "quay.io", "V": "$REG", "TAG": "1"}, PLATFORM)
    assert (overridden["IMG"], overridden["V"], overridden["TAG"]) == ("quay.io/base-arm64", "$REG", "1")


def test_meta_args_are_invisible_in_stages_until_declared_again() -> None:
    text = "ARG V=1\nFROM a:$V\nRUN one\nARG V\nRUN two\n"
    first, _, second = scopes(text)
    assert "V" not in first.env
    assert second.env == {"V": "1"} and second.args == {"V": "1"}
    assert scopes(text, {"V": "9"})[2].env == {"V": "9"}


def test_build_arg_beats_default_beats_global() -> None:
    text = "ARG V=global\nFROM a\nARG V=stage\nRUN x\n"
    assert scopes(text)[1].env["V"] == "stage"
    assert scopes(text, {"V": "cli"})[1].env["V"] == "cli"


def test_undeclared_build_args_are_invisible() -> None:
    (run,) = scopes("FROM a\nRUN x\n", {"SECRET_TOKEN": "t"})
    assert run.env == {} and run.args == {}


def test_declared_arg_without_any_value_stays_unset() -> None:
    _, run = scopes("FROM a\nARG NOPE\nRUN x\n")
    assert "NOPE" not in run.env and "NOPE" not in run.args
    _, run = scopes("FROM a\nARG EMPTY\nRUN x\n", {"EMPTY": ""})
    assert run.env == {"EMPTY": ""}


def test_platform_args_need_declaring_in_a_stage() -> None:
    first, _, second = scopes("FROM a\nRUN x\nARG TARGETARCH BUILDPLATFORM\nRUN y\n")
    assert "TARGETARCH" not in first.env
    assert second.env == {"TARGETARCH": "arm64", "BUILDPLATFORM": "linux/amd64"}


def test_env_set_after_arg_wins() -> None:
    _, _, run = scopes("FROM a\nARG X=arg\nENV X=env\nRUN x\n", {"X": "cli"})
    assert run.env["X"] == "env" and run.image_env == {"X": "env"}
    assert run.args == {"X": "cli"}  # still a build arg of this step (history, cache key)


def test_arg_declared_after_env_overrides_for_build_steps_only() -> None:
    _, _, run = scopes("FROM a\nENV X=env\nARG X=arg\nRUN x\n")
    assert run.env["X"] == "arg"
    assert run.image_env == {"X": "env"}


def test_arg_without_value_does_not_clobber_base_env() -> None:
    _, run = scopes("FROM a\nARG HOME\nRUN x\n", base_env={"HOME": "/root"})
    assert run.env == {"HOME": "/root"}


def test_env_pairs_see_the_scope_from_before_the_instruction() -> None:
    _, run = scopes("FROM a\nENV A=1 B=x$A\nRUN x\n")
    assert run.env == {"A": "1", "B": "x"}
    _, _, run = scopes("FROM a\nENV A=1\nENV B=x$A\nRUN x\n")
    assert run.env == {"A": "1", "B": "x1"}


def test_args_on_one_line_see_each_other_and_env() -> None:
    _, _, run = scopes("FROM a\nENV P=/usr\nARG A=$P/local B=${A}/bin\nRUN x\n")
    assert run.args == {"A": "/usr/local", "B": "/usr/local/bin"}


def test_env_expands_quotes_keys_and_base_env() -> None:
    _, run = scopes(
        'FROM a\nENV PATH=/opt/bin:$PATH NAME="my app" $KEY=v\nRUN x\n', base_env={"PATH": "/bin", "KEY": "K"}
    )
    assert run.env == {"KEY": "K", "PATH": "/opt/bin:/bin", "NAME": "my app", "K": "v"}
    _, run = scopes('FROM a\nENV LEGACY "a b" c\nRUN x\n')
    assert run.env == {"LEGACY": "a b c"}


def test_proxy_build_args_reach_run_without_declaration_and_stay_separate() -> None:
    build_args = {"HTTP_PROXY": "http://proxy:3128", "no_proxy": "localhost", "OTHER": "1"}
    (run,) = scopes("FROM a\nRUN x\n", build_args)
    assert run.proxy_env == {"HTTP_PROXY": "http://proxy:3128", "no_proxy": "localhost"}
    assert run.env == {} and run.args == {}
    assert {"HTTP_PROXY", "http_proxy", "ALL_PROXY", "ftp_proxy"} <= PROXY_ARGS
    _, run = scopes("FROM a\nARG HTTP_PROXY\nRUN x\n", build_args)
    assert run.args == {"HTTP_PROXY": "http://proxy:3128"}  # declared: an ordinary ARG


def test_each_stage_starts_fresh() -> None:
    text = "FROM a AS one\nARG X=1\nENV Y=2\nRUN x\nFROM b\nRUN y\n"
    (run,) = scopes(text, stage=1)
    assert run.env == {} and run.args == {}


def test_scopes_are_snapshots() -> None:
    first, second, third = scopes("FROM a\nENV A=1\nENV A=2\nRUN x\n")
    assert (dict(first.env), dict(second.env), dict(third.env)) == ({}, {"A": "1"}, {"A": "2"})


def test_backtick_escape_in_scope_expansion() -> None:
    _, run = scopes('# escape=`\nFROM a\nENV A="x`"y" B=c`$d\nRUN x\n')
    assert run.env == {"A": 'x"y', "B": "c$d"}
