"""Shared by the e2e tests and bench/triggers.py: base images pushed, BuildConfigs and
Deployments in the shapes the trigger loop acts on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.images import make_busybox_oci_layout, push_with_skopeo

IMAGE_AND_CONFIG = [{"type": "ConfigChange"}, {"type": "ImageChange"}]


def push_base(tmp: Path, registry: str, repo_tag: str, fix: str | None = None) -> str:
    """A busybox base (``fix``: the content of /etc/security-fix, making a new digest) pushed; its digest."""
    layout = make_busybox_oci_layout(tmp / f"base-{fix or 'orig'}", extra_files={"etc/security-fix": fix.encode()} if fix else None)
    push_with_skopeo(layout.layout, registry, repo_tag)
    return manifest_digest(registry, repo_tag)


def manifest_digest(registry: str, repo_tag: str) -> str:
    repo, _, tag = repo_tag.rpartition(":")
    accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json"
    r = httpx.head(f"http://{registry}/v2/{repo}/manifests/{tag}", headers={"Accept": accept})
    r.raise_for_status()
    return r.headers["Docker-Content-Digest"]


def buildconfig(name: str, dockerfile: str, output: str | None, triggers: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "BuildConfig",
        "metadata": {"name": name},
        "spec": {
            "source": {"dockerfile": dockerfile},
            "strategy": {"type": "Docker"},
            "output": {"to": {"kind": "DockerImage", "name": output}} if output else {},
            "triggers": triggers,
            **spec,
        },
    }


def deployment(name: str, image: str, follows: str) -> dict[str, Any]:
    """Zero replicas: kube-controller-manager still makes a ReplicaSet per template change (what a
    rollout check looks at), and no pod of an image made only to be pinned crash-loops on the node."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "annotations": {"kiln.dev/triggers": json.dumps([{"from": follows, "container": "app"}])}},
        "spec": {"replicas": 0, "selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "app", "image": image}]}}},
    }


def deployment_image(cluster: Any, ns: str, name: str) -> str:
    obj = cluster.api().get(f"/apis/apps/v1/namespaces/{ns}/deployments/{name}")
    return str(obj["spec"]["template"]["spec"]["containers"][0]["image"])
