"""Starting a build: BuildConfig status.lastVersion + 1, then Build ``<bc>-<n>`` (OpenShift's instantiate).

The increment is a status patch guarded by the resourceVersion it was computed from, so two
starters never get the same number; the Build's name is derived from that number, so a retried
create can never make a second Build for it either.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kiln.cluster.kube import ConflictError, Kube, KubeError, NotFoundError
from kiln.cluster.models import (
    ANNOTATION_NUMBER,
    ANNOTATION_TRIGGER,
    API_VERSION,
    LABEL_BUILDCONFIG,
    BinaryBuildSource,
    Build,
    BuildConfig,
    BuildTriggerCause,
    RebaseRequest,
    build_spec_from,
)
from kiln.errors import UsageError

MANUAL = "Manually triggered"
ATTEMPTS = 20


@dataclass(frozen=True)
class Trigger:
    """What a trigger adds to a build: its type, causes, a revision to build, and what the
    BuildConfig's status records in the same guarded write as the build number."""

    type: str
    causes: list[BuildTriggerCause]
    git_ref: str | None = None
    status: dict[str, Any] = field(default_factory=dict)
    rebase: RebaseRequest | None = None


def new_build(config: BuildConfig, number: int, cause: str = MANUAL, env: dict[str, str] | None = None, binary_artifact: str | None = None,
              trigger: Trigger | None = None) -> dict[str, Any]:  # fmt: skip
    """The Build object for run ``number`` of ``config`` (pure)."""
    spec = build_spec_from(config.spec, trigger.causes if trigger else cause, env)
    if trigger is not None and trigger.git_ref and spec.source.git is not None:
        spec.source.git.ref = trigger.git_ref
    if trigger is not None:
        spec.rebase = trigger.rebase
    if config.spec.source.binary is not None:
        if not binary_artifact:
            raise UsageError(f"buildconfig {config.name} takes binary input: use --from-dir DIR or --from-file FILE")
        spec.source.binary = BinaryBuildSource(as_file=config.spec.source.binary.as_file, artifact=binary_artifact)
    elif binary_artifact:
        raise UsageError(f"buildconfig {config.name} has no source.binary: --from-dir/--from-file do not apply")
    meta = config.metadata
    return {
        "apiVersion": API_VERSION,
        "kind": "Build",
        "metadata": {
            "name": f"{config.name}-{number}",
            "namespace": meta.get("namespace"),
            "labels": {LABEL_BUILDCONFIG: config.name},
            "annotations": {ANNOTATION_NUMBER: str(number), **({ANNOTATION_TRIGGER: trigger.type} if trigger else {})},
            "ownerReferences": [
                {"apiVersion": API_VERSION, "kind": "BuildConfig", "name": config.name, "uid": meta.get("uid"), "controller": True, "blockOwnerDeletion": True}
            ],
        },
        "spec": spec.to_json_dict(),
    }


def start_build(kube: Kube, namespace: str, name: str, *, cause: str = MANUAL, env: dict[str, str] | None = None,
                binary_artifact: str | None = None) -> Build:  # fmt: skip
    """Start the next build of ``name`` (a user asked for it)."""
    return _start(kube, namespace, name, cause=cause, env=env, binary_artifact=binary_artifact)


def start_triggered(kube: Kube, namespace: str, name: str, fire: Callable[[BuildConfig], Trigger | None]) -> Build | None:
    """Start the next build of ``name`` if ``fire`` says a trigger fires for the BuildConfig as read.

    Unlike a user's start, the Build is created before the status write that records its number
    and what the trigger saw, so a controller that dies in between has recorded nothing: the
    trigger fires again after the restart, finds its Build already there (same number, same
    causes) and adopts it. Nothing is lost and nothing starts twice. ``fire`` is asked again on
    every attempt, because a conflicting status write may have recorded the very change that made
    it fire; None means "no build after all". A Build that holds a number the status does not
    record and is not ours (a start that died, with other causes) has its number recorded, so
    the next attempt takes the one after it.
    """
    for _ in range(ATTEMPTS):
        config = kube.get_config(namespace, name)
        if config is None:
            raise NotFoundError(f"buildconfig {namespace}/{name}: not found")
        fired = fire(config)
        if fired is None:
            return None
        number = config.status.last_version + 1
        obj = new_build(config, number, trigger=fired)
        version = str(config.metadata.get("resourceVersion"))
        try:
            created = Build.model_validate(kube.create(obj))
        except ConflictError:
            existing = kube.get_build(namespace, obj["metadata"]["name"])
            if existing is None or existing.metadata.get("deletionTimestamp"):
                continue
            if existing.trigger != fired.type or existing.spec.triggered_by != Build.model_validate(obj).spec.triggered_by:
                with contextlib.suppress(ConflictError):
                    kube.patch_status("BuildConfig", namespace, name, version, {"lastVersion": number})
                continue
            created = existing
        try:
            kube.patch_status("BuildConfig", namespace, name, version, {**fired.status, "lastVersion": number})
        except ConflictError:
            continue  # read again: the next attempt adopts this build, or records its number and moves on
        return created
    raise KubeError(f"buildconfig {namespace}/{name}: could not take a build number after {ATTEMPTS} attempts")


def _start(kube: Kube, namespace: str, name: str, *, cause: str, env: dict[str, str] | None = None, binary_artifact: str | None = None) -> Build:
    for _ in range(ATTEMPTS):
        config = kube.get_config(namespace, name)
        if config is None:
            raise NotFoundError(f"buildconfig {namespace}/{name}: not found")
        number = config.status.last_version + 1
        obj = new_build(config, number, cause, env, binary_artifact)
        try:
            kube.patch_status("BuildConfig", namespace, name, str(config.metadata.get("resourceVersion")), {"lastVersion": number})
        except ConflictError:
            continue  # someone else took this number: read again
        try:
            return Build.model_validate(kube.create(obj))
        except ConflictError:
            continue  # a Build of that name exists already (its starter died before the patch landed)
    raise KubeError(f"buildconfig {namespace}/{name}: could not take a build number after {ATTEMPTS} attempts")
