"""`kiln controller`: kopf handlers that only route events to the Reconciler.

Every handler is a watch-event handler: kopf keeps no state of its own on the objects (no
finalizers, no annotations), the Build's status is the whole state, and on start the initial
listing replays every object, so a restarted controller continues where the last one stopped.
A resync thread reconciles unfinished builds every few seconds (deadlines, missed events).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

import kopf

from kiln.cluster.kube import Kube, KubeError
from kiln.cluster.models import GROUP, LABEL_BUILD, LABEL_BUILDCONFIG, VERSION
from kiln.cluster.podtemplate import PodSettings
from kiln.cluster.reconcile import Reconciler

log = logging.getLogger("kiln.controller")
RESYNC_SECONDS = 5.0


class _State:
    reconciler: Reconciler | None = None
    settings: PodSettings = PodSettings()
    namespace: str | None = None
    stop = threading.Event()


STATE = _State()


def _reconciler() -> Reconciler:
    if STATE.reconciler is None:
        STATE.reconciler = Reconciler(Kube(), STATE.settings)
    return STATE.reconciler


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False  # the reconciler writes its own Events on Builds
    settings.watching.server_timeout = 120
    settings.networking.request_timeout = 60
    _reconciler()
    STATE.stop.clear()
    threading.Thread(target=_resync_loop, name="kiln-resync", daemon=True).start()


@kopf.on.cleanup()
def stop(**_: Any) -> None:
    STATE.stop.set()


@kopf.on.event(GROUP, VERSION, "builds")
def build_event(*, type: str, name: str, namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    if namespace is None:
        return
    if type == "DELETED":
        _reconciler().wake(namespace, labels.get(LABEL_BUILDCONFIG))  # a deleted build frees its queue slot
        return
    _reconciler().reconcile(namespace, name)


@kopf.on.event("", "v1", "pods", labels={LABEL_BUILD: kopf.PRESENT})
def pod_event(*, namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    if namespace is None:
        return
    _reconciler().reconcile(namespace, labels[LABEL_BUILD])


def _resync_loop() -> None:
    while not STATE.stop.wait(RESYNC_SECONDS):
        try:
            _reconciler().resync(STATE.namespace)
        except KubeError as e:
            log.warning("resync: %s", e)
        except Exception:  # the loop must outlive any one bad object
            log.exception("resync failed")


def settings_from_env(env: dict[str, str] | None = None) -> PodSettings:
    """The build pods' settings from KILN_* variables (the controller Deployment sets them)."""
    e = os.environ if env is None else env
    base = PodSettings()
    insecure = tuple(h for h in e.get("KILN_INSECURE_REGISTRIES", "").split(",") if h)
    return PodSettings(
        builder_image=e.get("KILN_BUILDER_IMAGE", base.builder_image),
        image_pull_policy=e.get("KILN_BUILDER_PULL_POLICY", base.image_pull_policy),
        host_users=e.get("KILN_POD_HOST_USERS", "false").lower() == "true",
        unmasked_proc=e.get("KILN_POD_UNMASKED_PROC", "true").lower() == "true",
        seccomp_localhost_profile=e.get("KILN_SECCOMP_PROFILE") or None,
        apparmor_localhost_profile=e.get("KILN_APPARMOR_PROFILE") or None,
        cache_claim=e.get("KILN_CACHE_CLAIM") or None,
        insecure_registries=insecure,
    )


def run(settings: PodSettings, namespace: str | None = None, *, stop_flag: threading.Event | None = None,
        ready_flag: threading.Event | None = None) -> None:  # fmt: skip
    """Run the controller until SIGINT/SIGTERM (or ``stop_flag``)."""
    STATE.settings = settings
    STATE.namespace = namespace
    STATE.reconciler = None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=namespace is None,
            namespaces=[namespace] if namespace else (),
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    )
