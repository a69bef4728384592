"""`kiln build --config`: every strategy run locally as the unprivileged builder, through the build pod's code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.cli.buildkit import BuilderWorkspace
from tests.cluster.builders import (
    CUSTOM_BUILD_SH,
    S2I_ASSEMBLE,
    S2I_RUN,
    custom,
    custom_builder_dockerfile,
    docker_inline,
    pipeline,
    s2i_builder_dockerfile,
    source,
)
from tests.fixtures.images import BuiltImage, push_with_skopeo
from tests.fixtures.registry import Registry
from tests.fixtures.rootless import Rootless

pytestmark = pytest.mark.rootless


@pytest.fixture
def ws(rootless: Rootless) -> BuilderWorkspace:
    return BuilderWorkspace(rootless, rootless.builder_tmpdir("bc-"))


@pytest.fixture(scope="module")
def busybox(registry: Registry, busybox_image: BuiltImage) -> str:
    push_with_skopeo(busybox_image.layout, registry, "cluster-local/busybox:latest")
    return f"{registry.host}/cluster-local/busybox:latest"


def write_config(ws: BuilderWorkspace, name: str, obj: dict[str, Any]) -> Path:
    ctx = ws.context(f"cfg-{name}", {"bc.yaml": yaml.safe_dump(obj)}, busybox=False)
    return ctx / "bc.yaml"


def run_config(ws: BuilderWorkspace, config: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    result = ws.root / f"{config.parent.name}.result.json"
    done = ws.kiln("build", "--progress", "plain", "--config", str(config), "--result-file", str(result), *args)
    outcome = json.loads(result.read_text()) if result.exists() else {}
    return done.returncode, outcome, done.stdout + done.stderr


def manifest_digest(registry: Registry, repo: str, tag: str) -> str:
    r = httpx.head(f"{registry.url}/v2/{repo}/manifests/{tag}", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    r.raise_for_status()
    return r.headers["Docker-Content-Digest"]


def test_docker_inline_pushes_with_stages(ws: BuilderWorkspace, registry: Registry, busybox: str, fresh_repo: Any) -> None:
    repo = fresh_repo()
    cfg = write_config(ws, "docker", docker_inline("hello", busybox, f"{registry.host}/{repo}:latest"))
    code, outcome, log = run_config(ws, cfg, "--push")
    assert code == 0, log
    assert outcome["ok"] is True
    assert [s["name"] for s in outcome["stages"]] == ["FetchInputs", "Build", "PushImage"]
    assert outcome["imageDigest"] == manifest_digest(registry, repo, "latest")
    assert outcome["outputDockerImageReference"] == f"{registry.host}/{repo}:latest"
    assert outcome["baseImages"] == [{"name": busybox, "digest": manifest_digest(registry, "cluster-local/busybox", "latest")}]
    assert "kiln-build-result: " in log
    # the image says what the Dockerfile edits did: ENV after FROM, the build arg, the label
    run = ws.kiln("run", f"{registry.host}/{repo}:latest", "cat", "/hello.txt")
    assert run.stdout == "hello from kiln, hi\n", run.stderr


def test_failing_build_reports_the_reason_and_the_log_tail(ws: BuilderWorkspace, registry: Registry, busybox: str) -> None:
    obj = docker_inline("broken", busybox, f"{registry.host}/cluster-local/broken:latest")
    obj["spec"]["source"]["dockerfile"] = f"FROM {busybox}\nRUN echo about-to-fail && exit 3\n"
    code, outcome, log = run_config(ws, write_config(ws, "broken", obj), "--push")
    assert code == 1, log
    assert outcome["ok"] is False and outcome["reason"] == "DockerBuildFailed"
    assert "about-to-fail" in outcome["logSnippet"]
    assert [s["name"] for s in outcome["stages"]] == ["FetchInputs", "Build"]


def test_git_source_with_context_dir(ws: BuilderWorkspace, rootless: Rootless, busybox: str) -> None:
    repo = ws.context("gitrepo", {"app/Dockerfile": f"FROM {busybox}\nCOPY msg.txt /msg.txt\n", "app/msg.txt": "from git\n"}, busybox=False)
    for args in (["init", "-q", "-b", "main"], ["add", "."], ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "x"], ["tag", "v1"]):
        assert rootless.run_as_builder(["git", "-C", str(repo), *args]).returncode == 0
    obj = {"apiVersion": "kiln.dev/v1alpha1", "kind": "BuildConfig", "metadata": {"name": "fromgit"},
           "spec": {"source": {"git": {"uri": f"file://{repo}", "ref": "v1"}, "contextDir": "app"}, "strategy": {"type": "Docker"},
                    "output": {"to": {"name": "localhost/fromgit:latest"}}}}  # fmt: skip
    code, _, log = run_config(ws, write_config(ws, "fromgit", obj))
    assert code == 0, log
    run = ws.kiln("run", "localhost/fromgit:latest", "cat", "/msg.txt")
    assert run.stdout == "from git\n", run.stderr


def test_pipeline_steps_share_the_workspace(ws: BuilderWorkspace, registry: Registry, busybox: str, fresh_repo: Any) -> None:
    repo = fresh_repo()
    code, outcome, log = run_config(ws, write_config(ws, "pipe", pipeline("pipe", busybox, f"{registry.host}/{repo}:latest")), "--push")
    assert code == 0, log
    build = next(s for s in outcome["stages"] if s["name"] == "Build")
    assert [s["name"] for s in build["steps"]] == ["compile", "test"]
    assert outcome["imageDigest"] == manifest_digest(registry, repo, "latest")
    run = ws.kiln("run", f"{registry.host}/{repo}:latest", "cat", "/app.txt")
    assert run.stdout == "compiled one\n", run.stderr


def test_pipeline_step_failure_stops_the_pipeline(ws: BuilderWorkspace, busybox: str) -> None:
    obj = pipeline("pipefail", busybox, "localhost/pipefail:latest")
    obj["spec"]["strategy"]["pipelineStrategy"]["steps"][1]["command"] = ["sh", "-c", "echo failing-test; exit 4"]
    code, outcome, log = run_config(ws, write_config(ws, "pipefail", obj))
    assert code == 1, log
    assert outcome["reason"] == "GenericBuildFailed"
    assert "step 'test' exited with code 4" in outcome["message"]


CUSTOM_VARS = {"OUTPUT_IMAGE", "OUTPUT_REGISTRY", "SOURCE_URI", "SOURCE_REF", "PUSH_DOCKERCFG_PATH", "GREETING", "BUILD"}


def test_custom_builder_gets_openshifts_environment(ws: BuilderWorkspace, registry: Registry, busybox: str, fresh_repo: Any) -> None:
    builder = f"{registry.host}/{fresh_repo('builder')}:latest"
    ctx = ws.context("custom-builder", {"Dockerfile": custom_builder_dockerfile(busybox), "build.sh": CUSTOM_BUILD_SH}, busybox=False)
    assert ws.build(ctx, "-t", builder, "--push").returncode == 0
    repo = fresh_repo("out")
    code, outcome, log = run_config(ws, write_config(ws, "custom", custom("cust", builder, f"{registry.host}/{repo}:v1")), "--push")
    assert code == 0, log
    assert [s["name"] for s in outcome["stages"]] == ["Build", "PushImage"]  # a custom builder fetches its own source
    assert outcome["imageDigest"] == manifest_digest(registry, repo, "v1")
    env = dict(line.split("=", 1) for line in log.splitlines() if line.split("=", 1)[0] in CUSTOM_VARS)
    assert env == {"OUTPUT_IMAGE": f"{registry.host}/{repo}:v1", "OUTPUT_REGISTRY": registry.host, "SOURCE_URI": "https://git.invalid/app.git",
                   "SOURCE_REF": "v1", "PUSH_DOCKERCFG_PATH": "", "GREETING": "custom-hi", "BUILD": "ok"}  # fmt: skip


def test_source_strategy_through_the_s2i_frontend(ws: BuilderWorkspace, registry: Registry, busybox: str, fresh_repo: Any) -> None:
    builder = f"{registry.host}/{fresh_repo('s2i-builder')}:latest"
    ctx = ws.context("s2i-builder", {"Dockerfile": s2i_builder_dockerfile(busybox), "assemble": S2I_ASSEMBLE, "run": S2I_RUN}, busybox=False)
    done = ws.build(ctx, "-t", builder, "--push")
    assert done.returncode == 0, done.stderr
    app = ws.context("s2i-app", {"index.txt": "app source\n"}, busybox=False)
    output = f"{registry.host}/{fresh_repo('s2i-out')}:latest"
    result = ws.root / "s2i.result.json"
    cfg = write_config(ws, "s2i", source("s2i", builder, output))
    run = ws.kiln("build", "--progress", "plain", "--config", str(cfg), "--result-file", str(result), "--push", str(app))
    assert run.returncode == 0, run.stdout + run.stderr
    outcome = json.loads(result.read_text())
    assert [s["name"] for s in outcome["stages"]] == ["FetchInputs", "Build", "PushImage"]
    ran = ws.kiln("run", output)
    assert ran.stdout == "assembled with s2i-hi\n", ran.stderr


def test_invalid_config_is_one_line(ws: BuilderWorkspace) -> None:
    cfg = write_config(ws, "bad", {"apiVersion": "kiln.dev/v1alpha1", "kind": "BuildConfig", "metadata": {"name": "x"}, "spec": {"strategy": {"type": "Jenkins"}}})
    done = ws.kiln("build", "--config", str(cfg))
    assert done.returncode == 2
    assert "invalid BuildConfig: spec.strategy.type: Input should be 'Docker', 'Source', 'Custom' or 'Pipeline'" in done.stderr
    assert "Traceback" not in done.stderr
