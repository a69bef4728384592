"""The build pod: one container running ``kiln build --config env:BUILD`` in the builder image.

Pure: a Build and the controller's settings in, a Pod manifest (a dict) out.

Pod Security "baseline" admits it: never privileged, no host namespaces, no hostPath, no added
capabilities, seccomp and AppArmor left to the node (or a Localhost profile) and never
``Unconfined``. What the rootless sandbox needs (docs/sandbox.md) comes from a pod user namespace
(``hostUsers: false``, 65,536 ids, kiln runs as uid 0 in it) and ``procMount: Unmasked`` (a fresh
/proc for the build steps), which baseline allows for user-namespaced pods from Kubernetes 1.35 on.
On nodes without user namespaces, set ``host_users=True``: the pod then runs as root of the host's
namespace with the node's seccomp/AppArmor defaults, which must allow unshare and mount.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from kiln.cluster.models import ANNOTATION_NUMBER, API_VERSION, LABEL_BUILD, LABEL_BUILDCONFIG, Build
from kiln.cluster.statemachine import pod_name
from kiln.cluster.strategies.environment import POD_INPUTS, POD_STORE, POD_WORKSPACE

CONTAINER = "build"
TERMINATION_LOG = "/dev/termination-log"


@dataclass(frozen=True)
class PodSettings:
    builder_image: str = "ghcr.io/kiln-build/builder:latest"
    image_pull_policy: str = "IfNotPresent"
    host_users: bool = False  # False: a pod user namespace (recommended)
    unmasked_proc: bool = True  # procMount: Unmasked (only with host_users=False)
    seccomp_localhost_profile: str | None = None  # e.g. "profiles/kiln-builder.json"
    apparmor_localhost_profile: str | None = None  # e.g. "kiln-builder"
    cache_claim: str | None = None  # a PVC for the store (step cache, cache mounts); default an emptyDir
    insecure_registries: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)


def build_pod(build: Build, settings: PodSettings) -> dict[str, Any]:
    spec = build.spec
    name = pod_name(build.name)
    mounts: list[dict[str, Any]] = [
        {"name": "store", "mountPath": str(POD_STORE)},
        {"name": "workspace", "mountPath": str(POD_WORKSPACE)},
    ]
    store_volume: dict[str, Any] = {"persistentVolumeClaim": {"claimName": settings.cache_claim}} if settings.cache_claim else {"emptyDir": {}}
    volumes: list[dict[str, Any]] = [{"name": "store", **store_volume}, {"name": "workspace", "emptyDir": {}}]
    if spec.output.push_secret is not None:
        volumes.append(_secret_volume("push", spec.output.push_secret.name, items=[{"key": ".dockerconfigjson", "path": "config.json"}]))
        mounts.append({"name": "push", "mountPath": str(POD_INPUTS / "push"), "readOnly": True})
    if spec.source.source_secret is not None:
        volumes.append(_secret_volume("source-secret", spec.source.source_secret.name))
        mounts.append({"name": "source-secret", "mountPath": str(POD_INPUTS / "source-secret"), "readOnly": True})
    for i, item in enumerate(spec.source.secrets):
        volumes.append(_secret_volume(f"build-secret-{i}", item.secret.name))
        mounts.append({"name": f"build-secret-{i}", "mountPath": str(POD_INPUTS / "secrets" / item.secret.name), "readOnly": True})
    for i, cm in enumerate(spec.source.config_maps):
        volumes.append({"name": f"build-configmap-{i}", "configMap": {"name": cm.config_map.name}})
        mounts.append({"name": f"build-configmap-{i}", "mountPath": str(POD_INPUTS / "configmaps" / cm.config_map.name), "readOnly": True})
    command = ["kiln", "build", "--config", "env:BUILD", "--result-file", TERMINATION_LOG, "--progress", "plain"]
    if spec.output.to is not None:
        command.append("--push")
    for host in settings.insecure_registries:
        command += ["--insecure-registry", host]
    env = {
        "BUILD": build_json(build),
        "KILN_STORE": str(POD_STORE),
        "KILN_WORKSPACE": str(POD_WORKSPACE),
        "KILN_BUILD_INPUTS": str(POD_INPUTS),
        "HOME": str(POD_WORKSPACE),
        **settings.extra_env,
    }
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": settings.builder_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": command,
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security_context(settings),
    }
    if spec.resources is not None and (spec.resources.limits or spec.resources.requests):
        container["resources"] = spec.resources.to_json_dict()
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": volumes,
    }
    if not settings.host_users:
        pod_spec["hostUsers"] = False
    pod_security = pod_security_context(settings)
    if pod_security:
        pod_spec["securityContext"] = pod_security
    if spec.completion_deadline_seconds is not None:
        pod_spec["activeDeadlineSeconds"] = spec.completion_deadline_seconds
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    labels = {LABEL_BUILD: build.name}
    if build.config_name:
        labels[LABEL_BUILDCONFIG] = build.config_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": build.namespace,
            "labels": labels,
            "annotations": {ANNOTATION_NUMBER: str(build.number)},
            "ownerReferences": [owner_reference("Build", build.name, str(build.metadata.get("uid", "")))],
        },
        "spec": pod_spec,
    }


def container_security_context(settings: PodSettings) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "privileged": False,
        # kiln runs as uid 0 of the pod (its user namespace, with host_users=False) and needs no
        # setuid helper; with host_users=True it maps ids with CAP_SETUID as container root
        "runAsUser": 0,
        "allowPrivilegeEscalation": False,
    }
    if not settings.host_users and settings.unmasked_proc:
        ctx["procMount"] = "Unmasked"
    return ctx


def pod_security_context(settings: PodSettings) -> dict[str, Any]:
    ctx: dict[str, Any] = {}
    if settings.seccomp_localhost_profile:
        ctx["seccompProfile"] = {"type": "Localhost", "localhostProfile": settings.seccomp_localhost_profile}
    if settings.apparmor_localhost_profile:
        ctx["appArmorProfile"] = {"type": "Localhost", "localhostProfile": settings.apparmor_localhost_profile}
    return ctx


def owner_reference(kind: str, name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": kind, "name": name, "uid": uid, "controller": True, "blockOwnerDeletion": True}


def build_json(build: Build) -> str:
    """The Build as the pod sees it in $BUILD (OpenShift's convention; the Custom strategy passes it on)."""
    meta = {k: build.metadata[k] for k in ("name", "namespace", "uid", "labels", "annotations") if k in build.metadata}
    obj = {"apiVersion": API_VERSION, "kind": "Build", "metadata": meta, "spec": build.spec.to_json_dict()}
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def _secret_volume(name: str, secret: str, items: list[dict[str, str]] | None = None) -> dict[str, Any]:
    source: dict[str, Any] = {"secretName": secret}
    if items:
        source["items"] = items
    return {"name": name, "secret": source}
