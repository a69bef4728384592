"""The dev control plane and the node agent, proven on the real thing: etcd, kube-apiserver and
kube-controller-manager built from source, kiln's node agent running pods in kiln's sandbox."""

from __future__ import annotations

import base64
import json
import os
import ssl
import uuid
from pathlib import Path

import httpx
import pytest
from dev import testbin
from dev.kubeapi import ApiError, KubeApi

from tests.e2e.cluster_fixtures import (
    Cluster,
    busybox_pod,
    container_status,
    create_namespace,
    create_pod,
    delete_namespace,
    get_pod,
    pod_log,
    unique,
    wait_for,
    wait_for_pod,
)

pytestmark = pytest.mark.slow


def _processes_with(marker: str) -> list[int]:
    """PIDs on this host whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_api_server_answers_and_node_is_ready(cluster: Cluster, kube_api: KubeApi) -> None:
    version = kube_api.get("/version")
    assert version["gitVersion"].startswith(testbin.KUBERNETES_VERSION)
    node = kube_api.get(f"/api/v1/nodes/{cluster.node_name}")
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] > 0
    # kube-controller-manager is at work: it made the namespace's ServiceAccount and root CA ConfigMap
    assert kube_api.get("/api/v1/namespaces/default/serviceaccounts/default")["metadata"]["name"] == "default"
    ca = kube_api.get("/api/v1/namespaces/default/configmaps/kube-root-ca.crt")["data"]["ca.crt"]
    assert ca.strip() == cluster.ca_file.read_text().strip()
    # lightkube works with the kubeconfig the cluster wrote
    from lightkube.resources.core_v1 import Node

    assert cluster.client().get(Node, cluster.node_name).metadata.name == cluster.node_name


def test_pod_is_bound_runs_and_reports(cluster: Cluster, kube_api: KubeApi, namespace: str, cluster_busybox: str) -> None:
    script = "echo hello from $POD_NAME in $POD_NS; echo line two; printf 'result: ok' > /dev/termination-log"
    pod = busybox_pod("hello", cluster_busybox, ["sh", "-c", script], env=[
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ])
    create_pod(kube_api, namespace, pod)
    done = wait_for_pod(kube_api, namespace, "hello")
    assert done["spec"]["nodeName"] == cluster.node_name  # bound by the agent: no scheduler runs
    assert done["status"]["phase"] == "Succeeded", done["status"]
    term = container_status(done)["state"]["terminated"]
    assert term["exitCode"] == 0
    assert term["reason"] == "Completed"
    assert term["message"] == "result: ok"
    assert term["startedAt"] and term["finishedAt"]
    conditions = {c["type"]: c["status"] for c in done["status"]["conditions"]}
    assert conditions["PodScheduled"] == "True" and conditions["Ready"] == "False"
    log = pod_log(kube_api, namespace, "hello")
    assert log == f"hello from hello in {namespace}\nline two\n"
    stamped = pod_log(kube_api, namespace, "hello", timestamps="true", tailLines="1")
    stamp, _, rest = stamped.partition(" ")
    assert rest == "line two\n" and stamp.endswith("Z")


def test_containers_run_in_kiln_rootless_sandbox(cluster: Cluster, kube_api: KubeApi, namespace: str,
                                                  cluster_busybox: str) -> None:
    import pwd

    create_pod(kube_api, namespace, busybox_pod("whoami", cluster_busybox, ["cat", "/proc/self/uid_map"]))
    done = wait_for_pod(kube_api, namespace, "whoami")
    assert done["status"]["phase"] == "Succeeded"
    first = pod_log(kube_api, namespace, "whoami").split("\n")[0].split()
    agent_uid = pwd.getpwnam(cluster.info.agent_user).pw_uid
    # uid 0 of the container is the agent's own (unprivileged) uid on the host
    assert first[:3] == ["0", str(agent_uid), "1" if agent_uid != 0 else "4294967295"]


def test_failing_container_fails_the_pod(kube_api: KubeApi, namespace: str, cluster_busybox: str) -> None:
    pod = busybox_pod("fails", cluster_busybox, ["sh", "-c", "echo about to fail; exit 3"],
                      terminationMessagePolicy="FallbackToLogsOnError")
    create_pod(kube_api, namespace, pod)
    done = wait_for_pod(kube_api, namespace, "fails")
    assert done["status"]["phase"] == "Failed"
    term = container_status(done)["state"]["terminated"]
    assert term["exitCode"] == 3
    assert term["reason"] == "Error"
    assert term["message"] == "about to fail\n"  # no termination-log file: the log's tail


def test_command_not_found_is_a_start_error(kube_api: KubeApi, namespace: str, cluster_busybox: str) -> None:
    create_pod(kube_api, namespace, busybox_pod("nocmd", cluster_busybox, ["/no/such/binary"]))
    done = wait_for_pod(kube_api, namespace, "nocmd")
    assert done["status"]["phase"] == "Failed"
    term = container_status(done)["state"]["terminated"]
    assert term["reason"] == "StartError" and term["exitCode"] == 128
    assert "/no/such/binary" in term["message"]


def test_active_deadline_seconds(kube_api: KubeApi, namespace: str, cluster_busybox: str) -> None:
    marker = unique("deadline-marker")
    pod = busybox_pod("slow", cluster_busybox, ["sh", "-c", "while true; do sleep 1; done", marker],
                      activeDeadlineSeconds=3)
    create_pod(kube_api, namespace, pod)
    done = wait_for_pod(kube_api, namespace, "slow")
    assert done["status"]["phase"] == "Failed"
    assert done["status"]["reason"] == "DeadlineExceeded"
    assert "terminated" in container_status(done)["state"]
    assert _processes_with(marker) == []


def test_secret_and_configmap_volumes_and_env(kube_api: KubeApi, namespace: str, cluster_busybox: str) -> None:
    kube_api.create(f"/api/v1/namespaces/{namespace}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "data": {"password": base64.b64encode(b"s3cret").decode(), "user": base64.b64encode(b"kiln").decode()},
    })
    kube_api.create(f"/api/v1/namespaces/{namespace}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
        "data": {"mode": "fast", "greeting": "hello"},
    })
    script = (
        "cat /etc/creds/password; echo; cat /etc/settings/renamed.txt; echo; "
        "echo env=$PASSWORD/$MODE/$CFG_greeting; ls /etc/creds | sort | tr '\\n' ' '; echo"
    )
    pod = busybox_pod(
        "volumes", cluster_busybox, ["sh", "-c", script],
        env=[
            {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
            {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
        ],
        envFrom=[{"prefix": "CFG_", "configMapRef": {"name": "settings"}}],
        volumeMounts=[{"name": "creds", "mountPath": "/etc/creds"}, {"name": "settings", "mountPath": "/etc/settings"}],
        volumes=[
            {"name": "creds", "secret": {"secretName": "creds"}},
            {"name": "settings", "configMap": {"name": "settings", "items": [{"key": "mode", "path": "renamed.txt"}]}},
        ],
    )
    create_pod(kube_api, namespace, pod)
    done = wait_for_pod(kube_api, namespace, "volumes")
    assert done["status"]["phase"] == "Succeeded", pod_log(kube_api, namespace, "volumes")
    assert pod_log(kube_api, namespace, "volumes") == "s3cret\nfast\nenv=s3cret/fast/hello\npassword user \n"


def test_missing_secret_keeps_the_container_waiting(kube_api: KubeApi, namespace: str, cluster_busybox: str) -> None:
    pod = busybox_pod("nosecret", cluster_busybox, ["true"], env=[
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}},
    ])
    create_pod(kube_api, namespace, pod)

    def waiting_reason() -> str | None:
        p = get_pod(kube_api, namespace, "nosecret") or {}
        for s in (p.get("status") or {}).get("containerStatuses") or []:
            return str(s["state"].get("waiting", {}).get("reason") or "") or None
        return None

    assert wait_for(lambda: waiting_reason() == "CreateContainerConfigError", "CreateContainerConfigError", 60)
    assert get_pod(kube_api, namespace, "nosecret")["status"]["phase"] == "Pending"  # type: ignore[index]


def test_init_containers_emptydir_and_run_as_user(kube_api: KubeApi, namespace: str, cluster_busybox: str) -> None:
    pod = busybox_pod(
        "init", cluster_busybox, ["sh", "-c", "cat /work/order; echo main as $(id -u):$(id -g)"],
        securityContext={"runAsUser": 1000, "runAsGroup": 3000},
        volumeMounts=[{"name": "work", "mountPath": "/work"}],
        volumes=[{"name": "work", "emptyDir": {}}],
        initContainers=[
            {"name": f"init{i}", "image": cluster_busybox, "command": ["sh", "-c", f"echo init{i} >> /work/order"],
             "volumeMounts": [{"name": "work", "mountPath": "/work"}]}
            for i in (1, 2)
        ],
    )
    create_pod(kube_api, namespace, pod)
    done = wait_for_pod(kube_api, namespace, "init")
    assert done["status"]["phase"] == "Succeeded", done["status"]
    assert pod_log(kube_api, namespace, "init") == "init1\ninit2\nmain as 1000:3000\n"
    for name in ("init1", "init2"):
        assert container_status(done, name, init=True)["state"]["terminated"]["exitCode"] == 0
    assert pod_log(kube_api, namespace, "init", container="init2") == ""


def test_restart_policy_on_failure_retries(kube_api: KubeApi, namespace: str, cluster_busybox: str) -> None:
    script = "if [ -e /state/once ]; then echo second run; exit 0; fi; touch /state/once; echo first run; exit 1"
    pod = busybox_pod("retry", cluster_busybox, ["sh", "-c", script], restartPolicy="OnFailure",
                      volumeMounts=[{"name": "state", "mountPath": "/state"}],
                      volumes=[{"name": "state", "emptyDir": {}}])
    create_pod(kube_api, namespace, pod)
    done = wait_for_pod(kube_api, namespace, "retry", phases={"Succeeded"})
    status = container_status(done)
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert pod_log(kube_api, namespace, "retry") == "second run\n"
    assert pod_log(kube_api, namespace, "retry", previous="true") == "first run\n"


def test_log_follow_streams_until_the_container_ends(cluster: Cluster, kube_api: KubeApi, namespace: str,
                                                     cluster_busybox: str) -> None:
    script = "for i in 1 2 3; do echo tick $i; sleep 1; done"
    create_pod(kube_api, namespace, busybox_pod("ticker", cluster_busybox, ["sh", "-c", script]))
    wait_for_pod(kube_api, namespace, "ticker", phases={"Running", "Succeeded"},
                 condition=lambda p: "running" in container_status(p)["state"]
                 or "terminated" in container_status(p)["state"])
    with kube_api._stream_http.stream(
        "GET", f"/api/v1/namespaces/{namespace}/pods/ticker/log", params={"follow": "true"}
    ) as resp:
        assert resp.status_code == 200
        body = b"".join(resp.iter_raw())
    assert body == b"tick 1\ntick 2\ntick 3\n"
    assert wait_for_pod(kube_api, namespace, "ticker")["status"]["phase"] == "Succeeded"


def test_pod_security_admission_is_enforced(kube_api: KubeApi, cluster_busybox: str) -> None:
    baseline = create_namespace(kube_api, labels={"pod-security.kubernetes.io/enforce": "baseline"})
    open_ns = create_namespace(kube_api)
    try:
        create_pod(kube_api, baseline, busybox_pod("plain", cluster_busybox, ["true"]))
        done = wait_for_pod(kube_api, baseline, "plain")
        assert done["status"]["phase"] == "Succeeded"
        privileged = busybox_pod("priv", cluster_busybox, ["true"], securityContext={"privileged": True})
        with pytest.raises(ApiError) as rejected:
            create_pod(kube_api, baseline, privileged)
        assert rejected.value.status == 403
        assert 'violates PodSecurity "baseline:latest"' in rejected.value.message
        assert "privileged" in rejected.value.message
        # the same pod passes admission where no policy is enforced: PodSecurity is what refused it
        accepted = kube_api.request("POST", f"/api/v1/namespaces/{open_ns}/pods", privileged,
                                    params={"dryRun": "All"})
        assert accepted["metadata"]["name"] == "priv"
    finally:
        delete_namespace(kube_api, baseline)
        delete_namespace(kube_api, open_ns)


def test_deleting_a_running_pod_kills_it(kube_api: KubeApi, namespace: str, cluster_busybox: str) -> None:
    marker = unique("delete-marker")
    pod = busybox_pod("victim", cluster_busybox, ["sh", "-c", "while true; do sleep 1; done", marker])
    create_pod(kube_api, namespace, pod)
    wait_for_pod(kube_api, namespace, "victim", phases={"Running"})
    assert wait_for(lambda: _processes_with(marker), "the container's processes", 30)
    kube_api.delete(f"/api/v1/namespaces/{namespace}/pods/victim")
    wait_for(lambda: get_pod(kube_api, namespace, "victim") is None, "the pod to be gone", 60)
    assert _processes_with(marker) == []


def test_job_completes_through_the_controller_manager(kube_api: KubeApi, namespace: str, cluster_busybox: str) -> None:
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": cluster_busybox, "command": ["sh", "-c", "echo job ran"]}],
        }}},
    }
    kube_api.create(f"/apis/batch/v1/namespaces/{namespace}/jobs", job)

    def complete() -> bool:
        status = kube_api.get(f"/apis/batch/v1/namespaces/{namespace}/jobs/once").get("status", {})
        return any(c["type"] == "Complete" and c["status"] == "True" for c in status.get("conditions", []))

    assert wait_for(complete, "the Job to complete")
    pods = kube_api.get(f"/api/v1/namespaces/{namespace}/pods", params={"labelSelector": "job-name=once"})["items"]
    assert len(pods) == 1
    assert pod_log(kube_api, namespace, pods[0]["metadata"]["name"]) == "job ran\n"


def test_rbac_is_enforced_for_service_accounts(cluster: Cluster, kube_api: KubeApi, namespace: str) -> None:
    kube_api.create(f"/api/v1/namespaces/{namespace}/serviceaccounts",
                    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}})
    token = kube_api.create(f"/api/v1/namespaces/{namespace}/serviceaccounts/robot/token", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600},
    })["status"]["token"]
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{cluster.server}/api/v1/namespaces/{namespace}/pods"
    with httpx.Client(verify=ssl.create_default_context(cafile=str(cluster.ca_file)), headers=headers) as http:
        assert http.get(url).status_code == 403
        kube_api.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}],
        })
        kube_api.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "robot-reads"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "robot", "namespace": namespace}],
        })
        assert wait_for(lambda: http.get(url).status_code == 200, "the RoleBinding to take effect", 30)
        assert http.get(f"{cluster.server}/api/v1/namespaces/{namespace}/secrets").status_code == 403


def test_image_pull_failure_is_reported(cluster: Cluster, kube_api: KubeApi, namespace: str) -> None:
    missing = cluster.image(f"e2e/absent-{uuid.uuid4().hex[:6]}:v1")
    create_pod(kube_api, namespace, busybox_pod("nopull", missing, ["true"]))

    def reason() -> str:
        p = get_pod(kube_api, namespace, "nopull") or {}
        statuses = (p.get("status") or {}).get("containerStatuses") or [{}]
        return str(statuses[0].get("state", {}).get("waiting", {}).get("reason", ""))

    assert wait_for(lambda: reason() in ("ErrImagePull", "ImagePullBackOff"), "an image pull error", 60)
    assert get_pod(kube_api, namespace, "nopull")["status"]["phase"] == "Pending"  # type: ignore[index]


def test_projected_service_account_token(cluster: Cluster, kube_api: KubeApi, namespace: str,
                                         cluster_busybox: str) -> None:
    pod = busybox_pod(
        "token", cluster_busybox, ["sh", "-c", "cat /var/run/secrets/tokens/token"],
        volumeMounts=[{"name": "tok", "mountPath": "/var/run/secrets/tokens"}],
        volumes=[{"name": "tok", "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": 600}},
        ]}}],
        serviceAccountName="default",  # the ServiceAccount admission plugin that would set it is off
    )
    create_pod(kube_api, namespace, pod)
    assert wait_for_pod(kube_api, namespace, "token")["status"]["phase"] == "Succeeded"
    token = pod_log(kube_api, namespace, "token")
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["sub"] == f"system:serviceaccount:{namespace}:default"
    review = kube_api.create("/apis/authentication.k8s.io/v1/tokenreviews", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token},
    })
    assert review["status"]["authenticated"] is True


def test_session_state_is_under_the_state_dir(cluster: Cluster) -> None:
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "node-agent", "registry"):
        pid = int((cluster.state_dir / "pids" / f"{name}.pid").read_text().split()[0])
        assert os.path.exists(f"/proc/{pid}"), name
    assert (cluster.state_dir / "registry").read_text().strip() == cluster.registry


# ---- pure parts, no cluster needed --------------------------------------------------------------
def test_staging_modules_are_read_from_the_published_go_mod() -> None:
    gomod = """module k8s.io/kubernetes

require (
\tk8s.io/api v0.0.0
\tk8s.io/klog/v2 v2.130.1
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
)

replace k8s.io/kms => ./staging/src/k8s.io/kms
"""
    assert testbin.staging_modules(gomod) == ["k8s.io/api", "k8s.io/client-go", "k8s.io/kms"]
    assert testbin.staging_version("v1.37.2") == "v0.37.2"


def test_kubernetes_command_args_and_variable_expansion() -> None:
    from dev.node.podspec import command_and_args, expand, user_spec

    env = {"NAME": "kiln", "EMPTY": ""}
    assert expand("$(NAME)-$(EMPTY)-$(MISSING)-$$(NAME)-$$", env) == "kiln--$(MISSING)-$(NAME)-$"
    assert command_and_args({"command": ["sh", "-c"], "args": ["echo $(NAME)"]}, env) == (["sh", "-c"], ["echo kiln"])
    assert command_and_args({"args": ["x"]}, env) == (None, ["x"])
    assert command_and_args({"command": ["run"]}, env) == (["run"], [])
    assert user_spec("app:staff", None, None) == "app:staff"
    assert user_spec("app:staff", 1000, None) == "1000"
    assert user_spec("app", None, 5) == "app:5"
    assert user_spec("", 7, 8) == "7:8"


def test_log_rendering_follows_the_kubelet_options() -> None:
    import datetime as dt

    from dev.node.kubelet_server import render

    records = [
        b"2026-01-01T00:00:01.000000Z stdout F one\n",
        b"2026-01-01T00:00:02.000000Z stdout P par\n",
        b"2026-01-01T00:00:03.000000Z stdout F tial\n",
        b"2026-01-01T00:00:04.000000Z stdout F four\n",
    ]

    def out(**kw: object) -> bytes:
        opts: dict[str, object] = {"timestamps": False, "since": None, "tail": None, "limit": None, **kw}
        return b"".join(render(iter(records), **opts))  # type: ignore[arg-type]

    assert out() == b"one\npartial\nfour\n"
    assert out(tail=1) == b"four\n"
    assert out(limit=6) == b"one\npa"
    assert out(since=dt.datetime(2026, 1, 1, 0, 0, 3, tzinfo=dt.UTC)) == b"tial\nfour\n"
    assert out(tail=1, timestamps=True) == b"2026-01-01T00:00:04.000000Z four\n"
