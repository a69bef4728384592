"""Typed instructions: every instruction's arguments and flags, and located errors."""

from __future__ import annotations

import pytest

from kiln.frontend.dockerfile.instructions import (
    AddInstruction,
    ArgDefinition,
    ArgInstruction,
    Chmod,
    CmdInstruction,
    CopyInstruction,
    Dockerfile,
    EntrypointInstruction,
    EnvInstruction,
    ExposeInstruction,
    HealthcheckInstruction,
    Instruction,
    KeyValue,
    LabelInstruction,
    MaintainerInstruction,
    Mount,
    OnbuildInstruction,
    RunInstruction,
    ShellInstruction,
    SourceContent,
    StopsignalInstruction,
    UserInstruction,
    VolumeInstruction,
    WorkdirInstruction,
    parse_chmod,
    parse_dockerfile,
    parse_duration,
    parse_mount,
)
from kiln.frontend.dockerfile.parser import DockerfileError, LineError
from kiln.frontend.dockerfile.shell import expand


def only(body: str) -> Instruction:
    """The single instruction of a one-stage Dockerfile `FROM base` + body."""
    df = parse_dockerfile("FROM base\n" + body + "\n")
    (instruction,) = df.stages[0].instructions
    return instruction


def error_of(body: str, filename: str = "Dockerfile") -> DockerfileError:
    with pytest.raises(DockerfileError) as info:
        parse_dockerfile("FROM base\n" + body + "\n", filename)
    return info.value


# ------------------------------------------------------------------------- FROM and stages


def test_stages_meta_args_and_directives() -> None:
    df = parse_dockerfile(
        "# syntax=docker/dockerfile:1\nARG A=1 B\nARG C\n"
        "FROM --platform=$BUILDPLATFORM golang:$A AS Build\nRUN go build\n"
        "FROM scratch\nCOPY --from=build /out /\n"
    )
    assert isinstance(df, Dockerfile)
    assert df.directive("syntax") == "docker/dockerfile:1"
    assert df.escape == "\\"
    assert [a.args for a in df.meta_args] == [
        (ArgDefinition("A", "1"), ArgDefinition("B")),
        (ArgDefinition("C"),),
    ]
    build, final = df.stages
    assert (build.index, build.name, build.base, build.platform, build.line) == (
        0,
        "build",
        "golang:$A",
        "$BUILDPLATFORM",
        4,
    )
    assert (final.index, final.name, final.base, final.platform, final.line) == (1, None, "scratch", None, 6)
    assert [type(i) for i in build.instructions] == [RunInstruction]
    assert df.stage("BUILD") is build and df.stage("1") is final and df.stage("nope") is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("FROM", "FROM requires either one or three arguments"),
        ("FROM a b", "FROM requires either one or three arguments"),
        ("FROM a TO b", "FROM requires either one or three arguments"),
        ("FROM a AS 1st", "invalid name for build stage: '1st'"),
        ("FROM a AS my$stage", "invalid name for build stage"),
        ("FROM --plat=x a", "unknown flag: --plat (did you mean --platform?)"),
        ("FROM --platform a", "missing a value on flag: --platform"),
    ],
)
def test_from_errors(line: str, message: str) -> None:
    with pytest.raises(DockerfileError) as info:
        parse_dockerfile(f"ARG X\n{line}\n", "ctx/Dockerfile")
    assert str(info.value).startswith("ctx/Dockerfile:2: ")
    assert message in info.value.reason
    assert info.value.source_line == line


def test_instruction_before_from_is_an_error() -> None:
    with pytest.raises(DockerfileError, match=r"Dockerfile:2: RUN before the first FROM"):
        parse_dockerfile("ARG A\nRUN x\nFROM a\n")


def test_unknown_instruction_is_an_error_with_a_suggestion() -> None:
    err = error_of("RUN a\nCOPPY a b")
    assert str(err) == "Dockerfile:3: unknown instruction: COPPY (did you mean copy?)"
    assert err.source_line == "COPPY a b"


def test_errors_point_at_the_first_line_of_a_continued_instruction() -> None:
    err = error_of("RUN a\nCOPY --bogus \\\n  a b")
    assert (err.line, err.end_line, err.source_lines) == (3, 4, ("COPY --bogus \\", "  a b"))
    assert str(err) == "Dockerfile:3: unknown flag: --bogus"


# ------------------------------------------------------------------------------------- RUN


def test_run_forms_and_defaults() -> None:
    shell = only("RUN echo $HOME && true")
    assert isinstance(shell, RunInstruction)
    assert (shell.command, shell.prepend_shell, shell.network, shell.security, shell.mounts) == (
        ("echo $HOME && true",),
        True,
        "default",
        "sandbox",
        (),
    )
    exec_form = only('RUN ["/bin/echo", "hi"]')
    assert isinstance(exec_form, RunInstruction)
    assert (exec_form.command, exec_form.prepend_shell) == (("/bin/echo", "hi"), False)


def test_run_heredoc_is_kept_for_the_compiler() -> None:
    run = only("RUN <<EOF\napk add curl\nEOF")
    assert isinstance(run, RunInstruction)
    assert run.command == ("<<EOF",)
    assert [(h.name, h.content) for h in run.heredocs] == [("EOF", "apk add curl\n")]


def test_run_mounts_are_typed() -> None:
    run = only(
        "RUN --mount=type=cache,target=/root/.cache,id=pip,sharing=locked,mode=0700,uid=1000,gid=1000 "
        "--mount=type=secret,id=token,env=TOKEN,required=true "
        "--mount=type=bind,from=build,src=/out,dst=/in,rw "
        "--mount=type=tmpfs,destination=/tmp,size=64m "
        "--mount=type=ssh,required "
        "--mount=target=/ctx,ro "
        "--network=none --security=insecure make"
    )
    assert isinstance(run, RunInstruction)
    assert run.network == "none" and run.security == "insecure"
    assert run.mounts == (
        Mount(
            type="cache",
            target="/root/.cache",
            id="pip",
            sharing="locked",
            readonly=False,
            mode=0o700,
            uid=1000,
            gid=1000,
        ),
        Mount(type="secret", id="token", env="TOKEN", required=True, readonly=True),
        Mount(type="bind", from_="build", source="/out", target="/in", readonly=False),
        Mount(type="tmpfs", target="/tmp", size=64 * 1024 * 1024, readonly=False),
        Mount(type="ssh", required=True, readonly=True),
        Mount(type="bind", target="/ctx", readonly=True),
    )
    assert len(run.mount_specs) == 6


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("type=nfs,target=/x", "unsupported mount type 'nfs'"),
        ("type=bind,target=/x,mode=0755", "mode not allowed for 'bind' type mounts"),
        ("type=tmpfs,target=/x,uid=0", "uid not allowed for 'tmpfs' type mounts"),
        ("type=bind,target=/x,sharing=locked", "invalid cache sharing set for bind mount"),
        ("type=cache,target=/x,sharing=exclusive", "unsupported sharing value 'exclusive'"),
        ("type=cache,target=/x,mode=0999", "invalid value 0999 for mode"),
        ("type=cache,target=/x,uid=-1", "invalid value -1 for uid"),
        ("type=secret", "invalid secret mount. one of source, target required"),
        ("type=secret,id=a,from=b", "secret mount should not have a from"),
        ("type=secret,id=a,source=b", "both source and id can't be set"),
        ("type=bind,target=/x,required", "unexpected key 'required' for mount type 'bind'"),
        ("required,type=secret,id=a", "unexpected key 'required' for mount type 'bind'"),  # order matters
        ("type=cache,target=/x,size=1g", "unexpected key 'size' for mount type 'cache'"),
        ("type=tmpfs,target=/x,size=lots", "invalid value for size: lots"),
        ("type=bind,target=/x,ro=maybe", "invalid value for ro: maybe"),
        ("type=bind,targt=/x", "unexpected key 'targt' in 'targt=/x' (did you mean target?)"),
        ("type=bind,target", "invalid field 'target' must be a key=value pair"),
        ("", "failed to parse csv mounts"),
        ('type=bind,target=/a\\"b', 'bare " in non-quoted-field'),  # \" keeps the quote in the flag
        ("type=bind,from=$STAGE,target=/x", "'from' doesn't support variable expansion"),
    ],
)
def test_bad_mounts_are_rejected(spec: str, message: str) -> None:
    err = error_of(f"RUN --mount={spec} true")
    assert err.line == 2
    assert message in err.reason


def test_mount_csv_quoting() -> None:
    assert parse_mount('type=bind,"target=/a,b",source=x') == Mount(target="/a,b", source="x")


def test_mount_values_with_variables_are_deferred_then_expanded() -> None:
    run = only("RUN --mount=type=cache,target=$DIR,mode=$MODE,id=x-${ARCH} true")
    assert isinstance(run, RunInstruction)
    (mount,) = run.mounts
    assert mount.deferred == {"target", "mode", "id"}
    assert (mount.type, mount.target, mount.mode) == ("cache", "", None)
    env = {"DIR": "/var/cache/apt", "MODE": "0755", "ARCH": "arm64"}
    (expanded,) = run.expand_mounts(lambda word: expand(word, env))
    assert expanded == Mount(type="cache", target="/var/cache/apt", mode=0o755, id="x-arm64", readonly=False)
    with pytest.raises(LineError, match="invalid value nope for mode"):
        run.expand_mounts(lambda word: expand(word, {"MODE": "nope"}))


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--network=bridge", "invalid network mode 'bridge'"),
        ("--security=privileged", "security 'privileged' is not valid"),
        ("--network=none --network=host", "duplicate flag specified: --network"),
        ("--mount", "missing a value on flag: --mount"),
        ("--chmod=755", "unknown flag: --chmod"),
    ],
)
def test_bad_run_flags(flag: str, message: str) -> None:
    assert message in error_of(f"RUN {flag} true").reason


# ------------------------------------------------------------------------ CMD, ENTRYPOINT


def test_cmd_and_entrypoint_forms() -> None:
    assert only('CMD ["a", "b"]') == CmdInstruction(
        line=2, end_line=2, original='CMD ["a", "b"]', command=("a", "b"), prepend_shell=False
    )
    cmd = only("CMD a   b")
    assert isinstance(cmd, CmdInstruction) and cmd.command == ("a   b",) and cmd.prepend_shell
    entrypoint = only("ENTRYPOINT []")
    assert isinstance(entrypoint, EntrypointInstruction)
    assert (entrypoint.command, entrypoint.prepend_shell) == ((), False)
    assert "unknown flag: --x" in error_of('CMD --x ["a"]').reason


# ------------------------------------------------------------------------ ENV, LABEL, ARG


def test_env_forms_keep_raw_values() -> None:
    env = only('ENV A=1 B="two words" C=x\\ y')
    assert isinstance(env, EnvInstruction)
    assert env.pairs == (KeyValue("A", "1"), KeyValue("B", '"two words"'), KeyValue("C", "x\\ y"))
    legacy = only("ENV PATH /usr/local/bin:$PATH  extra")
    assert isinstance(legacy, EnvInstruction)
    assert legacy.pairs == (KeyValue("PATH", "/usr/local/bin:$PATH  extra", legacy=True),)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ENV", "ENV requires at least one argument"),
        ("ENV =x", "ENV names can not be blank"),
        ("ENV ONLYNAME", "ENV must have two arguments"),
        ("LABEL", "LABEL requires at least one argument"),
        ("LABEL =x", "LABEL names can not be blank"),
        ("ARG", "ARG requires at least one argument"),
        ("ARG =x", "ARG names can not be blank"),
        ("ENV --x=1 A=b", "unknown flag: --x"),
    ],
)
def test_key_value_errors(line: str, message: str) -> None:
    assert message in error_of(line).reason


def test_label_and_arg() -> None:
    label = only('LABEL org.opencontainers.image.title="kiln" version=1')
    assert isinstance(label, LabelInstruction)
    assert label.pairs == (KeyValue("org.opencontainers.image.title", '"kiln"'), KeyValue("version", "1"))
    arg = only('ARG A B=2 C="x y" D=')
    assert isinstance(arg, ArgInstruction)
    assert arg.args == (
        ArgDefinition("A"),
        ArgDefinition("B", "2"),
        ArgDefinition("C", '"x y"'),
        ArgDefinition("D", ""),
    )


# ------------------------------------------------------------------- one-argument and lists


def test_simple_instructions() -> None:
    assert isinstance(u := only("USER app:staff"), UserInstruction) and u.user == "app:staff"
    assert isinstance(w := only("WORKDIR /srv/my app"), WorkdirInstruction) and w.path == "/srv/my app"
    assert isinstance(s := only("STOPSIGNAL SIGQUIT"), StopsignalInstruction) and s.signal == "SIGQUIT"
    assert (
        isinstance(m := only("MAINTAINER Jane <j@x>"), MaintainerInstruction) and m.maintainer == "Jane <j@x>"
    )
    assert isinstance(e := only("EXPOSE 80/tcp 53/udp 8080"), ExposeInstruction)
    assert e.ports == ("80/tcp", "53/udp", "8080")
    assert isinstance(sh := only('SHELL ["pwsh", "-c"]'), ShellInstruction) and sh.shell == ("pwsh", "-c")


def test_volume_forms() -> None:
    assert isinstance(v := only('VOLUME ["/a", " /b "]'), VolumeInstruction) and v.paths == ("/a", "/b")
    assert isinstance(v := only("VOLUME /a /b"), VolumeInstruction) and v.paths == ("/a", "/b")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("USER", "USER requires exactly one argument"),
        ("WORKDIR", "WORKDIR requires exactly one argument"),
        ("STOPSIGNAL", "STOPSIGNAL requires exactly one argument"),
        ("MAINTAINER", "MAINTAINER requires exactly one argument"),
        ("EXPOSE", "EXPOSE requires at least one argument"),
        ("VOLUME", "VOLUME requires at least one argument"),
        ('VOLUME ["/a", " "]', "VOLUME specified can not be an empty string"),
        ("SHELL /bin/sh -c", "SHELL requires the arguments to be in JSON form"),
        ("SHELL []", "SHELL requires at least one argument"),
        ("USER --uid=1 app", "unknown flag: --uid"),
    ],
)
def test_simple_instruction_errors(line: str, message: str) -> None:
    assert message in error_of(line).reason


# ------------------------------------------------------------------------------ HEALTHCHECK


def test_healthcheck_cmd_with_durations() -> None:
    check = only(
        "HEALTHCHECK --interval=1m30s --timeout=2.5s --start-period=0s --start-interval=500ms --retries=3 "
        "CMD curl -f http://localhost/"
    )
    assert isinstance(check, HealthcheckInstruction)
    assert check.test == ("CMD-SHELL", "curl -f http://localhost/")
    assert (check.interval, check.timeout, check.start_period, check.start_interval, check.retries) == (
        90_000_000_000,
        2_500_000_000,
        0,
        500_000_000,
        3,
    )
    exec_form = only('HEALTHCHECK cmd ["/check", "--quick"]')
    assert isinstance(exec_form, HealthcheckInstruction) and exec_form.test == ("CMD", "/check", "--quick")
    none = only("HEALTHCHECK none")
    assert isinstance(none, HealthcheckInstruction) and none.test == ("NONE",)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("HEALTHCHECK", "HEALTHCHECK requires at least one argument"),
        ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
        ("HEALTHCHECK --retries=1 NONE", "unknown flag: --retries"),
        ("HEALTHCHECK CONNECT tcp", 'Unknown type "CONNECT" in HEALTHCHECK (try CMD)'),
        ("HEALTHCHECK CMD", "Missing command after HEALTHCHECK CMD"),
        ("HEALTHCHECK --interval=10us CMD true", 'Interval "interval" cannot be less than 1ms'),
        ("HEALTHCHECK --timeout=-1s CMD true", 'Interval "timeout" cannot be less than 1ms'),
        ("HEALTHCHECK --timeout=5 CMD true", "missing unit in duration"),
        ("HEALTHCHECK --timeout=5y CMD true", "unknown unit 'y'"),
        ("HEALTHCHECK --retries=-1 CMD true", "--retries cannot be negative (-1)"),
        ("HEALTHCHECK --retries=three CMD true", "invalid value for --retries"),
        ("HEALTHCHECK --retries=9999999999 CMD true", "invalid value for --retries"),
    ],
)
def test_healthcheck_errors(line: str, message: str) -> None:
    assert message in error_of(line).reason


@pytest.mark.parametrize(
    ("text", "nanos"),
    [
        ("0", 0),
        ("1h2m3.5s", 3_723_500_000_000),
        ("1.5ms", 1_500_000),
        ("-1s", -1_000_000_000),
        ("+2m", 120_000_000_000),
        ("300us", 300_000),
        ("7µs", 7_000),
        (".5s", 500_000_000),
        ("1h1h", 7_200_000_000_000),
    ],
)
def test_go_durations(text: str, nanos: int) -> None:
    assert parse_duration(text) == nanos


@pytest.mark.parametrize("text", ["", "1", "1x", ".s", "s", "1.2.3s", "9999999999h"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(LineError):
        parse_duration(text)


# ---------------------------------------------------------------------------------- ONBUILD


def test_onbuild_holds_a_parsed_trigger() -> None:
    onbuild = only("ONBUILD   RUN --mount=type=cache,target=/c make")
    assert isinstance(onbuild, OnbuildInstruction)
    assert onbuild.expression == "RUN --mount=type=cache,target=/c make"
    assert isinstance(onbuild.trigger, RunInstruction)
    assert onbuild.trigger.mounts == (Mount(type="cache", target="/c", readonly=False),)
    assert onbuild.trigger.line == 2


def test_onbuild_heredoc_goes_into_the_expression() -> None:
    onbuild = only("ONBUILD RUN <<EOF\necho hi\nEOF")
    assert isinstance(onbuild, OnbuildInstruction)
    assert onbuild.expression == "RUN <<EOF\necho hi\nEOF"
    assert isinstance(onbuild.trigger, RunInstruction)
    assert [h.content for h in onbuild.trigger.heredocs] == ["echo hi\n"]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ONBUILD", "ONBUILD requires at least one argument"),
        ("ONBUILD ONBUILD RUN x", "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        ("ONBUILD FROM x", "FROM isn't allowed as an ONBUILD trigger"),
        ("onbuild maintainer me", "MAINTAINER isn't allowed as an ONBUILD trigger"),
        ("ONBUILD FOO x", "unknown instruction: FOO"),
        ("ONBUILD COPY --bad a b", "unknown flag: --bad"),
    ],
)
def test_onbuild_errors(line: str, message: str) -> None:
    assert message in error_of(line).reason


# ----------------------------------------------------------------------------- COPY and ADD


def test_copy_flags_and_sources() -> None:
    copy = only(
        "COPY --from=build --chown=app:app --chmod=0755 --link --exclude=*.md --exclude=tests/ --parents a b* /dst/"
    )
    assert isinstance(copy, CopyInstruction)
    assert (copy.sources, copy.dest, copy.from_, copy.chown, copy.chmod) == (
        ("a", "b*"),
        "/dst/",
        "build",
        "app:app",
        "0755",
    )
    assert copy.chmod_mode == Chmod("0755", octal=0o755)
    assert (copy.link, copy.parents, copy.excludes) == (True, True, ("*.md", "tests/"))
    json_form = only('COPY ["a b", "c", "/d e/"]')
    assert isinstance(json_form, CopyInstruction)
    assert (json_form.sources, json_form.dest, json_form.link, json_form.from_) == (
        ("a b", "c"),
        "/d e/",
        False,
        None,
    )


def test_add_flags() -> None:
    add = only(
        "ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d "
        "--keep-git-dir=true --unpack=false --chown=1 --chmod=u=rwx,go=rx --link=false https://x/a.tar /opt/"
    )
    assert isinstance(add, AddInstruction)
    assert add.checksum is not None and add.checksum.startswith("sha256:")
    assert (add.keep_git_dir, add.unpack, add.chown, add.link) == (True, False, "1", False)
    assert add.chmod_mode is not None and add.chmod_mode.apply(0o644) == 0o755
    plain = only("ADD a /")
    assert isinstance(plain, AddInstruction) and plain.unpack is None and plain.checksum is None


def test_copy_heredoc_sources() -> None:
    copy = only("COPY <<-one <<'two' src /dst/\n\tfirst $X\n\tone\nsecond $X\ntwo")
    assert isinstance(copy, CopyInstruction)
    assert copy.sources == ("src",)
    assert copy.contents == (
        SourceContent("one", "first $X\n", True),
        SourceContent("two", "second $X\n", False),
    )


def test_chmod_with_a_variable_is_left_to_the_compiler() -> None:
    copy = only("COPY --chmod=$MODE a /b")
    assert isinstance(copy, CopyInstruction)
    assert (copy.chmod, copy.chmod_mode) == ("$MODE", None)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("COPY a", "COPY requires at least two arguments"),
        ("ADD", "ADD requires at least two arguments"),
        ("COPY a <<EOF\nx\nEOF", "COPY cannot accept a heredoc as a destination"),
        ("COPY --checksum=sha256:0 a b", "unknown flag: --checksum"),
        ("COPY --keep-git-dir a b", "unknown flag: --keep-git-dir"),
        ("ADD --from=x a b", "unknown flag: --from"),
        ("ADD --parents a b", "unknown flag: --parents"),
        ("COPY --link=maybe a b", "expecting boolean value for flag --link, not: maybe"),
        ("COPY --link= a b", "missing a value on flag: --link"),
        ("COPY --chown a b", "missing a value on flag: --chown"),
        ("COPY --from=a --from=b a b", "duplicate flag specified: --from"),
        ("COPY --chmod=0o755 a b", "invalid chmod parameter"),
        ("COPY --chmod=10000 a b", "mode out of range"),
        ("COPY --chmod=u+q a b", "invalid chmod parameter"),
        ("COPY --chmod=ug a b", "invalid chmod parameter"),
    ],
)
def test_copy_add_errors(line: str, message: str) -> None:
    err = error_of(line)
    assert err.line == 2
    assert message in err.reason or message in str(err)


def test_single_dash_flags_are_arguments_not_flags() -> None:
    copy = only("COPY -chown=1 a b")
    assert isinstance(copy, CopyInstruction) and copy.sources == ("-chown=1", "a")


# ------------------------------------------------------------------------------------ chmod


@pytest.mark.parametrize(
    ("spec", "mode", "is_dir", "result"),
    [
        ("u+x", 0o644, False, 0o744),
        ("a-w", 0o664, False, 0o444),
        ("go=", 0o777, False, 0o700),
        ("=r", 0o777, False, 0o444),
        ("g=u", 0o640, False, 0o660),
        ("o=g", 0o750, False, 0o755),
        ("a+X", 0o644, False, 0o644),
        ("a+X", 0o744, False, 0o755),
        ("a+X", 0o644, True, 0o755),
        ("u+s,g+s", 0o755, False, 0o6755),
        ("+t", 0o777, True, 0o1777),
        ("u=rwx,g=rx,o=", 0o000, False, 0o750),
        ("u+rw-x+X", 0o711, False, 0o711),
        ("u=rw,u+x", 0o000, False, 0o700),
        ("0640", 0o777, False, 0o640),
    ],
)
def test_chmod_apply(spec: str, mode: int, is_dir: bool, result: int) -> None:
    assert parse_chmod(spec).apply(mode, is_dir) == result


def test_chmod_keeps_the_raw_text() -> None:
    assert parse_chmod("ug+rw").raw == "ug+rw"
    assert parse_chmod("755").octal == 0o755
