"""Compiling a Dockerfile to a Plan: the stage graph, the target, ARG scoping, ONBUILD, errors."""

from __future__ import annotations

import doctest
import importlib

import pytest

from kiln.build.config_edit import apply_change
from kiln.build.plan import (
    ConfigChange,
    ContextSource,
    CopyStep,
    ImageSource,
    MetaStep,
    RunStep,
    ScratchSource,
    StageSource,
)
from kiln.errors import KilnError
from kiln.frontend.dockerfile.compile import build_platform
from kiln.frontend.dockerfile.parser import DockerfileError
from kiln.oci.models import ImageConfig, Platform
from tests.frontend.dockerfile.compile_helpers import (
    PATH,
    Resolver,
    compile_text,
    copies,
    copy1,
    image,
    meta1,
    metas,
    run1,
    runs,
    steps,
)

MULTI = """
    FROM golang:1.22 AS build
    RUN go build -o /out/app .
    FROM alpine AS test
    RUN go test
    FROM build AS debug
    RUN apk add gdb
    FROM scratch
    COPY --from=build /out/app /app
    ENTRYPOINT ["/app"]
"""


# ---------------------------------------------------------------------------- stage graph


def test_all_stages_are_in_the_plan_and_the_last_is_the_default_target() -> None:
    plan = compile_text(MULTI)
    assert [(s.index, s.name) for s in plan.stages] == [(0, "build"), (1, "test"), (2, "debug"), (3, "")]
    assert plan.target == 3
    assert plan.stages[0].base == ImageSource("golang:1.22")
    assert plan.stages[2].base == StageSource(0)
    assert plan.stages[3].base == ScratchSource()
    assert plan.stages[3].line == 7
    assert plan.frontend == "dockerfile" and plan.image_format == "oci" and plan.platform == Platform()


def test_only_needed_stages_are_compiled_and_only_their_bases_resolved() -> None:
    resolver = Resolver()
    plan = compile_text(MULTI, resolver=resolver)
    assert plan.needed_stages() == [0, 3]
    assert resolver.calls == ["golang:1.22"]  # alpine (stage "test") is never looked at
    assert plan.stages[1].steps == () and plan.stages[2].steps == ()
    assert [s.created_by for s in steps(plan, 0)] == ["RUN /bin/sh -c go build -o /out/app . # buildkit"]


def test_target_by_name_is_case_insensitive() -> None:
    resolver = Resolver()
    plan = compile_text(MULTI, target="DEBUG", resolver=resolver)
    assert plan.target == 2
    assert plan.needed_stages() == [0, 2]
    assert resolver.calls == ["golang:1.22"]
    assert [s.created_by for s in steps(plan)] == ["RUN /bin/sh -c apk add gdb # buildkit"]


def test_unknown_target() -> None:
    with pytest.raises(KilnError, match='target stage "tset" could not be found') as err:
        compile_text(MULTI, target="tset")
    assert "did you mean test?" in err.value.message


def test_each_base_image_is_resolved_once() -> None:
    resolver = Resolver()
    compile_text(
        """
        FROM alpine AS a
        RUN true
        FROM alpine AS b
        COPY --from=a /x /x
        """,
        resolver=resolver,
    )
    assert resolver.calls == ["alpine"]


def test_from_an_earlier_stage_by_name_or_index() -> None:
    plan = compile_text(
        """
        FROM busybox AS Base
        FROM base
        FROM 0
        FROM 5
        """
    )
    assert [s.base for s in plan.stages] == [
        ImageSource("busybox"),
        StageSource(0),
        StageSource(0),
        ImageSource("5"),
    ]


def test_copy_from_stage_image_and_index() -> None:
    resolver = Resolver()
    plan = compile_text(
        """
        FROM alpine AS build
        FROM debian AS unused
        FROM scratch
        COPY --from=BUILD /a /a
        COPY --from=0 /b /b
        COPY --from=nginx:1.25 /etc/nginx /etc/nginx
        """,
        resolver=resolver,
    )
    assert [c.source_from for c in copies(plan)] == [
        StageSource(0),
        StageSource(0),
        ImageSource("nginx:1.25"),
    ]
    assert plan.needed_stages() == [0, 2]
    assert resolver.calls == ["alpine"]  # an image named by --from is the executor's to pull


def test_copy_from_a_later_stage_or_itself_is_an_error() -> None:
    with pytest.raises(DockerfileError) as err:
        compile_text(
            """
            FROM alpine AS first
            COPY --from=second /x /x
            FROM alpine AS second
            """,
            target="first",
        )
    assert err.value.message == (
        'Dockerfile:2: cannot copy from stage "second", it needs to be defined before current stage "first"'
    )
    assert err.value.source_line == "COPY --from=second /x /x"
    with pytest.raises(
        DockerfileError, match=r"^Dockerfile:2: circular dependency detected on stage: stage-0$"
    ):
        compile_text("FROM alpine\nCOPY --from=0 /x /x\n")
    with pytest.raises(DockerfileError, match=r"^Dockerfile:2: invalid stage index 3$"):
        compile_text("FROM alpine\nCOPY --from=3 /x /x\n")


def test_run_mount_from_a_later_stage_or_itself_is_an_error() -> None:
    with pytest.raises(DockerfileError) as err:
        compile_text("FROM alpine AS a\nRUN --mount=from=b,target=/b ls\nFROM alpine AS b\n", target="a")
    assert (
        err.value.message
        == 'Dockerfile:2: cannot mount stage "b", it needs to be defined before current stage "a"'
    )
    with pytest.raises(DockerfileError, match=r"^Dockerfile:2: circular dependency detected on stage: a$"):
        compile_text("FROM alpine AS a\nRUN --mount=type=cache,from=a,target=/c ls\n")


def test_copy_from_with_variables_is_refused_as_buildkit_does() -> None:
    with pytest.raises(
        DockerfileError, match=r"^Dockerfile:3: variable expansion is not supported for --from"
    ):
        compile_text("FROM alpine AS a\nFROM alpine\nCOPY --from=$STAGE /x /x\n")


def test_run_mount_from_stage_and_from_image() -> None:
    resolver = Resolver()
    plan = compile_text(
        """
        FROM alpine AS tools
        FROM alpine
        RUN --mount=from=tools,target=/t --mount=type=bind,from=busybox:1.36,target=/bb ls /t /bb
        RUN --mount=from=busybox:1.36,target=/bb2 ls /bb2
        """,
        resolver=resolver,
    )
    first, second = runs(plan)
    assert first.mounts[0].source_from == StageSource(0)
    # the executor mounts stages only: an image becomes one extra stage, shared by both RUNs
    assert first.mounts[1].source_from == StageSource(2)
    assert second.mounts[0].source_from == StageSource(2)
    assert len(plan.stages) == 3 and plan.stages[2].base == ImageSource("busybox:1.36")
    assert plan.needed_stages() == [0, 2, 1]
    assert resolver.calls == ["alpine"]


def test_from_expands_meta_args_with_build_arg_overrides() -> None:
    resolver = Resolver()
    plan = compile_text(
        """
        ARG REGISTRY=docker.io
        ARG TAG=3.19
        ARG IMAGE=$REGISTRY/library/alpine:${TAG}
        FROM ${IMAGE}
        FROM --platform=$BUILDPLATFORM busybox:${TARGETARCH} AS cross
        """,
        build_args={"TAG": "3.20"},
        platform=Platform.parse("linux/arm64"),
        resolver=resolver,
        target="cross",
    )
    assert plan.stages[0].base == ImageSource("docker.io/library/alpine:3.20")
    assert plan.stages[1].base == ImageSource("busybox:arm64")
    assert plan.stages[1].platform == Platform.parse(build_platform())
    assert plan.stages[0].platform is None
    assert plan.platform == Platform.parse("linux/arm64")
    assert resolver.calls == ["busybox:arm64"]


def test_platform_args_can_be_overridden_by_build_args() -> None:
    plan = compile_text("FROM img:$TARGETOS-$BUILDARCH\n", build_args={"TARGETOS": "other"})
    assert plan.stages[0].base == ImageSource(f"img:other-{build_platform().split('/')[1]}")


def test_targetstage_names_the_target() -> None:
    text = "FROM img:$TARGETSTAGE AS first\nFROM img:$TARGETSTAGE\n"
    assert compile_text(text, target="first").stages[0].base == ImageSource("img:first")
    assert compile_text(text).stages[1].base == ImageSource("img:default")


def test_from_errors_are_located() -> None:
    with pytest.raises(DockerfileError, match=r"^Dockerfile:2: base name \(\$NOPE\) should not be blank$"):
        compile_text("ARG X=1\nFROM $NOPE\n")
    with pytest.raises(DockerfileError, match=r'^Dockerfile:1: failed to parse stage name "Alpine:3"'):
        compile_text("FROM Alpine:3\n")
    with pytest.raises(DockerfileError, match=r"^Dockerfile:1: failed to parse platform linux"):
        compile_text("FROM --platform=linux alpine\n")
    with pytest.raises(
        DockerfileError, match=r"^Dockerfile:1: failed to process \"\$\{V:\?unset\}\": V: unset"
    ):
        compile_text("ARG V=${V:?unset}\nFROM alpine\n")


def test_invalid_image_format() -> None:
    with pytest.raises(KilnError, match="unknown image format"):
        compile_text("FROM alpine\n", image_format="tar")


def test_parse_errors_keep_their_location() -> None:
    with pytest.raises(DockerfileError) as err:
        compile_text("FROM alpine\nRUN --bogus true\n")
    assert err.value.message.startswith("Dockerfile:2: unknown flag: --bogus")
    assert err.value.source_line == "RUN --bogus true"


def test_base_image_resolution_errors_are_located_at_the_from() -> None:
    def missing(ref: str) -> ImageConfig:
        raise KilnError(f"{ref}: not found")

    with pytest.raises(DockerfileError, match=r"^Dockerfile:2: nope:1: not found$") as err:
        compile_text("FROM scratch\nFROM nope:1\n", resolver=missing)  # type: ignore[arg-type]
    assert err.value.source_line == "FROM nope:1"


# ---------------------------------------------------------------------------- ARG / ENV scoping


SCOPING = """
    ARG GLOBAL=g
    ARG REDECLARED=r
    FROM alpine
    RUN step1
    ARG REDECLARED
    ARG LOCAL=l-$REDECLARED
    ARG OVERRIDDEN=default
    ENV FROM_ENV=$GLOBAL-$LOCAL
    ARG SHADOW=arg
    ENV SHADOW=env
    RUN step2
"""


def test_meta_args_are_only_visible_to_from_lines() -> None:
    plan = compile_text(SCOPING)
    first = runs(plan)[0]
    assert dict(first.env) == {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
    env = dict(runs(plan)[1].env)
    assert "GLOBAL" not in env
    assert env["FROM_ENV"] == "-l-r"  # $GLOBAL was never redeclared: empty


def test_redeclared_args_defaults_build_args_and_env_precedence() -> None:
    plan = compile_text(SCOPING, build_args={"OVERRIDDEN": "cli", "REDECLARED": "cli-r", "UNUSED": "x"})
    env = dict(runs(plan)[1].env)
    assert env["REDECLARED"] == "cli-r"
    assert env["LOCAL"] == "l-cli-r"
    assert env["OVERRIDDEN"] == "cli"
    assert env["SHADOW"] == "env"  # ENV wins over an ARG of the same name
    assert "UNUSED" not in env  # undeclared build args never reach the build


def test_run_env_is_the_full_environment() -> None:
    resolver = Resolver({"base": image(["PATH=/opt/bin:/bin", "LANG=C.UTF-8"])})
    plan = compile_text(
        """
        FROM base
        ARG V=1
        ENV HOME=/root LANG=en
        RUN make
        """,
        resolver=resolver,
        build_args={"UNDECLARED": "x"},
    )
    assert dict(run1(plan).env) == {"PATH": "/opt/bin:/bin", "LANG": "en", "V": "1", "HOME": "/root"}
    assert len(run1(plan).env) == 4


def test_arg_after_env_overrides_it_for_the_build_only() -> None:
    plan = compile_text(
        """
        FROM alpine
        ENV MODE=env
        ARG MODE=arg
        RUN echo $MODE
        """
    )
    assert dict(run1(plan).env)["MODE"] == "arg"
    env_changes = [c for m in metas(plan) for c in m.changes if c.op == "env"]
    assert env_changes == [ConfigChange("env", ["MODE", "env"])]


def test_env_pairs_in_one_instruction_see_the_previous_scope() -> None:
    plan = compile_text(
        """
        FROM alpine
        ENV A=1
        ENV A=2 B=$A
        """
    )
    assert metas(plan)[1].changes == (ConfigChange("env", ["A", "2"]), ConfigChange("env", ["B", "1"]))
    assert metas(plan)[1].created_by == "ENV A=2 B=1"


def test_arg_history_and_run_history_record_build_args() -> None:
    plan = compile_text(
        """
        ARG VERSION=1.0
        FROM alpine
        ARG VERSION
        ARG EMPTY
        ARG USER=me
        ENV USER=env-user
        RUN ./build
        RUN ["make", "all"]
        """,
        build_args={"USER": "cli"},
    )
    assert [m.created_by for m in metas(plan)][:3] == ["ARG VERSION=1.0", "ARG EMPTY", "ARG USER=cli"]
    assert all(m.changes == () for m in metas(plan)[:3])
    shell, exec_form = runs(plan)
    # declared ARGs in order with the value the build sees (ENV wins); no value: empty
    assert shell.created_by == "RUN |3 VERSION=1.0 EMPTY= USER=env-user /bin/sh -c ./build # buildkit"
    assert exec_form.created_by == "RUN |3 VERSION=1.0 EMPTY= USER=env-user make all # buildkit"


def test_proxy_build_args_reach_run_but_not_history() -> None:
    proxies = {"HTTP_PROXY": "http://user:pw@proxy:3128", "no_proxy": "localhost"}
    plan = compile_text(
        """
        FROM alpine
        ARG no_proxy
        ARG V=1
        RUN apk add curl
        """,
        build_args=proxies,
    )
    run = run1(plan)
    assert dict(run.env)["HTTP_PROXY"] == "http://user:pw@proxy:3128"
    assert dict(run.env)["no_proxy"] == "localhost"
    # BuildKit's exec sets each proxy in both spellings
    assert dict(run.env)["http_proxy"] == "http://user:pw@proxy:3128"
    assert dict(run.env)["NO_PROXY"] == "localhost"
    assert run.created_by == "RUN |1 V=1 /bin/sh -c apk add curl # buildkit"
    assert metas(plan)[0].created_by == "ARG no_proxy"
    assert "user:pw" not in plan.describe()
    assert all("user:pw" not in s.created_by for s in steps(plan))


def test_a_stage_inherits_env_and_args_of_the_stage_it_is_built_from() -> None:
    plan = compile_text(
        """
        FROM alpine AS parent
        ARG FOO=123
        ENV BAR=x
        WORKDIR /src
        USER app
        SHELL ["/bin/bash", "-c"]
        FROM parent AS child
        RUN echo $FOO
        FROM alpine AS other
        RUN echo $FOO
        """,
        target="child",
    )
    run = run1(plan)
    assert dict(run.env)["FOO"] == "123" and dict(run.env)["BAR"] == "x"
    assert run.workdir == "/src" and run.user == "app"
    assert run.argv == ("/bin/bash", "-c", "echo $FOO")
    assert run.created_by == "RUN |1 FOO=123 /bin/bash -c echo $FOO # buildkit"
    other = compile_text(
        "FROM alpine AS parent\nARG FOO=123\nFROM alpine AS other\nRUN echo $FOO\n",
    )
    assert "FOO" not in dict(run1(other).env)


def test_base_image_state_starts_the_stage() -> None:
    resolver = Resolver(
        {"base": image(["A=1"], workdir="app", user="www", shell=["/bin/ash", "-eo", "pipefail", "-c"])}
    )
    plan = compile_text("FROM base\nRUN x\nWORKDIR sub\nCOPY f .\n", resolver=resolver)
    run = run1(plan)
    assert run.workdir == "/app" and run.user == "www"
    assert run.argv == ("/bin/ash", "-eo", "pipefail", "-c", "x")
    assert dict(run.env)["PATH"].startswith("/usr/local/sbin")  # the base had no PATH: BuildKit's default
    assert copy1(plan).workdir == "/app/sub"


def test_a_base_without_path_gets_buildkits_default_in_the_config_too() -> None:
    default = PATH.partition("=")[2]
    plan = compile_text(
        """
        FROM scratch AS s
        COPY app /app
        FROM scratch AS t
        RUN true
        ENV PATH=/opt/bin:$PATH
        FROM t
        COPY --from=s /app /app
        ENV X=1
        """
    )
    only_copy = steps(plan, 0)
    assert isinstance(only_copy[0], MetaStep) and only_copy[0].created_by == f"ENV PATH={default}"
    assert only_copy[0].changes == (ConfigChange("env", ["PATH", default]),)
    # folded into the first MetaStep: no history entry of its own, as in BuildKit
    assert dict(run1(plan, 1).env)["PATH"] == default
    assert meta1(plan, 1).changes == (
        ConfigChange("env", ["PATH", default]),
        ConfigChange("env", ["PATH", f"/opt/bin:{default}"]),
    )
    assert meta1(plan, 2).changes == (ConfigChange("env", ["X", "1"]),)  # the parent stage had it


def test_expansion_errors_are_located() -> None:
    with pytest.raises(DockerfileError) as err:
        compile_text("FROM alpine\nENV A=1\nWORKDIR ${MISSING:?must be set}\n")
    assert (
        err.value.message == 'Dockerfile:3: failed to process "${MISSING:?must be set}": MISSING: must be set'
    )
    assert err.value.source_line == "WORKDIR ${MISSING:?must be set}"


def test_arg_default_errors_are_located() -> None:
    with pytest.raises(
        DockerfileError, match=r"^Dockerfile:3: failed to process \"\$\{NEED:\?\}\": NEED: is not"
    ):
        compile_text("FROM alpine\nRUN true\nARG X=${NEED:?}\n")


def test_errors_in_stages_the_target_does_not_need_are_ignored() -> None:
    plan = compile_text(
        """
        FROM alpine AS broken
        WORKDIR ${MISSING:?}
        FROM alpine
        RUN ok
        """
    )
    assert plan.stages[0].steps == ()


# ---------------------------------------------------------------------------- ONBUILD


def test_base_image_onbuild_triggers_run_first_and_are_not_inherited() -> None:
    resolver = Resolver(
        {"onbuild-base": image([PATH], on_build=["ARG MODE=release", "RUN make $MODE", "COPY . /src"])}
    )
    plan = compile_text(
        """
        FROM onbuild-base
        RUN echo after
        ENV X=1
        """,
        resolver=resolver,
        image_format="docker",
    )
    assert [(s.kind, s.line) for s in steps(plan)] == [
        ("meta", 1),
        ("run", 1),
        ("copy", 1),
        ("run", 2),
        ("meta", 3),
    ]
    arg, make, copy, _after, env = steps(plan)
    assert isinstance(make, RunStep) and make.argv == ("/bin/sh", "-c", "make $MODE")
    assert make.created_by == "RUN |1 MODE=release /bin/sh -c make $MODE # buildkit"
    assert isinstance(copy, CopyStep) and copy.source_from == ContextSource()
    # the inherited OnBuild list is cleared by the first MetaStep, with no history entry of its own
    assert isinstance(arg, MetaStep) and arg.changes == (ConfigChange("onbuild_clear"),)
    assert isinstance(env, MetaStep) and ConfigChange("onbuild_clear") not in env.changes


def test_onbuild_clear_gets_its_own_step_when_the_stage_has_no_meta_step() -> None:
    plan = compile_text("FROM onb\nRUN x\n", resolver=Resolver({"onb": image([PATH], on_build=["RUN y"])}))
    assert [s.kind for s in steps(plan)] == ["meta", "run", "run"]
    first = steps(plan)[0]
    assert (
        isinstance(first, MetaStep) and first.changes == (ConfigChange("onbuild_clear"),) and first.line == 1
    )
    assert first.created_by == "ONBUILD triggers of the base consumed"


def test_onbuild_trigger_can_pull_in_a_stage() -> None:
    resolver = Resolver({"onb": image(on_build=["COPY --from=assets /dist /srv"])})
    plan = compile_text(
        """
        FROM node AS assets
        RUN npm run build
        FROM onb
        """,
        resolver=resolver,
    )
    assert plan.needed_stages() == [0, 1]
    assert sorted(resolver.calls) == ["node", "onb"]
    assert copy1(plan).source_from == StageSource(0)


def test_onbuild_written_in_a_stage_fires_in_stages_built_from_it() -> None:
    plan = compile_text(
        """
        FROM alpine AS lib
        ONBUILD RUN echo fired
        ONBUILD ENV FIRED=1
        FROM lib
        RUN true
        """,
        image_format="docker",
    )
    lib = metas(plan, 0)
    assert [m.changes for m in lib] == [
        (ConfigChange("onbuild", "RUN echo fired"),),
        (ConfigChange("onbuild", "ENV FIRED=1"),),
    ]
    assert lib[0].created_by == "ONBUILD RUN echo fired"
    fired = steps(plan)
    assert [s.created_by for s in fired] == [
        "RUN /bin/sh -c echo fired # buildkit",
        "ENV FIRED=1",
        "RUN /bin/sh -c true # buildkit",
    ]
    assert [s.line for s in fired] == [4, 4, 5]
    assert isinstance(fired[1], MetaStep) and fired[1].changes[0] == ConfigChange("onbuild_clear")


def test_onbuild_trigger_naming_a_later_stage_is_reported_at_the_from() -> None:
    resolver = Resolver({"onb": image([PATH], on_build=["COPY --from=later /x /x"])})
    with pytest.raises(DockerfileError) as err:
        compile_text("FROM onb AS first\nFROM alpine AS later\n", target="first", resolver=resolver)
    assert err.value.message.startswith('Dockerfile:1: cannot copy from stage "later"')
    assert err.value.source_line == "FROM onb AS first"


def test_bad_onbuild_trigger_is_reported_at_the_from() -> None:
    with pytest.raises(DockerfileError, match=r"^Dockerfile:2: FROM isn't allowed as an ONBUILD trigger$"):
        compile_text("FROM scratch\nFROM onb\n", resolver=Resolver({"onb": image(on_build=["FROM x"])}))
    with pytest.raises(
        DockerfileError,
        match=r"^Dockerfile:1: ONBUILD trigger 'RUN --nope x' of the base image: unknown flag",
    ):
        compile_text("FROM onb\n", resolver=Resolver({"onb": image(on_build=["RUN --nope x"])}))


def test_config_changes_apply_to_the_base_config() -> None:
    """The value shapes are the ones the executor's apply_change understands."""
    base = image(["PATH=/bin"], cmd=["sh"], on_build=["RUN base-trigger"])
    plan = compile_text(
        """
        FROM base
        ENV A=1 B="two words"
        LABEL org.opencontainers.image.title="kiln test" version=1
        EXPOSE 80 53/udp 8000-8001
        VOLUME ["/data", "/logs"]
        WORKDIR /srv
        USER 1000:1000
        STOPSIGNAL SIGQUIT
        HEALTHCHECK --interval=5s --retries=3 CMD ["curl", "-f", "http://localhost/"]
        SHELL ["/bin/bash", "-c"]
        CMD ["--serve"]
        ENTRYPOINT ["/app"]
        ONBUILD RUN echo child
        MAINTAINER someone@example.com
        """,
        resolver=Resolver({"base": base}),
        image_format="docker",
    )
    config = base.clone()
    for meta in metas(plan):
        for change in meta.changes:
            apply_change(config, change)
    cfg = config.config
    assert cfg.env == ["PATH=/bin", "A=1", "B=two words"]
    assert cfg.labels == {"org.opencontainers.image.title": "kiln test", "version": "1"}
    assert cfg.exposed_ports == {"80/tcp": {}, "53/udp": {}, "8000/tcp": {}, "8001/tcp": {}}
    assert cfg.volumes == {"/data": {}, "/logs": {}}
    assert cfg.working_dir == "/srv" and cfg.user == "1000:1000" and cfg.stop_signal == "SIGQUIT"
    assert cfg.healthcheck is not None
    assert cfg.healthcheck.test == ["CMD", "curl", "-f", "http://localhost/"]
    assert (cfg.healthcheck.interval, cfg.healthcheck.retries, cfg.healthcheck.timeout) == (
        5 * 10**9,
        3,
        None,
    )
    assert cfg.shell == ["/bin/bash", "-c"]
    assert cfg.entrypoint == ["/app"]
    assert cfg.cmd == ["--serve"]  # set earlier in this stage: ENTRYPOINT keeps it
    assert cfg.args_escaped is True
    assert cfg.on_build == ["RUN echo child"]  # the base's own trigger is gone
    assert config.author == "someone@example.com"


# ---------------------------------------------------------------------------- describe


def test_describe_a_multi_stage_plan() -> None:
    plan = compile_text(
        """
        FROM golang:1.22 AS build
        WORKDIR /src
        RUN <<EOF
        go build -o /out/app .
        EOF
        FROM alpine AS test
        RUN go test
        FROM scratch
        COPY --from=build /out/app /app
        ENTRYPOINT ["/app"]
        """
    )
    assert plan.describe().splitlines() == [
        "plan (dockerfile, linux/amd64, format oci); target: stage-2",
        "stage 0 'build' from golang:1.22",
        "  [1/2] meta WORKDIR /src",
        "  [2/2] run  RUN /bin/sh -c go build -o /out/app .\\n # buildkit",
        "stage 1 'test' from alpine  (skipped: not needed for the target)",
        "stage 2 'stage-2' from scratch",
        "  [1/2] copy COPY /out/app /app # buildkit",
        '  [2/2] meta ENTRYPOINT ["/app"]',
    ]
    assert b'"target":2' in plan.to_json()


@pytest.mark.parametrize(
    "module",
    [
        "kiln.frontend.dockerfile.compile",
        "kiln.frontend.dockerfile.compile_meta",
        "kiln.frontend.dockerfile.history",
    ],
)
def test_docstring_examples(module: str) -> None:
    assert doctest.testmod(importlib.import_module(module)).failed == 0


def test_meta1_helper_sanity() -> None:
    plan = compile_text("FROM alpine\nUSER nobody\n")
    assert meta1(plan).changes == (ConfigChange("user", "nobody"),)
