"""The real control plane for end-to-end tests (dev/cluster.py), and helpers to drive it.

    def test_x(cluster, namespace, cluster_busybox):
        api = cluster.api()                                  # dev.kubeapi.KubeApi (JSON dicts)
        kube = cluster.client()                              # lightkube.Client on the same kubeconfig
        create_pod(api, namespace, busybox_pod("p", cluster_busybox, ["sh", "-c", "echo hi"]))
        pod = wait_for_pod(api, namespace, "p", phases={"Succeeded", "Failed"})
        assert pod_log(api, namespace, "p") == "hi\\n"

The session's cluster is started fresh in a temp dir (stopped by PID at the end), or, when
KILN_DEV_KUBECONFIG points at the kubeconfig of a `make cluster-up` cluster, that one is reused
(and left running). Binaries are built once into ~/.cache/kiln-testbin before the first test
runs (tests/e2e/conftest.py); without network the e2e tests skip.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dev import testbin
from dev.cluster import ClusterInfo, DevCluster, build_builder_image
from dev.kubeapi import ApiError, KubeApi

Obj = dict[str, Any]
TERMINAL = frozenset({"Succeeded", "Failed"})
DEFAULT_WAIT = 180.0


@dataclass
class Cluster:
    """A running dev control plane.

    kubeconfig: admin kubeconfig (system:masters client certificate, embedded)
    server: "https://127.0.0.1:PORT"; ca_file: the cluster CA (serving and client certificates)
    registry: "127.0.0.1:PORT" of the loopback registry (plain HTTP); registry_url: "http://..."
    node_name: the node agent's Node; state_dir: certificates, logs (logs/NAME.log), PID files
    reused: True when it came from `make cluster-up` (KILN_DEV_KUBECONFIG) and is left running
    """

    info: ClusterInfo
    reused: bool
    _apis: list[KubeApi] = field(default_factory=list, repr=False)

    @property
    def kubeconfig(self) -> Path:
        return Path(self.info.kubeconfig)

    @property
    def server(self) -> str:
        return self.info.server

    @property
    def ca_file(self) -> Path:
        return Path(self.info.ca_file)

    @property
    def registry(self) -> str:
        return self.info.registry

    @property
    def registry_url(self) -> str:
        return f"http://{self.info.registry}"

    @property
    def node_name(self) -> str:
        return self.info.node_name

    @property
    def state_dir(self) -> Path:
        return Path(self.info.state_dir)

    def api(self) -> KubeApi:
        """A JSON client with the admin credentials (closed at the end of the session)."""
        client = KubeApi(self.kubeconfig)
        self._apis.append(client)
        return client

    def client(self) -> Any:
        """A lightkube Client with the admin credentials."""
        from lightkube import Client, KubeConfig

        return Client(KubeConfig.from_file(str(self.kubeconfig)), field_manager="kiln-e2e")

    def image(self, repository: str) -> str:
        """A reference in the cluster's registry: image("t/busybox:1") -> "127.0.0.1:PORT/t/busybox:1"."""
        return f"{self.registry}/{repository}"

    def log_tail(self, component: str = "node-agent", lines: int = 60) -> str:
        """The end of a component's log (registry, etcd, kube-apiserver, kube-controller-manager, node-agent)."""
        try:
            text = (self.state_dir / "logs" / f"{component}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        for a in self._apis:
            a.close()


def start_session_cluster() -> Iterator[Cluster]:
    """The generator behind the session fixture `cluster`."""
    reuse = os.environ.get("KILN_DEV_KUBECONFIG")
    if reuse:
        state = Path(reuse).resolve().parent
        dev = DevCluster(state)
        if not dev.is_up():
            pytest.fail(f"KILN_DEV_KUBECONFIG={reuse}: no running cluster there (make cluster-up)")
        c = Cluster(dev.info(), reused=True)
        yield c
        c.close()
        return
    if shutil.which("docker-registry") is None and not Path("/usr/bin/docker-registry").exists():
        pytest.skip("docker-registry is not installed (make setup)")
    sweep_stale_sessions()
    state = Path(tempfile.mkdtemp(prefix="kiln-cluster-", dir="/tmp"))
    dev = DevCluster(state, die_with_parent=True)
    try:
        c = Cluster(dev.up(), reused=False)
    except testbin.TestbinUnavailable as exc:
        shutil.rmtree(state, ignore_errors=True)
        pytest.skip(f"control-plane binaries unavailable: {str(exc).splitlines()[0]}")
    except BaseException:
        dev.down(quiet=True)
        shutil.rmtree(state, ignore_errors=True)
        raise
    try:
        yield c
    finally:
        c.close()
        dev.down(quiet=True)
        if os.environ.get("KILN_KEEP_CLUSTER_STATE"):
            print(f"kiln e2e: cluster state kept in {state}")
        else:
            shutil.rmtree(state, ignore_errors=True)


def sweep_stale_sessions(min_age: float = 600.0) -> None:
    """Remove /tmp/kiln-cluster-* dirs of killed sessions: none of their recorded processes lives
    (their processes died with the session) and they are older than ``min_age`` seconds."""
    for state in Path("/tmp").glob("kiln-cluster-*"):
        try:
            if time.time() - state.stat().st_mtime < min_age or not (state / "cluster.json").exists():
                continue
        except OSError:
            continue
        if all(pid is None for pid in DevCluster(state).running().values()):
            shutil.rmtree(state, ignore_errors=True)


# ---- helpers ---------------------------------------------------------------------------------
def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def create_namespace(api: KubeApi, name: str | None = None, labels: dict[str, str] | None = None) -> str:
    name = name or unique("e2e")
    api.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                      "metadata": {"name": name, "labels": labels or {}}})
    return name


def delete_namespace(api: KubeApi, name: str) -> None:
    with contextlib.suppress(ApiError):
        api.delete(f"/api/v1/namespaces/{name}")


def busybox_pod(name: str, image: str, command: list[str] | None = None, **spec: Any) -> Obj:
    """A one-container Pod (container "main", restartPolicy Never unless given)."""
    container: Obj = {"name": "main", "image": image}
    if command is not None:
        container["command"] = command
    for key in ("args", "env", "envFrom", "volumeMounts", "workingDir", "securityContext",
                "terminationMessagePolicy", "terminationMessagePath"):
        if key in spec:
            container[key] = spec.pop(key)
    body: Obj = {"restartPolicy": "Never", "containers": [container], **spec}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": body}


def create_pod(api: KubeApi, namespace: str, pod: Obj) -> Obj:
    return api.create(f"/api/v1/namespaces/{namespace}/pods", pod)


def get_pod(api: KubeApi, namespace: str, name: str) -> Obj | None:
    return api.get_or_none(f"/api/v1/namespaces/{namespace}/pods/{name}")


def wait_for(check: Callable[[], Any], what: str, timeout: float = DEFAULT_WAIT, interval: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def wait_for_pod(api: KubeApi, namespace: str, name: str, *, phases: frozenset[str] | set[str] = TERMINAL,
                 condition: Callable[[Obj], bool] | None = None, timeout: float = DEFAULT_WAIT) -> Obj:
    """The pod once its phase is in ``phases`` (and ``condition(pod)`` holds, if given)."""
    def check() -> Obj | None:
        pod = get_pod(api, namespace, name)
        if pod is None:
            return None
        if (pod.get("status") or {}).get("phase") not in phases:
            return None
        return pod if condition is None or condition(pod) else None

    result: Obj = wait_for(check, f"pod {namespace}/{name} in {sorted(phases)}", timeout)
    return result


def container_status(pod: Obj, name: str = "main", *, init: bool = False) -> Obj:
    key = "initContainerStatuses" if init else "containerStatuses"
    return next(s for s in pod["status"].get(key) or [] if s["name"] == name)


def pod_log(api: KubeApi, namespace: str, name: str, container: str | None = None, **params: str) -> str:
    """GET pods/NAME/log through the API server (which calls the node agent's kubelet port)."""
    query = dict(params)
    if container:
        query["container"] = container
    return api.text(f"/api/v1/namespaces/{namespace}/pods/{name}/log", params=query)


def pod_events(api: KubeApi, namespace: str) -> list[str]:
    items = api.get(f"/api/v1/namespaces/{namespace}/events").get("items", [])
    return [f"{e.get('reason')}: {e.get('message')}" for e in items]


def session_builder_image(c: Cluster) -> str:
    """The kiln builder image (deploy/builder/Dockerfile built by kiln) in the cluster registry."""
    marker = c.state_dir / "builder-image"
    if marker.exists():
        return marker.read_text().strip()
    ref = build_builder_image(c.info)
    if ref is None:
        pytest.skip("deploy/builder/Dockerfile does not exist yet")
    return ref
