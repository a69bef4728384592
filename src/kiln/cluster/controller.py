"""`kiln controller`: kopf handlers that only route events to the Reconciler.

Every handler is a watch-event handler: kopf keeps no state of its own on the objects (no
finalizers, no annotations), the Build's status is the whole state, and on start the initial
listing replays every object, so a restarted controller continues where the last one stopped.
A resync thread reconciles unfinished builds every few seconds (deadlines, missed events).
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from kiln.cluster.fleet import FleetLimits
from kiln.cluster.kube import Kube, KubeError
from kiln.cluster.models import GROUP, LABEL_BUILD, LABEL_BUILDCONFIG, VERSION
from kiln.cluster.podtemplate import PodSettings
from kiln.cluster.reconcile import Reconciler
from kiln.cluster.triggers.loop import TriggerLoop
from kiln.cluster.watchdog import Watchdog

log = logging.getLogger("kiln.controller")
RESYNC_SECONDS = 5.0


@dataclass(frozen=True)
class TriggerSettings:
    """The trigger side of the controller (docs/triggers.md)."""

    listen: tuple[str, int] | None = None  # the webhook and notification endpoint; None: none
    notification_token: str | None = None  # the registry sends "Authorization: Bearer <token>"
    tls: tuple[str, str] | None = None  # (certificate, key) files
    poll_interval: float = 120.0  # seconds between digest polls; 0: no polling
    limits: FleetLimits = field(default_factory=lambda: FleetLimits(cluster=8, namespace=4))
    rollout_timeout: float = 120.0


class _State:
    reconciler: Reconciler | None = None
    watchdog: Watchdog | None = None
    triggers: TriggerLoop | None = None
    server: Any = None
    settings: PodSettings = PodSettings()
    trigger_settings: TriggerSettings = TriggerSettings()
    namespace: str | None = None
    stop = threading.Event()


STATE = _State()
WEDGED_EXIT_CODE = 3


def _tracked(what: str) -> contextlib.AbstractContextManager[None]:
    """One unit of work the watchdog keeps an eye on (see watchdog.py)."""
    return STATE.watchdog.track(what) if STATE.watchdog is not None else contextlib.nullcontext()


def _wedged(problem: str) -> None:
    """Crash-only recovery: say what is stuck, dump every thread's stack, exit to be restarted."""
    log.error("controller wedged: %s; every thread's stack follows; exiting to be restarted", problem)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    os._exit(WEDGED_EXIT_CODE)  # not sys.exit: a wedged thread may never let an orderly exit finish


def _reconciler() -> Reconciler:
    if STATE.reconciler is None:
        kube = Kube()
        STATE.triggers = _trigger_loop(kube)
        STATE.reconciler = Reconciler(kube, STATE.settings, limits=STATE.trigger_settings.limits, on_complete=STATE.triggers.on_complete)
    return STATE.reconciler


def _trigger_loop(kube: Kube) -> TriggerLoop:
    from kiln.cluster.redeploy import Redeployer, wait_rollout
    from kiln.cluster.triggers.poller import DigestPoller
    from kiln.registry.options import RegistryOptions

    ts = STATE.trigger_settings
    poller = None
    if ts.poll_interval > 0:
        options = RegistryOptions(insecure_registries=frozenset(STATE.settings.insecure_registries))
        poller = DigestPoller(options, interval=ts.poll_interval, on_change=lambda c: log.info("poll: %s is now %s", c.ref, c.new[:19]))
    redeployer = Redeployer(kube.api)

    def check_rollout(p: Any) -> None:
        status = wait_rollout(kube.api, p, ts.rollout_timeout)
        log.info("%s %s/%s: rollout %s: %s", p.kind, p.namespace, p.name, "ok" if status.ok else "not done", status.message)

    def redeploy(image: str, digest: str, cause: str) -> None:
        for p in redeployer.redeploy(image, digest, cause=cause):
            log.info("%s %s/%s: container %s now runs %s (%s)", p.kind, p.namespace, p.name, p.container, p.new_image, cause)
            threading.Thread(target=check_rollout, args=(p,), name="kiln-rollout", daemon=True).start()

    return TriggerLoop(kube, poller, redeploy, track=_tracked)


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False  # the reconciler writes its own Events on Builds
    settings.watching.server_timeout = 120
    settings.networking.request_timeout = 60
    _reconciler()
    STATE.stop.clear()
    threading.Thread(target=_resync_loop, name="kiln-resync", daemon=True).start()
    if STATE.watchdog is not None:
        threading.Thread(target=STATE.watchdog.run, args=(STATE.stop, _wedged), name="kiln-watchdog", daemon=True).start()
    _start_triggers()


@kopf.on.startup()
async def watch_event_loop(**_: Any) -> None:
    if STATE.watchdog is not None:
        STATE.watchdog.watch_loop(asyncio.get_running_loop())


def _start_triggers() -> None:
    loop = STATE.triggers
    assert loop is not None
    ts = STATE.trigger_settings
    threading.Thread(target=loop.run, args=(STATE.stop, ts.poll_interval), name="kiln-triggers", daemon=True).start()
    loop.kick()
    if ts.listen is None:
        return
    from kiln.cluster.triggers.hooks import WebhookHandler
    from kiln.cluster.triggers.server import TriggerServer

    health = STATE.watchdog.problem if STATE.watchdog is not None else None
    server = TriggerServer(ts.listen, on_webhook=WebhookHandler(loop.kube), on_push=loop.on_push, notification_token=ts.notification_token,
                           tls=ts.tls, health=health)  # fmt: skip
    port = server.start()
    log.info("webhooks and registry notifications on %s:%d", ts.listen[0], port)
    STATE.server = server


@kopf.on.cleanup()
def stop(**_: Any) -> None:
    STATE.stop.set()
    if STATE.server is not None:
        STATE.server.stop()
        STATE.server = None


_WORKLOAD_TRIGGERS = "kiln.dev/triggers"
_handled_workloads: dict[str, str] = {}  # uid -> the annotation value acted on (status churn is not a change)


@kopf.on.event("apps", "v1", "deployments", annotations={_WORKLOAD_TRIGGERS: kopf.PRESENT})
@kopf.on.event("apps", "v1", "statefulsets", annotations={_WORKLOAD_TRIGGERS: kopf.PRESENT})
@kopf.on.event("apps", "v1", "daemonsets", annotations={_WORKLOAD_TRIGGERS: kopf.PRESENT})
@kopf.on.event("batch", "v1", "cronjobs", annotations={_WORKLOAD_TRIGGERS: kopf.PRESENT})
def workload_event(*, type: str, body: Mapping[str, Any], **_: Any) -> None:
    meta = body.get("metadata") or {}
    uid, value = str(meta.get("uid", "")), str((meta.get("annotations") or {}).get(_WORKLOAD_TRIGGERS, ""))
    _reconciler()
    assert STATE.triggers is not None
    if type == "DELETED":
        _handled_workloads.pop(uid, None)
        STATE.triggers.forget_workload(uid)
        return
    if not value or _handled_workloads.get(uid) == value:
        return
    try:
        with _tracked(f"workload {meta.get('namespace')}/{meta.get('name')}"):
            STATE.triggers.on_workload(str(meta.get("namespace", "")), str(meta.get("name", "")), value, uid=uid)
    except KubeError as e:
        log.warning("workload %s/%s: %s", meta.get("namespace"), meta.get("name"), e)
        return
    _handled_workloads[uid] = value


@kopf.on.event(GROUP, VERSION, "buildconfigs")
def buildconfig_event(*, type: str, name: str, namespace: str | None, **_: Any) -> None:
    if namespace is None or type == "DELETED":
        return
    _reconciler()
    assert STATE.triggers is not None
    STATE.triggers.on_config(namespace, name)


@kopf.on.event(GROUP, VERSION, "builds")
def build_event(*, type: str, name: str, namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    if namespace is None:
        return
    with _tracked(f"build {namespace}/{name} ({type or 'listed'})"):
        if type == "DELETED":
            _reconciler().wake(namespace, labels.get(LABEL_BUILDCONFIG))  # a deleted build frees its queue slot
            return
        _reconciler().reconcile(namespace, name)


@kopf.on.event("", "v1", "pods", labels={LABEL_BUILD: kopf.PRESENT})
def pod_event(*, namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
    if namespace is None:
        return
    with _tracked(f"pod of build {namespace}/{labels[LABEL_BUILD]}"):
        _reconciler().reconcile(namespace, labels[LABEL_BUILD])


def _resync_loop() -> None:
    while not STATE.stop.wait(RESYNC_SECONDS):
        try:
            with _tracked("resync"):
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


def trigger_settings_from_env(env: dict[str, str] | None = None) -> TriggerSettings:
    """The trigger settings from KILN_* variables (the controller Deployment sets them)."""
    e = os.environ if env is None else env
    base = TriggerSettings()
    listen = None
    if e.get("KILN_WEBHOOK_LISTEN"):
        host, _, port = e["KILN_WEBHOOK_LISTEN"].rpartition(":")
        listen = (host or "0.0.0.0", int(port))
    cert, key = e.get("KILN_WEBHOOK_TLS_CERT"), e.get("KILN_WEBHOOK_TLS_KEY")
    return TriggerSettings(
        listen=listen,
        notification_token=e.get("KILN_NOTIFICATION_TOKEN") or None,
        tls=(cert, key) if cert and key else None,
        poll_interval=float(e.get("KILN_POLL_INTERVAL", base.poll_interval)),
        limits=FleetLimits(
            cluster=int(e.get("KILN_MAX_TRIGGERED_BUILDS", base.limits.cluster)),
            namespace=int(e.get("KILN_MAX_TRIGGERED_BUILDS_PER_NAMESPACE", base.limits.namespace)),
        ),
        rollout_timeout=float(e.get("KILN_ROLLOUT_TIMEOUT", base.rollout_timeout)),
    )


def run(settings: PodSettings, namespace: str | None = None, *, stop_flag: threading.Event | None = None,
        ready_flag: threading.Event | None = None, triggers: TriggerSettings | None = None, watchdog_seconds: float = 300.0) -> None:  # fmt: skip
    """Run the controller until SIGINT/SIGTERM (or ``stop_flag``).

    ``watchdog_seconds``: work in flight for longer than that makes the controller exit (code 3)
    to be restarted (see watchdog.py); 0 turns the watchdog off.

    SIGUSR1 writes every thread's stack to stderr: a controller that stopped reacting says where
    it waits (the e2e tests ask for it before they give up).
    """
    faulthandler.enable()  # a crash in a C extension leaves its stack in the log, not nothing
    if threading.current_thread() is threading.main_thread():
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    STATE.settings = settings
    STATE.trigger_settings = triggers or TriggerSettings()
    STATE.namespace = namespace
    STATE.reconciler = None
    STATE.triggers = None
    STATE.watchdog = Watchdog(watchdog_seconds) if watchdog_seconds > 0 else None
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
