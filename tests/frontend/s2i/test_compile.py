"""Compiling S2I builds into a Recipe, a Plan and a Dockerfile (no disk, no images)."""

from __future__ import annotations

import doctest
import importlib

import pytest

from kiln.build.plan import ContextSource, CopyStep, ImageSource, MetaStep, RunStep, StageSource
from kiln.frontend.dockerfile.compile import compile_dockerfile
from kiln.frontend.s2i.compile import (
    ARTIFACTS_MOUNT,
    SAVED_TAR,
    RuntimeInputs,
    S2ICompileError,
    S2IInputs,
    compile_recipe,
)
from kiln.frontend.s2i.config import PathMapping
from kiln.frontend.s2i.recipe import to_dockerfile, to_plan
from kiln.frontend.s2i.scripts import Script
from kiln.oci.models import ContainerConfig, ImageConfig

BUILDER = "registry.test/s2i/builder:1"
RUNTIME = "registry.test/s2i/runtime:1"
PREVIOUS = "registry.test/app:1"


def cfg(user: str = "1001", workdir: str = "/opt/app-root/src", env: list[str] | None = None) -> ImageConfig:
    return ImageConfig(config=ContainerConfig(user=user, working_dir=workdir, env=env or ["PATH=/usr/bin:/bin", "HOME=/opt/app-root"]))


def image_scripts(*names: str, folder: str = "/usr/libexec/s2i") -> dict[str, Script]:
    return {n: Script(n, "label", image_path=f"{folder}/{n}") for n in names}


def inputs(**kw: object) -> S2IInputs:
    base: dict[str, object] = {
        "builder": BUILDER,
        "user": "1001",
        "destination": "/tmp",
        "scripts": image_scripts("assemble", "run", "save-artifacts"),
        "env": (("A", "1"), ("B", "two words")),
        "labels": (("io.openshift.s2i.build.image", BUILDER),),
    }
    base.update(kw)
    return S2IInputs(**base)  # type: ignore[arg-type]


CONFIGS = {BUILDER: cfg(), RUNTIME: cfg(user="2000", workdir="/srv"), PREVIOUS: cfg()}


def test_plain_build_is_one_builder_stage() -> None:
    plan = to_plan(compile_recipe(inputs()), CONFIGS)
    assert plan.frontend == "s2i" and len(plan.stages) == 1 and plan.target == 0
    stage = plan.stages[0]
    assert stage.name == "builder" and stage.base == ImageSource(BUILDER)
    kinds = [(s.kind, s.created_by) for s in stage.steps]
    assert kinds == [
        ("meta", 'ENV A="1" B="two words"'),
        ("copy", 'COPY --chown=1001:0 ["upload/src", "/tmp/src/"]'),
        ("meta", "USER 1001"),
        ("run", "RUN /usr/libexec/s2i/assemble"),
        ("meta", 'CMD ["/usr/libexec/s2i/run"]'),
        ("meta", 'LABEL io.openshift.s2i.build.image="registry.test/s2i/builder:1"'),
    ]
    copy = stage.steps[1]
    assert isinstance(copy, CopyStep) and copy.source_from == ContextSource() and copy.chown == "1001:0"
    run = stage.steps[3]
    assert isinstance(run, RunStep)
    assert run.user == "1001" and run.workdir == "/opt/app-root/src" and run.mounts == ()
    assert dict(run.env) == {"PATH": "/usr/bin:/bin", "HOME": "/opt/app-root", "A": "1", "B": "two words"}
    assert run.argv[:2] == ("/bin/sh", "-c") and run.argv[-1] == "s2i-assemble"
    assert run.argv[2].endswith("exec /usr/libexec/s2i/assemble")


def test_uploaded_scripts_are_copied_and_run_from_the_destination() -> None:
    scripts = {**image_scripts("run", "save-artifacts"), "assemble": Script("assemble", ".s2i/bin", content=b"#!/bin/sh\n")}
    plan = to_plan(compile_recipe(inputs(scripts=scripts, destination="/opt/s2i")), CONFIGS)
    steps = plan.stages[0].steps
    copies = [s for s in steps if isinstance(s, CopyStep)]
    assert [(c.sources, c.dest) for c in copies] == [(("upload/scripts",), "/opt/s2i/scripts/"), (("upload/src",), "/opt/s2i/src/")]
    run = next(s for s in steps if isinstance(s, RunStep))
    assert run.created_by == "RUN /opt/s2i/scripts/assemble"


def test_incremental_adds_a_cached_stage_and_a_read_only_artifacts_mount() -> None:
    plan = to_plan(compile_recipe(inputs(previous=PREVIOUS)), CONFIGS)
    cached, builder = plan.stages
    assert cached.name == "cached" and cached.base == ImageSource(PREVIOUS)
    placeholder, save = cached.steps[0], cached.steps[-1]
    assert isinstance(placeholder, CopyStep) and placeholder.dest == SAVED_TAR and placeholder.chown == "1001:0"
    assert isinstance(save, RunStep) and save.user == "1001" and f"> {SAVED_TAR}" in save.argv[2]
    assemble = next(s for s in builder.steps if isinstance(s, RunStep))
    (mount,) = assemble.mounts
    assert mount.source_from == StageSource(0) and mount.readonly and mount.target == ARTIFACTS_MOUNT
    assert "tar -xf" in assemble.argv[2] and "/tmp/artifacts" in assemble.argv[2]
    assert plan.needed_stages() == [0, 1]


def test_injections_are_bind_mounts_of_the_assemble_step_only() -> None:
    inj = (PathMapping("upload/injections/0", "/run/secrets"),)
    plan = to_plan(compile_recipe(inputs(injections=inj)), CONFIGS)
    assemble = next(s for s in plan.stages[0].steps if isinstance(s, RunStep))
    (mount,) = assemble.mounts
    assert (mount.type, mount.source, mount.target, mount.source_from, mount.readonly) == ("bind", "upload/injections/0", "/run/secrets", None, True)
    assert not any(isinstance(s, CopyStep) and "injections" in s.sources[0] for s in plan.stages[0].steps)


def runtime(**kw: object) -> RuntimeInputs:
    base: dict[str, object] = {
        "image": RUNTIME,
        "user": "2000",
        "workdir": "/srv",
        "scripts": image_scripts("assemble-runtime", "run", folder="/usr/libexec/rt"),
        "artifacts": (PathMapping("/opt/app-root/app.jar", "."), PathMapping("/opt/app-root/lib/", "deps")),
    }
    base.update(kw)
    return RuntimeInputs(**base)  # type: ignore[arg-type]


def test_runtime_stage_copies_artifacts_from_the_builder_stage() -> None:
    plan = to_plan(compile_recipe(inputs(runtime=runtime())), CONFIGS)
    assert [s.name for s in plan.stages] == ["builder", "runtime"] and plan.target == 1
    rt = plan.stages[1]
    copies = [s for s in rt.steps if isinstance(s, CopyStep)]
    assert [(c.sources, c.dest, c.source_from, c.chown) for c in copies] == [
        (("/opt/app-root/app.jar",), "/srv/app.jar", StageSource(0), "2000:0"),
        (("/opt/app-root/lib",), "/srv/deps/lib", StageSource(0), "2000:0"),
    ]
    run = next(s for s in rt.steps if isinstance(s, RunStep))
    assert run.user == "2000" and run.workdir == "/srv" and run.created_by == "RUN /usr/libexec/rt/assemble-runtime"
    meta = [c for s in rt.steps if isinstance(s, MetaStep) for c in s.changes]
    assert ("cmd", ["/usr/libexec/rt/run"]) in [(c.op, c.value) for c in meta]


@pytest.mark.parametrize(
    ("artifacts", "message"),
    [((), "no runtime artifacts"), ((PathMapping("rel/path", "."),), "absolute"), ((PathMapping("/x", "/abs"),), "relative")],
)
def test_bad_runtime_artifacts(artifacts: tuple[PathMapping, ...], message: str) -> None:
    with pytest.raises(S2ICompileError, match=message):
        compile_recipe(inputs(runtime=runtime(artifacts=artifacts)))


def test_dockerfile_rendering_compiles_to_the_same_steps() -> None:
    """The --as-dockerfile text, compiled by kiln's Dockerfile frontend, does what the plan does."""
    scripts = {**image_scripts("run", "save-artifacts"), "assemble": Script("assemble", ".s2i/bin", content=b"x")}
    recipe = compile_recipe(
        inputs(
            scripts=scripts, previous=PREVIOUS, runtime=runtime(),
            env=(("A", "$HOME \"quoted\" \\ back"),), labels=(("k", "v $x"), ("io.k8s.display-name", "App")),
            injections=(PathMapping("upload/injections/0", "/run/secrets"),),
        )
    )  # fmt: skip
    direct = to_plan(recipe, CONFIGS)
    text = to_dockerfile(recipe, "generated\nfor a test")
    assert text.startswith("# generated\n# for a test\n")
    via = compile_dockerfile(text, filename="Dockerfile", build_args={}, target=None, platform=direct.platform,
                             image_format="oci", resolve_config=lambda ref: CONFIGS[ref])  # fmt: skip
    assert [s.name for s in via.stages] == [s.name for s in direct.stages]
    for a, b in zip(direct.stages, via.stages, strict=True):
        assert a.base == b.base
        runs_a = [s for s in a.steps if isinstance(s, RunStep)]
        runs_b = [s for s in b.steps if isinstance(s, RunStep)]
        assert [(r.argv, r.user, r.workdir, dict(r.env), r.mounts) for r in runs_a] == [
            (r.argv, r.user, r.workdir, {k: v for k, v in r.env if k != "PATH"} | {"PATH": dict(r.env)["PATH"]}, r.mounts) for r in runs_b
        ]
        copies = [(c.sources, c.dest, c.chown, c.source_from) for c in a.steps if isinstance(c, CopyStep)]
        assert copies == [(c.sources, c.dest, c.chown, c.source_from) for c in b.steps if isinstance(c, CopyStep)]
        changes_a = [(c.op, c.value) for s in a.steps if isinstance(s, MetaStep) for c in s.changes]
        changes_b = [(c.op, c.value) for s in b.steps if isinstance(s, MetaStep) for c in s.changes if c.op != "args_escaped"]
        assert changes_a == changes_b


MODULES = ["kiln.frontend.s2i.users", "kiln.frontend.s2i.config"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    assert doctest.testmod(importlib.import_module(name)).failed == 0
