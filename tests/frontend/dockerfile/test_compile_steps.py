"""Compiling single instructions: RUN, COPY/ADD and the config-only ones."""

from __future__ import annotations

import pytest

from kiln.build.plan import ConfigChange, ContextSource, InlineFile, RunMount, StageSource
from kiln.frontend.dockerfile.compile_meta import parse_port_spec
from kiln.frontend.dockerfile.history import go_duration
from kiln.frontend.dockerfile.parser import DockerfileError, LineError
from tests.frontend.dockerfile.compile_helpers import (
    Resolver,
    compile_text,
    copies,
    copy1,
    image,
    meta1,
    metas,
    run1,
    runs,
)

# ---------------------------------------------------------------------------- RUN


def test_run_shell_and_exec_form() -> None:
    plan = compile_text(
        """
        FROM alpine
        RUN echo $HOME && ls "a b"
        RUN ["echo", "$HOME"]
        """
    )
    shell, exec_form = runs(plan)
    assert shell.argv == ("/bin/sh", "-c", 'echo $HOME && ls "a b"')  # the shell expands, not kiln
    assert shell.created_by == 'RUN /bin/sh -c echo $HOME && ls "a b" # buildkit'
    assert exec_form.argv == ("echo", "$HOME")
    assert exec_form.created_by == "RUN echo $HOME # buildkit"
    assert shell.line == 2 and exec_form.line == 3


def test_run_with_custom_shell() -> None:
    plan = compile_text(
        """
        FROM alpine
        SHELL ["/bin/bash", "-o", "pipefail", "-c"]
        RUN set -x; true
        RUN ["true"]
        """
    )
    first, second = runs(plan)
    assert first.argv == ("/bin/bash", "-o", "pipefail", "-c", "set -x; true")
    assert second.argv == ("true",)


def test_run_user_workdir_network() -> None:
    plan = compile_text(
        """
        FROM alpine
        RUN --network=none first
        WORKDIR /app
        USER nobody
        RUN --network=host second
        """
    )
    first, second = runs(plan)
    assert (first.user, first.workdir, first.network) == ("", "/", "none")
    assert (second.user, second.workdir, second.network) == ("nobody", "/app", "host")


def test_run_heredoc_is_the_shell_script() -> None:
    plan = compile_text(
        """
        FROM alpine
        RUN <<EOF
        set -e
        echo "$HOME"
        EOF
        RUN <<-"END"
        \t\techo tabs
        \tEND
        """.replace("\\t", "\t")
    )
    plain, chomped = runs(plan)
    assert plain.argv == ("/bin/sh", "-c", 'set -e\necho "$HOME"\n')
    assert plain.created_by == 'RUN /bin/sh -c set -e\necho "$HOME"\n # buildkit'
    assert chomped.argv == ("/bin/sh", "-c", "echo tabs\n")


def test_run_heredoc_with_a_command_goes_to_the_shell_whole() -> None:
    plan = compile_text(
        """
        FROM alpine
        RUN python3 <<EOF > /out
        print("hi")
        EOF
        RUN cat <<A <<B
        a
        A
        b
        B
        """
    )
    python, two = runs(plan)
    assert python.argv == ("/bin/sh", "-c", 'python3 <<EOF > /out\nprint("hi")\nEOF')
    assert two.argv == ("/bin/sh", "-c", "cat <<A <<B\na\nA\nb\nB")


def test_run_heredoc_with_shebang_runs_the_script_file() -> None:
    plan = compile_text(
        """
        FROM python:3
        RUN <<PY
        #!/usr/bin/env python3
        print("hi")
        PY
        """
    )
    run = run1(plan)
    script = '#!/usr/bin/env python3\nprint("hi")\n'
    assert run.argv == (
        "/bin/sh",
        "-c",
        "printf '%s' \"$1\" > /dev/pipes/PY && exec /usr/bin/env python3 /dev/pipes/PY",
        "kiln-heredoc",
        script,
    )
    assert run.mounts == (RunMount(type="tmpfs", target="/dev/pipes"),)
    assert run.created_by == "RUN /bin/sh -c /dev/pipes/PY # buildkit"  # what BuildKit records


def test_run_mounts() -> None:
    plan = compile_text(
        """
        FROM alpine AS deps
        FROM alpine
        ARG CACHE=/root/.cache
        WORKDIR /src
        RUN --mount=type=cache,target=$CACHE,sharing=locked,mode=0700,uid=1000,gid=1000 \\
            --mount=type=cache,target=node_modules \\
            --mount=type=bind,source=go.sum,target=go.sum \\
            --mount=type=bind,from=deps,source=/usr/lib,target=/deps,rw \\
            --mount=type=tmpfs,target=/tmp,size=64m \\
            --mount=type=secret,id=npmrc,target=/root/.npmrc,required \\
            --mount=type=secret,source=token,env=TOKEN \\
            --mount=type=ssh \\
            make
        """
    )
    cache, rel_cache, bind, stage_bind, tmpfs, secret, secret_env, ssh = run1(plan).mounts
    assert cache == RunMount(
        type="cache",
        target="/root/.cache",
        id="/root/.cache",
        sharing="locked",
        mode=0o700,
        uid=1000,
        gid=1000,
    )
    assert rel_cache == RunMount(type="cache", target="/src/node_modules", id="node_modules")
    assert bind == RunMount(type="bind", target="/src/go.sum", source="go.sum", readonly=True)
    assert stage_bind == RunMount(
        type="bind", target="/deps", source="/usr/lib", source_from=StageSource(0), readonly=False
    )
    assert tmpfs == RunMount(type="tmpfs", target="/tmp", size=64 * 1024 * 1024)
    assert secret == RunMount(type="secret", target="/root/.npmrc", id="npmrc", readonly=True, required=True)
    assert secret_env == RunMount(type="secret", id="token", readonly=True, env="TOKEN")
    assert ssh == RunMount(type="ssh", id="default", readonly=True)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("RUN --mount=type=bind,target=/ ls", 'invalid mount target "/"'),
        ("RUN --mount=type=cache,source=x ls", "--mount=type=cache: target is required"),
        ("RUN --mount=type=$KIND,target=/x ls", "unsupported mount type ''"),
        ("RUN --security=insecure ls", "RUN --security=insecure is not supported by kiln"),
    ],
)
def test_run_errors(line: str, message: str) -> None:
    with pytest.raises(DockerfileError) as err:
        compile_text(f"FROM alpine\n{line}\n")
    assert err.value.message.startswith(f"Dockerfile:2: {message}")
    assert err.value.source_line == line


# ---------------------------------------------------------------------------- COPY / ADD


def test_copy_expands_sources_dest_and_flags() -> None:
    plan = compile_text(
        """
        FROM alpine
        ARG APP=web
        ARG OWNER=1000
        ARG MODE=0640
        WORKDIR /srv
        COPY --chown=${OWNER}:${OWNER} --chmod=$MODE --link --exclude=*.md --exclude=tmp ["${APP}/", "$APP files", "./$APP/"]
        """
    )
    step = copy1(plan)
    assert step.sources == ("web/", "web files")
    assert step.dest == "./web/"
    assert step.workdir == "/srv"
    assert (step.chown, step.chmod, step.link) == ("1000:1000", "0640", True)
    assert step.excludes == ("*.md", "tmp")
    assert step.source_from == ContextSource()
    assert not step.extract_archives and step.urls == ()
    assert step.created_by == "COPY --chown=1000:1000 --chmod=0640 web/ web files ./web/ # buildkit"
    assert step.line == 6


def test_copy_parents_and_from() -> None:
    plan = compile_text(
        """
        FROM alpine AS build
        FROM scratch
        COPY --parents --from=build /src/./a/*.go /dst/
        """
    )
    step = copy1(plan)
    assert step.parents and step.source_from == StageSource(0)
    assert step.created_by == "COPY --parents /src/./a/*.go /dst/ # buildkit"


def test_add_local_urls_and_options() -> None:
    plan = compile_text(
        """
        FROM alpine
        ADD app.tar.gz /opt/
        ADD --checksum=sha256:%s https://example.com/tool /usr/bin/tool
        ADD --unpack=false https://example.com/a.tgz local.tgz /x/
        ADD --keep-git-dir plain /p
        """
        % ("ab" * 32)
    )
    local, url, mixed, plain = copies(plan)
    assert local.sources == ("app.tar.gz",) and local.extract_archives and local.urls == ()
    assert local.created_by == "ADD app.tar.gz /opt/ # buildkit"
    assert url.urls == ("https://example.com/tool",) and url.sources == () and not url.extract_archives
    assert url.checksum == "sha256:" + "ab" * 32
    assert mixed.urls == ("https://example.com/a.tgz",) and mixed.sources == ("local.tgz",)
    assert not mixed.extract_archives
    assert mixed.created_by == "ADD https://example.com/a.tgz local.tgz /x/ # buildkit"
    assert plain.keep_git_dir


def test_copy_heredoc_files() -> None:
    plan = compile_text(
        """
        FROM alpine
        ARG NAME=kiln
        COPY <<conf <<'raw' /etc/
        name=$NAME "quoted"
        conf
        name=$NAME
        raw
        COPY <<-EOF /tabs
        \tindented
        \tEOF
        """.replace("\\t", "\t")
    )
    both, tabs = copies(plan)
    assert both.inline == (InlineFile("conf", 'name=kiln "quoted"\n'), InlineFile("raw", "name=$NAME\n"))
    assert both.sources == ()
    assert both.created_by == "COPY <<conf <<raw /etc/ # buildkit"
    assert tabs.inline == (InlineFile("EOF", "indented\n"),)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("COPY --chmod=999 a /b", "invalid chmod parameter"),
        ("COPY --chmod=$MODE a /b", "invalid chmod parameter"),
        ("COPY https://example.com/x /x", "source can't be a URL for COPY"),
        ("COPY git@github.com:org/repo.git /x", "source can't be a git ref for COPY"),
        (
            "ADD https://github.com/org/repo.git#main /src",
            "ADD of a Git repository is not supported by kiln yet",
        ),
        ("ADD --checksum=sha256:00 a b /x/", "checksum can't be specified for multiple sources"),
        ("ADD --checksum=sha256:00 local /x", "checksum requires HTTP(S) or Git sources"),
        ("ADD --checksum=md5:00 https://example.com/x /x", "invalid checksum 'md5:00'"),
        ("COPY --from=Nope:Latest /a /b", 'failed to parse stage name "Nope:Latest"'),
    ],
)
def test_copy_errors(line: str, message: str) -> None:
    with pytest.raises(DockerfileError) as err:
        compile_text(f"FROM alpine\nARG MODE=u+q\n{line}\n")
    assert err.value.message.startswith(f"Dockerfile:3: {message}"), err.value.message
    assert err.value.source_line == line


# ---------------------------------------------------------------------------- config-only instructions


def _changes(text: str, **kwargs: object) -> list[tuple[ConfigChange, ...]]:
    return [m.changes for m in metas(compile_text("FROM alpine\n" + text, **kwargs))]  # type: ignore[arg-type]


def _history(text: str) -> list[str]:
    return [m.created_by for m in metas(compile_text("FROM alpine\n" + text))]


def test_env_and_label() -> None:
    text = 'ENV A=1 B="x y"\nENV LEGACY some value\nLABEL "com.example.k"="$A" plain=v\n'
    assert _changes(text) == [
        (ConfigChange("env", ["A", "1"]), ConfigChange("env", ["B", "x y"])),
        (ConfigChange("env", ["LEGACY", "some value"]),),
        (ConfigChange("label", ["com.example.k", "1"]), ConfigChange("label", ["plain", "v"])),
    ]
    assert _history(text) == ["ENV A=1 B=x y", "ENV LEGACY=some value", "LABEL com.example.k=1 plain=v"]


def test_expose() -> None:
    text = "ARG P=8080\nEXPOSE 80 $P/udp 9000-9001/SCTP\n"
    (_arg, expose) = _changes(text)
    assert expose == tuple(
        ConfigChange("expose", p) for p in ("80/tcp", "8080/udp", "9000/sctp", "9001/sctp")
    )
    assert _history(text)[1] == "EXPOSE [80/tcp 8080/udp 9000/sctp 9001/sctp]"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("80/http", "invalid proto: http"),
        ("http", "invalid containerPort: http"),
        ("70000", "invalid containerPort: 70000"),
        ("90-80", "invalid containerPort: 90-80"),
        ("/tcp", "no port specified: /tcp<empty>"),
        ("1.2.3.999:80:80", "invalid IP address: 1.2.3.999"),
        ("8000-8001:80-82", "invalid ranges specified for container and host Ports: 80-82 and 8000-8001"),
    ],
)
def test_expose_errors(spec: str, message: str) -> None:
    with pytest.raises(LineError, match=f"^{message}$"):
        parse_port_spec(spec)
    with pytest.raises(DockerfileError, match=f"^Dockerfile:2: {message}$"):
        compile_text(f"FROM alpine\nEXPOSE {spec}\n")


def test_expose_with_host_parts() -> None:
    assert parse_port_spec("[::1]:8080:80") == ["80/tcp"]
    assert parse_port_spec("8000-8002:80") == ["80/tcp"]


def test_volume_user_stopsignal_maintainer_shell() -> None:
    text = (
        'ARG DATA=/data\nVOLUME ["$DATA", "/logs"]\nVOLUME /a /b\nUSER ${DATA#/}:0\nSTOPSIGNAL SIGTERM\n'
        'STOPSIGNAL 9\nMAINTAINER Jane <j@x>\nSHELL ["pwsh", "-c"]\n'
    )
    assert _changes(text)[1:] == [
        (ConfigChange("volume", "/data"), ConfigChange("volume", "/logs")),
        (ConfigChange("volume", "/a"), ConfigChange("volume", "/b")),
        (ConfigChange("user", "data:0"),),
        (ConfigChange("stopsignal", "SIGTERM"),),
        (ConfigChange("stopsignal", "9"),),
        (ConfigChange("maintainer", "Jane <j@x>"),),
        (ConfigChange("shell", ["pwsh", "-c"]),),
    ]
    assert _history(text)[1:] == [
        "VOLUME [/data /logs]", "VOLUME [/a /b]", "USER data:0", "STOPSIGNAL SIGTERM", "STOPSIGNAL 9",
        "MAINTAINER Jane <j@x>", "SHELL [pwsh -c]",
    ]  # fmt: skip


@pytest.mark.parametrize("line", ["STOPSIGNAL SIGNOPE", "STOPSIGNAL 0", "VOLUME $EMPTY"])
def test_meta_errors(line: str) -> None:
    with pytest.raises(
        DockerfileError, match=r"^Dockerfile:2: (Invalid signal|VOLUME specified can not be an empty)"
    ):
        compile_text(f"FROM alpine\n{line}\n")


def test_workdir_joins_and_cleans() -> None:
    resolver = Resolver({"base": image(workdir="/base")})
    plan = compile_text(
        "FROM base\nWORKDIR a\nWORKDIR ../b//c/\nWORKDIR /abs/./d\nARG SUB=e\nWORKDIR $SUB\nRUN pwd\n",
        resolver=resolver,
    )
    workdirs = [c.value for m in metas(plan) for c in m.changes if c.op == "workdir"]
    assert workdirs == ["/base/a", "/base/b/c", "/abs/d", "/abs/d/e"]
    assert [m.created_by for m in metas(plan) if m.created_by.startswith("WORKDIR")] == [
        "WORKDIR /base/a", "WORKDIR /base/b/c", "WORKDIR /abs/d", "WORKDIR /abs/d/e",
    ]  # fmt: skip
    assert run1(plan).workdir == "/abs/d/e"


def test_cmd_and_entrypoint() -> None:
    plan = compile_text(
        """
        FROM alpine
        ENTRYPOINT run.sh --flag
        CMD ["a", "b"]
        SHELL ["/bin/bash", "-c"]
        CMD echo "$HOME"
        """
    )
    entry, cmd, _shell, cmd2 = metas(plan)
    assert entry.changes == (ConfigChange("entrypoint", ["/bin/sh", "-c", "run.sh --flag"]),)
    assert entry.created_by == 'ENTRYPOINT ["/bin/sh" "-c" "run.sh --flag"]'
    assert cmd.changes == (ConfigChange("cmd", ["a", "b"]), ConfigChange("args_escaped", True))
    assert cmd.created_by == 'CMD ["a" "b"]'
    assert cmd2.changes[0] == ConfigChange("cmd", ["/bin/bash", "-c", 'echo "$HOME"'])
    assert cmd2.created_by == 'CMD ["/bin/bash" "-c" "echo \\"$HOME\\""]'


def test_entrypoint_keeps_a_cmd_of_the_same_stage_only() -> None:
    plan = compile_text('FROM alpine AS a\nCMD ["x"]\nENTRYPOINT ["e"]\nFROM a\nENTRYPOINT ["f"]\n')
    assert metas(plan, 0)[1].changes == (ConfigChange("entrypoint", ["e"]), ConfigChange("cmd", ["x"]))
    assert meta1(plan).changes == (ConfigChange("entrypoint", ["f"]),)


def test_healthcheck() -> None:
    text = (
        "HEALTHCHECK --interval=1m30s --timeout=500ms --start-period=2s --start-interval=1s --retries=4 "
        "CMD curl -f http://localhost/ || exit 1\nHEALTHCHECK NONE\n"
    )
    check, none = _changes(text)
    assert check == (
        ConfigChange(
            "healthcheck",
            {
                "Test": ["CMD-SHELL", "curl -f http://localhost/ || exit 1"],
                "Interval": 90 * 10**9,
                "Timeout": 500 * 10**6,
                "StartPeriod": 2 * 10**9,
                "StartInterval": 10**9,
                "Retries": 4,
            },
        ),
    )
    assert none == (ConfigChange("healthcheck", None),)
    assert _history(text) == [
        "HEALTHCHECK {Test:[CMD-SHELL curl -f http://localhost/ || exit 1] Interval:1m30s Timeout:500ms "
        "StartPeriod:2s StartInterval:1s Retries:4}",
        "HEALTHCHECK {Test:[NONE] Interval:0s Timeout:0s StartPeriod:0s StartInterval:0s Retries:0}",
    ]


def test_onbuild_keeps_its_text() -> None:
    assert _changes("ONBUILD RUN echo $HOME\n") == [(ConfigChange("onbuild", "RUN echo $HOME"),)]
    assert _history("ONBUILD COPY . /src\n") == ["ONBUILD COPY . /src"]


@pytest.mark.parametrize(
    ("nanos", "text"),
    [
        (1, "1ns"), (1500, "1.5µs"), (10**6, "1ms"), (10**9, "1s"), (61 * 10**9, "1m1s"),
        (3600 * 10**9, "1h0m0s"), (3723_500_000_000, "1h2m3.5s"), (-2 * 10**9, "-2s"),
    ],
)  # fmt: skip
def test_go_duration(nanos: int, text: str) -> None:
    assert go_duration(nanos) == text
