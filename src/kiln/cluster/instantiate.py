"""Starting a build: BuildConfig status.lastVersion + 1, then Build ``<bc>-<n>`` (OpenShift's instantiate).

The increment is a status patch guarded by the resourceVersion it was computed from, so two
starters never get the same number; the Build's name is derived from that number, so a retried
create can never make a second Build for it either.
"""

from __future__ import annotations

from typing import Any

from kiln.cluster.kube import ConflictError, Kube, KubeError, NotFoundError
from kiln.cluster.models import (
    ANNOTATION_NUMBER,
    API_VERSION,
    LABEL_BUILDCONFIG,
    BinaryBuildSource,
    Build,
    BuildConfig,
    build_spec_from,
)
from kiln.errors import UsageError

MANUAL = "Manually triggered"
ATTEMPTS = 20


def new_build(config: BuildConfig, number: int, cause: str = MANUAL, env: dict[str, str] | None = None, binary_artifact: str | None = None) -> dict[str, Any]:
    """The Build object for run ``number`` of ``config`` (pure)."""
    spec = build_spec_from(config.spec, cause, env)
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
            "annotations": {ANNOTATION_NUMBER: str(number)},
            "ownerReferences": [
                {"apiVersion": API_VERSION, "kind": "BuildConfig", "name": config.name, "uid": meta.get("uid"), "controller": True, "blockOwnerDeletion": True}
            ],
        },
        "spec": spec.to_json_dict(),
    }


def start_build(kube: Kube, namespace: str, name: str, *, cause: str = MANUAL, env: dict[str, str] | None = None, binary_artifact: str | None = None) -> Build:
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
