"""The redeploy half of the trigger loop: a finished build pins the workloads that follow its image.

A workload opts in with an annotation modelled on OpenShift's ``image.openshift.io/triggers``::

    kiln.dev/triggers: '[{"from": "registry:5000/team/app:latest", "container": "app"}]'

When a build pushes ``from``, every annotated Deployment, StatefulSet, DaemonSet and CronJob gets
that container's image set to ``registry:5000/team/app@sha256:...``. The digest, not the tag, goes
into the spec: a tag in a pod template would not change, so nothing would roll out, and nodes could
run different images under one name.

Writes are strategic-merge patches that name only the container (merged by name) and carry the
resourceVersion they were computed from, so a concurrent edit is never overwritten: on 409 the
workload is read again and the decision made afresh. A container already at the pinned reference is
not written, which makes a repeated call (a re-delivered event, a restarted controller) a no-op.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

from lightkube import Client
from lightkube.core.resource import NamespacedResource
from lightkube.resources.apps_v1 import DaemonSet, Deployment, ReplicaSet, StatefulSet
from lightkube.resources.batch_v1 import CronJob
from lightkube.types import PatchType

from kiln.cluster.kube import (
    ConflictError,
    Kube,
    KubeError,
    NotFoundError,
    api_errors,
    to_dict,
    warm_decoders,
)
from kiln.errors import KilnError
from kiln.oci.digest import is_digest
from kiln.registry.reference import Reference

log = logging.getLogger("kiln.redeploy")

ANNOTATION_TRIGGERS = "kiln.dev/triggers"
REASON_INVALID = "InvalidTriggerAnnotation"
REASON_NO_CONTAINER = "TriggerContainerNotFound"
REASON_UPDATED = "ImageUpdated"
REASON_FAILED = "ImageUpdateFailed"
CONFLICT_RETRIES = 5
POLL_SECONDS = 0.5


# -- the annotation ----------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkloadTrigger:
    from_: str
    container: str
    paused: bool = False


def parse_triggers(raw: str) -> list[WorkloadTrigger]:
    """The annotation's triggers; ``ValueError`` names the entry and field that is wrong."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise ValueError(f"must be a JSON list of triggers, not {type(data).__name__}")
    return [_trigger(i, entry) for i, entry in enumerate(data)]


def _trigger(i: int, entry: Any) -> WorkloadTrigger:
    where = f"trigger [{i}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be an object, not {type(entry).__name__}")
    for field in ("from", "container"):
        if field not in entry:
            raise ValueError(f"{where}: missing field {field!r}")
        if not isinstance(entry[field], str) or not entry[field]:
            raise ValueError(f"{where}: field {field!r} must be a non-empty string")
    paused = entry.get("paused", False)
    if not isinstance(paused, bool):
        raise ValueError(f"{where}: field 'paused' must be true or false")
    try:
        ref = Reference.parse(entry["from"])
    except KilnError as e:
        raise ValueError(f"{where}: field 'from': {e}") from None
    if ref.digest is not None:
        # a build pushes a tag; a digest never moves, so such a trigger could never fire
        raise ValueError(f"{where}: field 'from' must name a tag, not a digest ({entry['from']!r})")
    return WorkloadTrigger(from_=entry["from"], container=entry["container"], paused=paused)


# -- references --------------------------------------------------------------------------------


def same_image(a: str, b: str) -> bool:
    """Whether two references name the same tag (or the same digest) once normalised.

    ``busybox`` == ``docker.io/library/busybox:latest``; a digest reference is never the same as
    a tag reference (what a tag points at changes). Unparseable references match nothing.
    """
    try:
        ra, rb = Reference.parse(a), Reference.parse(b)
    except KilnError:
        return False
    if ra.name != rb.name:
        return False
    if ra.digest is not None or rb.digest is not None:
        return ra.digest == rb.digest
    return ra.tag == rb.tag


def pinned(ref: str, digest: str) -> str:
    """``ref``'s registry and repository at ``digest``: ``host:5000/team/app@sha256:...`` (tag dropped)."""
    if not is_digest(digest):
        raise ValueError(f"invalid digest {digest!r}")
    try:
        parsed = Reference.parse(ref)
    except KilnError as e:
        raise ValueError(str(e)) from None
    return f"{parsed.name}@{digest}"


# -- workloads ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    kind: str
    api_version: str
    resource: type[NamespacedResource]
    pod_spec: tuple[str, ...]  # where the pod spec sits in the object


KINDS: dict[str, _Kind] = {
    k.kind: k
    for k in (
        _Kind("Deployment", "apps/v1", Deployment, ("spec", "template", "spec")),
        _Kind("StatefulSet", "apps/v1", StatefulSet, ("spec", "template", "spec")),
        _Kind("DaemonSet", "apps/v1", DaemonSet, ("spec", "template", "spec")),
        _Kind("CronJob", "batch/v1", CronJob, ("spec", "jobTemplate", "spec", "template", "spec")),
    )
}


@dataclass(frozen=True)
class Patched:
    kind: str
    namespace: str
    name: str
    container: str
    old_image: str
    new_image: str
    generation: int  # metadata.generation after the patch: what a rollout must observe


class WorkloadUse(NamedTuple):
    kind: str
    namespace: str
    name: str
    container: str
    paused: bool


@dataclass(frozen=True)
class RolloutStatus:
    ok: bool
    message: str


def _pod_spec(kind: _Kind, obj: dict[str, Any]) -> dict[str, Any]:
    node: Any = obj
    for key in kind.pod_spec:
        node = (node or {}).get(key)
    return node if isinstance(node, dict) else {}


def _find_container(pod_spec: dict[str, Any], name: str) -> tuple[str, dict[str, Any]] | None:
    """("containers" | "initContainers", the container) named ``name``."""
    for field in ("containers", "initContainers"):
        for c in pod_spec.get(field) or []:
            if c.get("name") == name:
                return field, c
    return None


def _nest(path: tuple[str, ...], leaf: dict[str, Any]) -> dict[str, Any]:
    for key in reversed(path):
        leaf = {key: leaf}
    return leaf


def _list(client: Client, kind: _Kind, namespace: str | None) -> list[dict[str, Any]]:
    with api_errors(f"{kind.kind.lower()}s in {namespace or 'all namespaces'}"):
        objs = [to_dict(o) for o in client.list(kind.resource, namespace=namespace or "*")]
    for o in objs:
        # list items come without them; Events need both
        o["apiVersion"], o["kind"] = kind.api_version, kind.kind
    return objs


def _triggers_of(obj: dict[str, Any]) -> list[WorkloadTrigger] | None:
    raw = ((obj.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_TRIGGERS)
    return None if raw is None else parse_triggers(raw)


def _build_tag(image: str) -> str:
    """What triggers are compared with: a build's ``name:tag@digest`` output is its tag."""
    with contextlib.suppress(KilnError):
        ref = Reference.parse(image)
        if ref.tag and ref.digest:
            return f"{ref.name}:{ref.tag}"
    return image


def workloads_using(client: Client, image: str, namespace: str | None = None) -> list[WorkloadUse]:
    """Every (kind, namespace, name, container, paused) a build of ``image`` would redeploy (or
    would, but for ``paused``). Read-only: broken annotations are left out, not reported."""
    image = _build_tag(image)
    out: list[WorkloadUse] = []
    for kind in KINDS.values():
        for obj in _list(client, kind, namespace):
            try:
                triggers = _triggers_of(obj)
            except ValueError:
                continue
            meta = obj["metadata"]
            seen: set[str] = set()
            for t in triggers or []:
                if t.container not in seen and same_image(t.from_, image):
                    seen.add(t.container)
                    out.append(WorkloadUse(kind.kind, meta["namespace"], meta["name"], t.container, t.paused))
    return out


class Redeployer:
    """Pins triggered containers to a build's digest, with Events on the workloads it touches."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.kube = Kube(client)  # for record_event
        warm_decoders(ReplicaSet, *(kind.resource for kind in KINDS.values()))  # before threads share them

    def redeploy(self, image: str, digest: str, *, namespace: str | None = None, cause: str = "") -> list[Patched]:
        """Patch every workload whose unpaused trigger follows ``image`` to ``image``'s repo at ``digest``.

        Raises KubeError when a kind cannot be listed; a workload that cannot be patched gets a
        Warning Event and the others are still done.
        """
        if not is_digest(digest):
            raise ValueError(f"invalid digest {digest!r}")
        image = _build_tag(image)
        out: list[Patched] = []
        for kind in KINDS.values():
            for obj in _list(self.client, kind, namespace):
                if ANNOTATION_TRIGGERS not in (obj["metadata"].get("annotations") or {}):
                    continue
                try:
                    out += self._workload(kind, obj, image, digest, cause)
                except KubeError as e:
                    log.warning("%s %s/%s: %s", kind.kind, obj["metadata"]["namespace"], obj["metadata"]["name"], e)
                    self.kube.record_event(obj, REASON_FAILED, f"setting the image from {image}: {e}", warning=True)
        return out

    def _workload(self, kind: _Kind, obj: dict[str, Any], image: str, digest: str, cause: str) -> list[Patched]:
        meta = obj["metadata"]
        for attempt in range(CONFLICT_RETRIES):
            try:
                triggers = _triggers_of(obj) or []
            except ValueError as e:
                self.kube.record_event(obj, REASON_INVALID, f"annotation {ANNOTATION_TRIGGERS}: {e}", warning=True)
                return []
            changes = self._changes(kind, obj, triggers, image, digest)
            if not changes:
                return []
            try:
                result = self._patch(kind, obj, changes)
            except ConflictError:
                if attempt == CONFLICT_RETRIES - 1:
                    raise
                try:
                    obj = _get(self.client, kind, meta["namespace"], meta["name"])
                except NotFoundError:
                    return []  # deleted meanwhile: nothing left to redeploy
                continue
            generation = int(result["metadata"].get("generation") or 0)
            patched = [
                Patched(kind.kind, meta["namespace"], meta["name"], c, old, new, generation)
                for c, (_f, old, new) in changes.items()
            ]
            for p in patched:
                because = f" ({cause})" if cause else ""
                self.kube.record_event(obj, REASON_UPDATED, f"container {p.container}: image set to {p.new_image}{because}")
            return patched
        return []  # unreachable: the last conflict re-raises

    def _changes(self, kind: _Kind, obj: dict[str, Any], triggers: list[WorkloadTrigger], image: str,
                 digest: str) -> dict[str, tuple[str, str, str]]:  # fmt: skip
        """container -> (containers field, old image, new image) for each container to write."""
        pod_spec = _pod_spec(kind, obj)
        changes: dict[str, tuple[str, str, str]] = {}
        for t in triggers:
            if t.paused or t.container in changes or not same_image(t.from_, image):
                continue
            found = _find_container(pod_spec, t.container)
            if found is None:
                self.kube.record_event(obj, REASON_NO_CONTAINER, f"annotation {ANNOTATION_TRIGGERS}: no container {t.container!r} "
                                       f"in the pod template (trigger from {t.from_})", warning=True)  # fmt: skip
                continue
            field, container = found
            new = pinned(t.from_, digest)
            old = str(container.get("image") or "")
            if old != new:
                changes[t.container] = (field, old, new)
        return changes

    def _patch(self, kind: _Kind, obj: dict[str, Any], changes: dict[str, tuple[str, str, str]]) -> dict[str, Any]:
        meta = obj["metadata"]
        spec: dict[str, list[dict[str, str]]] = {}
        for name, (field, _old, new) in changes.items():
            # strategic merge: list entries merge by name, so only this image field is written
            spec.setdefault(field, []).append({"name": name, "image": new})
        body = {"metadata": {"resourceVersion": meta["resourceVersion"]}, **_nest(kind.pod_spec, spec)}
        with api_errors(f"{kind.kind.lower()} {meta['namespace']}/{meta['name']}"):
            patched = self.client.patch(kind.resource, meta["name"], body, namespace=meta["namespace"], patch_type=PatchType.STRATEGIC)
            result = to_dict(patched)
        result["apiVersion"], result["kind"] = kind.api_version, kind.kind
        return result


def _get(client: Client, kind: _Kind, namespace: str, name: str) -> dict[str, Any]:
    with api_errors(f"{kind.kind.lower()} {namespace}/{name}"):
        obj = to_dict(client.get(kind.resource, name, namespace=namespace))
    obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
    return obj


# -- rollout -----------------------------------------------------------------------------------


def rollout_status(client: Client, patched: Patched) -> RolloutStatus:
    """Whether the workload's controller has acted on the patch (not whether pods are ready:
    that needs nodes and image pulls, which the trigger loop does not own)."""
    kind = KINDS[patched.kind]
    what = f"{patched.kind.lower()} {patched.namespace}/{patched.name}"
    try:
        obj = _get(client, kind, patched.namespace, patched.name)
    except NotFoundError:
        return RolloutStatus(False, f"{what}: deleted")
    found = _find_container(_pod_spec(kind, obj), patched.container)
    image = found[1].get("image") if found else None
    if image != patched.new_image:
        return RolloutStatus(False, f"{what}: container {patched.container} is at {image}, not {patched.new_image} (changed since)")
    if patched.kind == "CronJob":
        return RolloutStatus(True, f"{what}: the next Job runs {patched.new_image}")
    observed = int((obj.get("status") or {}).get("observedGeneration") or 0)
    if observed < patched.generation:
        return RolloutStatus(False, f"{what}: generation {patched.generation} not yet observed (at {observed})")
    if patched.kind != "Deployment":
        return RolloutStatus(True, f"{what}: generation {patched.generation} observed")
    rs = _replicaset_with(client, obj, patched)
    if rs is None:
        return RolloutStatus(False, f"{what}: no ReplicaSet with {patched.new_image} yet")
    return RolloutStatus(True, f"{what}: ReplicaSet {rs} runs {patched.new_image}")


def _replicaset_with(client: Client, deployment: dict[str, Any], patched: Patched) -> str | None:
    uid = deployment["metadata"].get("uid")
    labels = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or None
    with api_errors(f"replicasets in {patched.namespace}"):
        items = [to_dict(o) for o in client.list(ReplicaSet, namespace=patched.namespace, labels=labels)]
    for rs in items:
        if not any(ref.get("uid") == uid for ref in rs["metadata"].get("ownerReferences") or []):
            continue
        found = _find_container(((rs.get("spec") or {}).get("template") or {}).get("spec") or {}, patched.container)
        if found and found[1].get("image") == patched.new_image:
            name: str = rs["metadata"]["name"]
            return name
    return None


def wait_rollout(client: Client, patched: Patched, timeout: float) -> RolloutStatus:
    """Poll rollout_status until ok or ``timeout`` seconds; the last status, marked timed out."""
    deadline = time.monotonic() + timeout
    while True:
        status = rollout_status(client, patched)
        if status.ok or time.monotonic() >= deadline:
            break
        time.sleep(POLL_SECONDS)
    return status if status.ok else RolloutStatus(False, f"timed out after {timeout:.0f}s: {status.message}")
