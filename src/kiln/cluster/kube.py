"""The few Kubernetes calls kiln makes, over lightkube (typed, httpx-based), with kiln's errors.

Status writes carry the resourceVersion they were computed from: the API server refuses a stale
one (409), and the caller observes again. That is what makes "start build n" and every phase
change happen at most once, whoever else (a restarted controller, `kiln cancel-build`) writes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from lightkube import ApiError, Client
from lightkube.codecs import from_dict
from lightkube.core.exceptions import ConfigError
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import Pod
from lightkube.types import PatchType

from kiln.cluster.models import GROUP, LABEL_BUILDCONFIG, VERSION, Build, BuildConfig
from kiln.errors import KilnError

BuildResource = create_namespaced_resource(GROUP, VERSION, "Build", "builds")
BuildConfigResource = create_namespaced_resource(GROUP, VERSION, "BuildConfig", "buildconfigs")

FIELD_MANAGER = "kiln"


class KubeError(KilnError):
    pass


class ConflictError(KubeError):
    """The object changed since it was read (HTTP 409)."""


class NotFoundError(KubeError):
    pass


def client() -> Client:
    try:
        return Client(field_manager=FIELD_MANAGER)
    except ConfigError as e:
        raise KubeError(f"no Kubernetes configuration: {e} (set KUBECONFIG or run in a pod)") from None


@contextlib.contextmanager
def api_errors(what: str) -> Iterator[None]:
    try:
        yield
    except ApiError as e:
        code = e.status.code
        message = e.status.message or str(e)
        if code == 404:
            raise NotFoundError(f"{what}: not found") from None
        if code == 409:
            raise ConflictError(f"{what}: {message}") from None
        raise KubeError(f"{what}: {message}") from None
    except OSError as e:  # httpx transport errors are OSError subclasses or wrap them
        raise KubeError(f"{what}: cannot reach the API server: {e}") from None


def to_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    out = obj.to_dict()
    assert isinstance(out, dict)
    return out


_warmed: set[type] = set()
_warming = threading.Lock()


def warm_decoders(*resources: type) -> None:
    """Decode each resource type once, on one thread, before threads share it.

    lightkube decodes responses with msgspec, which builds a type's decoding tables on its first
    use. Two threads doing a type's first decode at once crash the process (SIGSEGV, no
    traceback): 16 threads listing Pods in a fresh process crashed it on every try here, and none
    did after one list on one thread. A restarted controller is exactly that case: its initial
    listing hands every build pod to the handler threads at once. So the types kiln decodes are
    warmed when a Kube or a Redeployer is made, under a lock.
    """
    from lightkube.core import decoders

    with _warming:
        if not _warmed:
            with contextlib.suppress(Exception):
                decoders.decode_status(b"{}")  # every API error's body
        for res in resources:
            if res in _warmed:
                continue
            # An empty object may not validate; the tables are built by then.
            with contextlib.suppress(Exception):
                decoders.decode_list(b'{"items":[{}]}', res)
            with contextlib.suppress(Exception):
                decoders.decode_object(b"{}", res)
            _warmed.add(res)


class Kube:
    """Builds, BuildConfigs and build pods in a cluster."""

    def __init__(self, api: Client | None = None) -> None:
        from lightkube.resources.core_v1 import Event, Secret

        warm_decoders(BuildResource, BuildConfigResource, Pod, Secret, Event)
        self.api = api or client()

    # -- reads ----------------------------------------------------------------------------
    def get_build(self, namespace: str, name: str) -> Build | None:
        with contextlib.suppress(NotFoundError), api_errors(f"build {namespace}/{name}"):
            return Build.model_validate(to_dict(self.api.get(BuildResource, name, namespace=namespace)))
        return None

    def get_config(self, namespace: str, name: str) -> BuildConfig | None:
        with contextlib.suppress(NotFoundError), api_errors(f"buildconfig {namespace}/{name}"):
            return BuildConfig.model_validate(to_dict(self.api.get(BuildConfigResource, name, namespace=namespace)))
        return None

    def list_builds(self, namespace: str | None, config: str | None = None) -> list[Build]:
        with api_errors(f"builds in {namespace or 'all namespaces'}"):
            if config:
                items = self.api.list(BuildResource, namespace=namespace or "*", labels={LABEL_BUILDCONFIG: config})
            else:
                items = self.api.list(BuildResource, namespace=namespace or "*")
            return [Build.model_validate(to_dict(o)) for o in items]

    def list_configs(self, namespace: str | None = None) -> list[BuildConfig]:
        with api_errors(f"buildconfigs in {namespace or 'all namespaces'}"):
            return [BuildConfig.model_validate(to_dict(o)) for o in self.api.list(BuildConfigResource, namespace=namespace or "*")]

    def get_secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """A Secret's data, decoded; None if there is no such Secret."""
        import base64

        from lightkube.resources.core_v1 import Secret

        with contextlib.suppress(NotFoundError), api_errors(f"secret {namespace}/{name}"):
            secret = to_dict(self.api.get(Secret, name, namespace=namespace))
            return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
        return None

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        with contextlib.suppress(NotFoundError), api_errors(f"pod {namespace}/{name}"):
            return to_dict(self.api.get(Pod, name, namespace=namespace))
        return None

    # -- writes ---------------------------------------------------------------------------
    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        with api_errors(f"{obj['kind'].lower()} {meta.get('namespace')}/{meta.get('name') or meta.get('generateName')}"):
            return to_dict(self.api.create(from_dict(obj)))

    def patch_status(self, kind: str, namespace: str, name: str, resource_version: str | None, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the status subresource; with a resourceVersion, only if nobody wrote in between."""
        res = BuildResource if kind == "Build" else BuildConfigResource
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        with api_errors(f"{kind.lower()} {namespace}/{name} status"):
            return to_dict(self.api.patch(res.Status, name, body, namespace=namespace, patch_type=PatchType.MERGE))

    def delete_pod(self, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFoundError), api_errors(f"pod {namespace}/{name}"):
            self.api.delete(Pod, name, namespace=namespace, grace_period=5)

    def delete_build(self, namespace: str, name: str) -> None:
        with contextlib.suppress(NotFoundError), api_errors(f"build {namespace}/{name}"):
            self.api.delete(BuildResource, name, namespace=namespace)

    def record_event(self, involved: dict[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        """A core/v1 Event on ``involved`` (best effort: an event that cannot be written is dropped)."""
        meta = involved.get("metadata", {})
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'kiln')}.", "namespace": meta.get("namespace")},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": "kiln-controller"},
            "reportingComponent": "kiln.dev/controller",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        with contextlib.suppress(KubeError):
            self.create(event)

    def pod_log(self, namespace: str, name: str, *, follow: bool = False) -> Iterator[str]:
        with api_errors(f"log of pod {namespace}/{name}"):
            yield from self.api.log(name, namespace=namespace, follow=follow)
