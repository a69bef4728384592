"""The redeploy half of the trigger loop on the real control plane, with the controller's RBAC.

The Redeployer runs with a token of the kiln-controller ServiceAccount bound by the ClusterRole
from kiln.cluster.manifests (applied here without the rest of `kiln install`: no builder image is
needed), so a rule missing from deploy/rbac.yaml fails this test. kube-controller-manager is
real: the Deployment's new ReplicaSet is its work, not the test's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from dev.kubeapi import KubeApi
from lightkube import Client, KubeConfig
from lightkube.codecs import from_dict
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import ConfigMap

from kiln.cluster.kube import FIELD_MANAGER, ConflictError, Kube, KubeError, api_errors
from kiln.cluster.manifests import CONTROLLER, InstallOptions, rbac
from kiln.cluster.manifests import namespace as namespace_object
from kiln.cluster.redeploy import (
    ANNOTATION_TRIGGERS,
    KINDS,
    REASON_INVALID,
    REASON_NO_CONTAINER,
    REASON_UPDATED,
    Redeployer,
    wait_rollout,
    workloads_using,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

IMAGE = "127.0.0.1:5000/e2e/app:latest"
OTHER = "127.0.0.1:5000/e2e/other:latest"
SIDECAR = "127.0.0.1:5000/e2e/sidecar:1"
DIGEST = "sha256:" + "5e" * 32
PIN = "127.0.0.1:5000/e2e/app@" + DIGEST
PATHS = {
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "StatefulSet": "/apis/apps/v1/namespaces/{ns}/statefulsets",
    "DaemonSet": "/apis/apps/v1/namespaces/{ns}/daemonsets",
    "CronJob": "/apis/batch/v1/namespaces/{ns}/cronjobs",
}


@pytest.fixture(scope="module")
def controller_client(cluster: Any, kube_api: KubeApi) -> Iterator[Client]:
    """A lightkube Client holding a kiln-controller ServiceAccount token (the controller's rights)."""
    admin = Kube(cluster.client())
    opts = InstallOptions()
    for obj in [namespace_object(opts), *rbac(opts)]:
        with api_errors(obj["kind"]):
            admin.api.apply(from_dict(obj), field_manager=FIELD_MANAGER, force=True)
    token = kube_api.create(f"/api/v1/namespaces/{opts.namespace}/serviceaccounts/{CONTROLLER}/token",
                            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})  # fmt: skip
    config = KubeConfig.from_dict({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": cluster.server, "certificate-authority": str(cluster.ca_file)}}],
        "users": [{"name": "u", "user": {"token": token["status"]["token"]}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "default"}}],
    })  # fmt: skip
    client = Client(config, field_manager=FIELD_MANAGER)
    # the authorizer learns new bindings from a watch: give it a moment before the first 403 counts
    deadline = time.monotonic() + 30
    while True:
        try:
            with api_errors("deployments"):
                list(client.list(Deployment, namespace="*"))
            break
        except KubeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    with pytest.raises(KubeError, match="forbidden"), api_errors("configmaps"):  # it is not an admin
        list(client.list(ConfigMap, namespace="*"))
    yield client


def triggers(*entries: dict[str, Any]) -> dict[str, str]:
    return {ANNOTATION_TRIGGERS: json.dumps(list(entries))}


def pod_template(app: str, containers: dict[str, str], init: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"containers": [{"name": n, "image": i} for n, i in containers.items()], **spec}
    if init:
        body["initContainers"] = [{"name": n, "image": i} for n, i in init.items()]
    return {"metadata": {"labels": {"app": app}}, "spec": body}


def workload(kind: str, name: str, annotations: dict[str, str], containers: dict[str, str],
             init: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    meta = {"name": name, "annotations": annotations}
    if kind == "CronJob":
        job = {"template": pod_template(name, containers, init, restartPolicy="Never")}
        spec: dict[str, Any] = {"schedule": "0 3 * * *", "suspend": True, "jobTemplate": {"spec": job}}
        return {"apiVersion": "batch/v1", "kind": kind, "metadata": meta, "spec": spec}
    extra = {"nodeSelector": {"kiln.dev/no-such-node": "true"}} if kind == "DaemonSet" else {}
    spec = {"selector": {"matchLabels": {"app": name}}, "template": pod_template(name, containers, init, **extra)}
    if kind != "DaemonSet":
        spec["replicas"] = 0  # no scheduler, no kubelet for them: the ReplicaSet is what counts
    if kind == "StatefulSet":
        spec["serviceName"] = name
    return {"apiVersion": "apps/v1", "kind": kind, "metadata": meta, "spec": spec}


def create(api: KubeApi, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
    return api.create(PATHS[obj["kind"]].format(ns=ns), obj)


def get(api: KubeApi, ns: str, kind: str, name: str) -> dict[str, Any]:
    return api.get(PATHS[kind].format(ns=ns) + "/" + name)


def images(obj: dict[str, Any]) -> dict[str, str]:
    """container name -> image, init containers included."""
    spec: Any = obj
    for key in KINDS[obj["kind"]].pod_spec:
        spec = spec[key]
    return {c["name"]: c["image"] for c in [*spec.get("initContainers", []), *spec["containers"]]}


def events(api: KubeApi, ns: str) -> list[tuple[str, str, str, str]]:
    """(type, reason, involved name, message) of the namespace's Events."""
    items = api.get(f"/api/v1/namespaces/{ns}/events").get("items", [])
    return [(e["type"], e["reason"], e["involvedObject"]["name"], e["message"]) for e in items]


def test_redeploy_pins_triggered_containers(cluster: Any, kube_api: KubeApi, controller_client: Client, namespace: str) -> None:
    api, ns = kube_api, namespace
    follow = triggers({"from": IMAGE, "container": "app"})
    both = triggers({"from": IMAGE, "container": "app"}, {"from": IMAGE, "container": "migrate"})
    objs = [
        workload("Deployment", "web", follow, {"app": IMAGE, "sidecar": SIDECAR}),
        workload("StatefulSet", "db", both, {"app": IMAGE}, init={"migrate": IMAGE}),
        workload("DaemonSet", "agent", follow, {"app": IMAGE}),
        workload("CronJob", "nightly", follow, {"app": IMAGE}),
        workload("Deployment", "paused", triggers({"from": IMAGE, "container": "app", "paused": True}), {"app": IMAGE}),
        workload("Deployment", "other", triggers({"from": OTHER, "container": "app"}), {"app": OTHER}),
        workload("Deployment", "broken", {ANNOTATION_TRIGGERS: '[{"from": "' + IMAGE + '"}]'}, {"app": IMAGE}),
        workload("Deployment", "ghost", triggers({"from": IMAGE, "container": "nope"}), {"app": IMAGE}),
        workload("Deployment", "plain", {}, {"app": IMAGE}),
    ]
    for obj in objs:
        create(api, ns, obj)

    plan = [u for u in workloads_using(controller_client, IMAGE) if u.namespace == ns]
    assert sorted((u.kind, u.name, u.container, u.paused) for u in plan) == [
        ("CronJob", "nightly", "app", False), ("DaemonSet", "agent", "app", False), ("Deployment", "ghost", "nope", False),
        ("Deployment", "paused", "app", True), ("Deployment", "web", "app", False),
        ("StatefulSet", "db", "app", False), ("StatefulSet", "db", "migrate", False),
    ]  # fmt: skip

    redeployer = Redeployer(controller_client)
    # all namespaces: the ClusterRole must allow listing every kind cluster-wide
    patched = [p for p in redeployer.redeploy(IMAGE, DIGEST, cause="build app-7") if p.namespace == ns]
    assert sorted((p.kind, p.name, p.container) for p in patched) == [
        ("CronJob", "nightly", "app"), ("DaemonSet", "agent", "app"), ("Deployment", "web", "app"),
        ("StatefulSet", "db", "app"), ("StatefulSet", "db", "migrate"),
    ]  # fmt: skip
    assert all(p.old_image == IMAGE and p.new_image == PIN and p.generation >= 2 for p in patched)

    assert images(get(api, ns, "Deployment", "web")) == {"app": PIN, "sidecar": SIDECAR}
    assert images(get(api, ns, "StatefulSet", "db")) == {"app": PIN, "migrate": PIN}
    assert images(get(api, ns, "DaemonSet", "agent")) == {"app": PIN}
    assert images(get(api, ns, "CronJob", "nightly")) == {"app": PIN}
    for name, image in [("paused", IMAGE), ("other", OTHER), ("broken", IMAGE), ("ghost", IMAGE), ("plain", IMAGE)]:
        dep = get(api, ns, "Deployment", name)
        assert images(dep) == {"app": image}, name
        assert dep["metadata"]["generation"] == 1, name

    seen = events(api, ns)
    broken = [e for e in seen if e[1] == REASON_INVALID]
    assert [(t, n) for t, _r, n, _m in broken] == [("Warning", "broken")]
    assert "missing field 'container'" in broken[0][3]
    assert [(t, n) for t, r, n, _m in seen if r == REASON_NO_CONTAINER] == [("Warning", "ghost")]
    updated = sorted((n, m) for t, r, n, m in seen if r == REASON_UPDATED and t == "Normal")
    assert [n for n, _m in updated] == ["agent", "db", "db", "nightly", "web"]
    assert f"container app: image set to {PIN} (build app-7)" in dict(updated)["web"]

    # a re-delivered build event changes nothing
    # (generation, not resourceVersion: the workload controllers keep writing status)
    def generations() -> dict[str, int]:
        return {o["metadata"]["name"]: get(api, ns, o["kind"], o["metadata"]["name"])["metadata"]["generation"] for o in objs}

    before = generations()
    assert redeployer.redeploy(IMAGE, DIGEST, namespace=ns) == []
    assert generations() == before

    for p in patched:
        status = wait_rollout(controller_client, p, timeout=120)
        assert status.ok, status.message
    web = get(api, ns, "Deployment", "web")
    owned = [rs for rs in api.get(f"/apis/apps/v1/namespaces/{ns}/replicasets")["items"]
             if any(o["uid"] == web["metadata"]["uid"] for o in rs["metadata"].get("ownerReferences", []))]  # fmt: skip
    new = [rs for rs in owned if images({"kind": "Deployment", **rs}) == {"app": PIN, "sidecar": SIDECAR}]
    assert len(new) == 1, owned
    assert len(owned) == 2  # and the old one, with the tag


def test_a_concurrent_write_is_retried_not_overwritten(kube_api: KubeApi, controller_client: Client, namespace: str) -> None:
    api, ns = kube_api, namespace
    path = PATHS["Deployment"].format(ns=ns)
    for name in ("edited", "paused"):
        create(api, ns, workload("Deployment", name, triggers({"from": IMAGE, "container": "app"}), {"app": IMAGE}))
    redeployer = Redeployer(controller_client)
    stale = {name: {**get(api, ns, "Deployment", name), "kind": "Deployment", "apiVersion": "apps/v1"} for name in ("edited", "paused")}
    # others write after the Redeployer read: one edits a label, one pauses the trigger
    api.patch(f"{path}/edited", {"metadata": {"labels": {"edited": "yes"}}})
    api.patch(f"{path}/paused", {"metadata": {"annotations": triggers({"from": IMAGE, "container": "app", "paused": True})}})

    with pytest.raises(ConflictError):  # the patch carries the resourceVersion it was computed from
        redeployer._patch(KINDS["Deployment"], stale["edited"], {"app": ("containers", IMAGE, PIN)})
    patched = redeployer._workload(KINDS["Deployment"], stale["edited"], IMAGE, DIGEST, "")
    assert [(p.name, p.new_image) for p in patched] == [("edited", PIN)]
    edited = get(api, ns, "Deployment", "edited")
    assert edited["metadata"]["labels"] == {"edited": "yes"} and images(edited) == {"app": PIN}
    # the decision is made again on the fresh read: now paused, so no write
    assert redeployer._workload(KINDS["Deployment"], stale["paused"], IMAGE, DIGEST, "") == []
    assert images(get(api, ns, "Deployment", "paused")) == {"app": IMAGE}
