"""`kiln install`: server-side apply of kiln.cluster.manifests to the current kubeconfig context."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from lightkube.codecs import from_dict
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition

from kiln.cluster.kube import FIELD_MANAGER, Kube, KubeError, api_errors, to_dict
from kiln.cluster.manifests import NOTIFICATION_SECRET, InstallOptions, all_objects

CRD_WAIT_SECONDS = 60.0


def describe(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    where = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj['kind'].lower()}/{where}{meta['name']}"


def notification_secret(kube: Kube, opts: InstallOptions, *, dry_run: bool = False) -> dict[str, Any] | None:
    """The registry-notification token Secret, with a fresh random token, unless it exists (never rotated by an install)."""
    import secrets

    from lightkube.resources.core_v1 import Secret

    from kiln.cluster.kube import NotFoundError

    try:
        with api_errors(f"secret/{opts.namespace}/{NOTIFICATION_SECRET}"):
            kube.api.get(Secret, NOTIFICATION_SECRET, namespace=opts.namespace)
        return None
    except NotFoundError:
        pass
    obj = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": NOTIFICATION_SECRET, "namespace": opts.namespace},
           "type": "Opaque", "stringData": {"token": secrets.token_urlsafe(32)}}  # fmt: skip
    if not dry_run:
        with api_errors(describe(obj)):
            kube.api.create(from_dict(obj))
    return obj


def install(kube: Kube, opts: InstallOptions, *, say: Callable[[str], None] = print, dry_run: bool = False) -> list[str]:
    applied: list[str] = []
    for obj in all_objects(opts):
        if obj["kind"] == "Deployment" and (opts.with_controller or opts.with_registry) and not any(a.startswith("secret/") for a in applied):
            made = notification_secret(kube, opts, dry_run=dry_run)
            applied.append(f"secret/{opts.namespace}/{NOTIFICATION_SECRET}")
            if made is not None:
                say(f"{describe(made)} created{' (dry run)' if dry_run else ''}")
        with api_errors(describe(obj)):
            kube.api.apply(from_dict(obj), field_manager=FIELD_MANAGER, force=True, dry_run=dry_run)
        say(f"{describe(obj)} {'(dry run)' if dry_run else 'applied'}")
        applied.append(describe(obj))
        if obj["kind"] == "CustomResourceDefinition" and not dry_run:
            wait_established(kube, obj["metadata"]["name"])
    return applied


def wait_established(kube: Kube, name: str, timeout: float = CRD_WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with api_errors(f"customresourcedefinition/{name}"):
            crd = to_dict(kube.api.get(CustomResourceDefinition, name))
        conditions = (crd.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
            return
        time.sleep(0.5)
    raise KubeError(f"customresourcedefinition/{name}: not established after {timeout:.0f}s")
