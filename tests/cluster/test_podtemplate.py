"""The build pod: baseline-admissible securityContext, volumes for every input, the command the pod runs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kiln.cluster.models import Build
from kiln.cluster.podtemplate import PodSettings, build_pod

# Pod Security Standards, "baseline" (the checks kube-apiserver's PodSecurity admission makes)
BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                 "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}  # fmt: skip


def baseline_violations(pod: dict[str, Any], *, k8s_minor: int = 37) -> list[str]:
    spec = pod["spec"]
    out = []
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(key)
    if any("hostPath" in v for v in spec.get("volumes", [])):
        out.append("hostPath")
    contexts = [spec.get("securityContext") or {}]
    user_ns = spec.get("hostUsers") is False
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c.get("securityContext") or {}
        contexts.append(sc)
        if sc.get("privileged"):
            out.append("privileged")
        added = set((sc.get("capabilities") or {}).get("add") or [])
        if added - BASELINE_CAPS:
            out.append(f"capabilities {sorted(added - BASELINE_CAPS)}")
        proc = sc.get("procMount")
        if proc not in (None, "Default") and not (user_ns and k8s_minor >= 35):
            out.append("procMount")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            out.append("hostPort")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append("hostProcess")
    for sc in contexts:
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.append("seccomp Unconfined")
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            out.append("apparmor Unconfined")
        se = sc.get("seLinuxOptions") or {}
        if se.get("type") not in (None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t") or se.get("user") or se.get("role"):
            out.append("selinux")
    for sysctl in (spec.get("securityContext") or {}).get("sysctls") or []:
        out.append(f"sysctl {sysctl['name']}")
    return out


def make_build(**spec: Any) -> Build:
    base = {"source": {"git": {"uri": "https://example.invalid/app.git", "ref": "main"}}, "strategy": {"type": "Docker"},
            "output": {"to": {"name": "registry.example/app:latest"}, "pushSecret": {"name": "push-creds"}}}  # fmt: skip
    base.update(spec)
    return Build.model_validate({
        "metadata": {"name": "app-7", "namespace": "ns1", "uid": "u-1", "labels": {"kiln.dev/buildconfig": "app"}, "annotations": {"kiln.dev/build-number": "7"}},
        "spec": base,
    })  # fmt: skip


SETTINGS = [
    PodSettings(builder_image="r/kiln/builder:1"),
    PodSettings(builder_image="r/kiln/builder:1", host_users=True),
    PodSettings(builder_image="r/kiln/builder:1", seccomp_localhost_profile="profiles/kiln.json", apparmor_localhost_profile="kiln"),
    PodSettings(builder_image="r/kiln/builder:1", unmasked_proc=False, cache_claim="kiln-cache"),
]


@pytest.mark.parametrize("settings", SETTINGS)
def test_build_pod_is_baseline_admissible(settings: PodSettings) -> None:
    pod = build_pod(make_build(), settings)
    assert baseline_violations(pod) == []


def test_checker_catches_what_baseline_refuses() -> None:
    pod = build_pod(make_build(), PodSettings())
    pod["spec"]["containers"][0]["securityContext"]["privileged"] = True
    pod["spec"]["securityContext"] = {"seccompProfile": {"type": "Unconfined"}}
    pod["spec"]["hostPID"] = True
    assert set(baseline_violations(pod)) == {"privileged", "seccomp Unconfined", "hostPID"}
    # Unmasked /proc is baseline only for user-namespaced pods on 1.35+
    plain = build_pod(make_build(), PodSettings())
    assert baseline_violations(plain, k8s_minor=34) == ["procMount"]


def test_user_namespace_and_unmasked_proc_by_default() -> None:
    pod = build_pod(make_build(), PodSettings())
    sc = pod["spec"]["containers"][0]["securityContext"]
    assert pod["spec"]["hostUsers"] is False
    assert sc["procMount"] == "Unmasked"
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    host = build_pod(make_build(), PodSettings(host_users=True))
    assert "hostUsers" not in host["spec"]
    assert "procMount" not in host["spec"]["containers"][0]["securityContext"]


def test_pod_identity_owner_and_command() -> None:
    pod = build_pod(make_build(completionDeadlineSeconds=90, nodeSelector={"disk": "ssd"}, serviceAccountName="builder",
                               resources={"limits": {"memory": "1Gi"}}), PodSettings(builder_image="r/b:1", insecure_registries=("reg:5000",)))  # fmt: skip
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "app-7-build" and meta["namespace"] == "ns1"
    assert meta["labels"] == {"kiln.dev/build": "app-7", "kiln.dev/buildconfig": "app"}
    assert meta["ownerReferences"] == [{"apiVersion": "kiln.dev/v1alpha1", "kind": "Build", "name": "app-7", "uid": "u-1", "controller": True, "blockOwnerDeletion": True}]
    assert spec["restartPolicy"] == "Never"
    assert spec["activeDeadlineSeconds"] == 90
    assert spec["nodeSelector"] == {"disk": "ssd"} and spec["serviceAccountName"] == "builder"
    assert spec["automountServiceAccountToken"] is False
    c = spec["containers"][0]
    assert c["image"] == "r/b:1"
    assert c["command"][:4] == ["kiln", "build", "--config", "env:BUILD"]
    assert "--push" in c["command"] and c["command"][-2:] == ["--insecure-registry", "reg:5000"]
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["resources"] == {"limits": {"memory": "1Gi"}, "requests": {}}
    env = {e["name"]: e["value"] for e in c["env"]}
    build = json.loads(env["BUILD"])
    assert build["kind"] == "Build" and build["metadata"]["name"] == "app-7"
    assert build["spec"]["source"]["git"]["ref"] == "main"


def test_inputs_are_mounted_where_the_pod_code_looks() -> None:
    pod = build_pod(make_build(source={"git": {"uri": "x"}, "sourceSecret": {"name": "git-creds"},
                                       "secrets": [{"secret": {"name": "s1"}, "destinationDir": "conf"}],
                                       "configMaps": [{"configMap": {"name": "c1"}}]}), PodSettings())  # fmt: skip
    mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert set(mounts) == {"/var/lib/kiln", "/workspace", "/var/run/kiln/push", "/var/run/kiln/source-secret",
                           "/var/run/kiln/secrets/s1", "/var/run/kiln/configmaps/c1"}  # fmt: skip
    assert all(mounts[p]["readOnly"] for p in mounts if p.startswith("/var/run/kiln"))
    assert volumes["push"]["secret"] == {"secretName": "push-creds", "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}
    assert volumes["store"] == {"name": "store", "emptyDir": {}}
    cached = build_pod(make_build(), PodSettings(cache_claim="kiln-cache"))
    assert {"name": "store", "persistentVolumeClaim": {"claimName": "kiln-cache"}} in cached["spec"]["volumes"]


def test_no_output_means_no_push() -> None:
    pod = build_pod(make_build(output={}), PodSettings())
    assert "--push" not in pod["spec"]["containers"][0]["command"]
    assert all(v["name"] != "push" for v in pod["spec"]["volumes"])
