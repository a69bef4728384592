"""Builds on the real control plane: every strategy builds in a build pod and pushes; the schema refuses bad input.

The controller runs as `kiln controller` (host process, ServiceAccount token, deploy/rbac.yaml's
rights); build pods run the builder image from deploy/builder/Dockerfile on the node agent.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.codecs import from_dict

from kiln.cluster.kube import Kube
from kiln.cluster.models import BuildPhase
from tests.cluster import e2e_support as e2e
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
from tests.cluster.trigger_support import manifest_digest
from tests.fixtures.gitrepo import bare_repo
from tests.fixtures.gitrepo import git_daemon as serve_git

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def run_build(installed: e2e.Installed, ctl: e2e.ControllerProcess, k: Kube, namespace: str, bc: dict[str, Any], *args: str,
              wait: str = "--wait") -> tuple[str, str]:  # fmt: skip
    """Create the BuildConfig, `kiln start-build --wait` (or --follow); the build's name and the command's output."""
    e2e.create(k, namespace, bc)
    done = e2e.kiln_cli(installed, "start-build", bc["metadata"]["name"], "-n", namespace, wait, *args)
    name = f"{bc['metadata']['name']}-1"
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{ctl.log_tail()}\n{e2e.kiln_cli(installed, 'logs', f'build/{name}', '-n', namespace).stdout}"
    return name, done.stdout


def assert_complete(k: Kube, installed: e2e.Installed, namespace: str, name: str, output: str, stages: list[str]) -> None:
    build = k.get_build(namespace, name)
    assert build is not None
    st = build.status
    assert st.phase is BuildPhase.COMPLETE
    assert [s.name for s in st.stages] == stages
    assert st.image_digest == manifest_digest(installed.registry, output.removeprefix(f"{installed.registry}/"))
    assert st.output_docker_image_reference == output
    assert st.pod_name == f"{name}-build"
    assert st.config is not None and st.config.name == build.config_name
    assert st.start_timestamp and st.completion_timestamp and st.duration is not None and st.duration >= 0


def test_docker_inline_build(installed: e2e.Installed, ctl: e2e.ControllerProcess, k: Kube, namespace: str) -> None:
    output = f"{installed.registry}/{namespace}/inline:latest"
    name, _ = run_build(installed, ctl, k, namespace, docker_inline("inline", installed.busybox, output))
    assert_complete(k, installed, namespace, name, output, ["FetchInputs", "Build", "PushImage"])
    logs = e2e.kiln_cli(installed, "logs", "bc/inline", "-n", namespace)
    assert logs.returncode == 0 and "kiln-build-result" in logs.stdout, logs.stderr
    table = e2e.kiln_cli(installed, "get", "builds", "-n", namespace)
    assert table.stdout.splitlines()[0].split() == ["NAME", "TYPE", "FROM", "STATUS", "STARTED", "DURATION"]
    assert table.stdout.splitlines()[1].split()[:4] == [name, "Docker", "Dockerfile", "Complete"]


@pytest.fixture
def git_daemon(tmp_path: Path, installed: e2e.Installed) -> Iterator[tuple[str, Path]]:
    """A git repository served by `git daemon` on 127.0.0.1."""
    work = tmp_path / "work"
    files = {"sub/Dockerfile": f"FROM {installed.busybox}\nCOPY greeting.txt /greeting.txt\n", "sub/greeting.txt": "from git daemon\n"}
    bare_repo(work, tmp_path / "git" / "app.git", files, tag="v1")
    with serve_git(tmp_path / "git") as url:
        yield f"{url}/app.git", work


def test_docker_build_from_git(installed: e2e.Installed, ctl: e2e.ControllerProcess, k: Kube, namespace: str, git_daemon: tuple[str, Path]) -> None:
    uri, _ = git_daemon
    output = f"{installed.registry}/{namespace}/fromgit:v1"
    bc = {"apiVersion": "kiln.dev/v1alpha1", "kind": "BuildConfig", "metadata": {"name": "fromgit"},
          "spec": {"source": {"git": {"uri": uri, "ref": "v1"}, "contextDir": "sub"}, "strategy": {"type": "Docker"},
                   "output": {"to": {"kind": "DockerImage", "name": output}}}}  # fmt: skip
    name, _ = run_build(installed, ctl, k, namespace, bc)
    assert_complete(k, installed, namespace, name, output, ["FetchInputs", "Build", "PushImage"])


def test_binary_build_from_dir(installed: e2e.Installed, ctl: e2e.ControllerProcess, k: Kube, namespace: str, tmp_path: Path) -> None:
    src = tmp_path / "upload"
    src.mkdir()
    (src / "Dockerfile").write_text(f"FROM {installed.busybox}\nCOPY payload.txt /payload.txt\nRUN grep -q uploaded /payload.txt\n")
    (src / "payload.txt").write_text("uploaded by start-build\n")
    output = f"{installed.registry}/{namespace}/binary:latest"
    bc = {"apiVersion": "kiln.dev/v1alpha1", "kind": "BuildConfig", "metadata": {"name": "bin"},
          "spec": {"source": {"binary": {}}, "strategy": {"type": "Docker"}, "output": {"to": {"kind": "DockerImage", "name": output}}}}  # fmt: skip
    name, _ = run_build(installed, ctl, k, namespace, bc, "--from-dir", str(src))
    assert_complete(k, installed, namespace, name, output, ["FetchInputs", "Build", "PushImage"])
    build = k.get_build(namespace, name)
    assert build is not None and build.spec.source.binary is not None
    assert (build.spec.source.binary.artifact or "").startswith(f"{installed.registry}/{namespace}/binary@sha256:")
    # without an upload, a binary BuildConfig refuses to start
    refused = e2e.kiln_cli(installed, "start-build", "bin", "-n", namespace)
    assert refused.returncode == 2 and "takes binary input" in refused.stderr


def test_pipeline_build(installed: e2e.Installed, ctl: e2e.ControllerProcess, k: Kube, namespace: str) -> None:
    output = f"{installed.registry}/{namespace}/pipe:latest"
    name, out = run_build(installed, ctl, k, namespace, pipeline("pipe", installed.busybox, output), wait="--follow")
    assert_complete(k, installed, namespace, name, output, ["FetchInputs", "Build", "PushImage"])
    # --follow streamed the pod's log, then waited and printed the image
    assert "--> step 1/2 compile" in out and "--> step 2/2 test" in out
    assert out.rstrip().endswith(f"{output}@{k.get_build(namespace, name).status.image_digest}")  # type: ignore[union-attr]
    build = k.get_build(namespace, name)
    assert build is not None
    assert [s.name for s in build.status.stages[1].steps] == ["compile", "test"]


@pytest.fixture(scope="session")
def custom_builder(installed: e2e.Installed) -> str:
    ref = f"{installed.registry}/e2e/custom-builder:latest"
    ctx = Path(tempfile.mkdtemp(prefix="kiln-e2e-custom-"))
    try:
        (ctx / "Dockerfile").write_text(custom_builder_dockerfile(installed.busybox))
        (ctx / "build.sh").write_text(CUSTOM_BUILD_SH)
        done = e2e.kiln_cli(installed, "build", "--progress", "plain", "-t", ref, "--push", str(ctx))
        assert done.returncode == 0, done.stderr
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    return ref


def test_custom_build(installed: e2e.Installed, ctl: e2e.ControllerProcess, k: Kube, namespace: str, custom_builder: str) -> None:
    output = f"{installed.registry}/{namespace}/custom:v1"
    name, _ = run_build(installed, ctl, k, namespace, custom("cust", custom_builder, output))
    assert_complete(k, installed, namespace, name, output, ["Build", "PushImage"])
    log = e2e.kiln_cli(installed, "logs", f"build/{name}", "-n", namespace).stdout
    assert f"OUTPUT_IMAGE={output}" in log and "BUILD=ok" in log and "GREETING=custom-hi" in log


@pytest.fixture(scope="session")
def s2i_builder(installed: e2e.Installed) -> str:
    ref = f"{installed.registry}/e2e/s2i-builder:latest"
    ctx = Path(tempfile.mkdtemp(prefix="kiln-e2e-s2i-"))
    try:
        (ctx / "assemble").write_text(S2I_ASSEMBLE)
        (ctx / "run").write_text(S2I_RUN)
        (ctx / "Dockerfile").write_text(s2i_builder_dockerfile(installed.busybox))
        done = e2e.kiln_cli(installed, "build", "--progress", "plain", "-t", ref, "--push", str(ctx))
        assert done.returncode == 0, done.stderr
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    return ref


def test_source_build(installed: e2e.Installed, ctl: e2e.ControllerProcess, k: Kube, namespace: str, s2i_builder: str) -> None:
    output = f"{installed.registry}/{namespace}/s2i:latest"
    bc = source("s2i", s2i_builder, output)
    src = Path(tempfile.mkdtemp(prefix="kiln-e2e-s2i-src-"))
    (src / "index.txt").write_text("app source\n")
    try:
        name, _ = run_build(installed, ctl, k, namespace, bc, "--from-dir", str(src))
    finally:
        shutil.rmtree(src, ignore_errors=True)
    assert_complete(k, installed, namespace, name, output, ["FetchInputs", "Build", "PushImage"])


def test_baseline_namespace_admits_build_pods(installed: e2e.Installed, ctl: e2e.ControllerProcess, k: Kube, namespace: str, cluster: Any) -> None:
    cluster.client().patch(
        __import__("lightkube.resources.core_v1", fromlist=["Namespace"]).Namespace, namespace,
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "baseline", "pod-security.kubernetes.io/enforce-version": "latest"}}},
    )  # fmt: skip
    # the label is enforced: a privileged pod is refused here
    with pytest.raises(ApiError, match="violates PodSecurity"):
        cluster.client().create(from_dict({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "priv", "namespace": namespace},
                                           "spec": {"containers": [{"name": "c", "image": installed.busybox, "securityContext": {"privileged": True}}]}}))  # fmt: skip
    output = f"{installed.registry}/{namespace}/baseline:latest"
    name, _ = run_build(installed, ctl, k, namespace, docker_inline("baseline", installed.busybox, output))
    assert_complete(k, installed, namespace, name, output, ["FetchInputs", "Build", "PushImage"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"strategy": {"type": "Jenkins"}, "source": {"dockerfile": "FROM x"}}, 'Unsupported value: "Jenkins"'),
        ({"strategy": {"type": "Source"}, "source": {"git": {"uri": "x"}}}, "strategy.sourceStrategy is required when strategy.type is Source"),
        ({"strategy": {"type": "Docker"}}, "a Docker or Source build needs source.git, source.dockerfile or source.binary"),
        ({"strategy": {"type": "Docker"}, "source": {"dockerfile": "x"}, "runPolicy": "Sometimes"}, 'Unsupported value: "Sometimes"'),
        ({"source": {"dockerfile": "x"}}, "spec.strategy: Required value"),
        ({"strategy": {"type": "Pipeline", "pipelineStrategy": {"steps": [{"name": "a", "image": "b"}]}}}, "exactly one of script or command"),
    ],
)
def test_invalid_buildconfig_is_refused_by_the_schema(installed: e2e.Installed, k: Kube, namespace: str, spec: dict[str, Any], message: str) -> None:
    from kiln.cluster.kube import KubeError

    with pytest.raises(KubeError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        e2e.create(k, namespace, {"apiVersion": "kiln.dev/v1alpha1", "kind": "BuildConfig", "metadata": {"name": "bad"}, "spec": spec})
