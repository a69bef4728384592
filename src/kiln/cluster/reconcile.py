"""Observe a Build, ask the state machine, carry out its decision: the controller's only loop body.

One lock per BuildConfig serialises decisions that depend on siblings (run policy, pruning); a
status write refused as stale (409) means "observe again", never "try the action again".
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kiln.cluster.fleet import FleetLimits, slot_for
from kiln.cluster.kube import ConflictError, Kube
from kiln.cluster.models import Build, BuildConfig, BuildPhase, ConfigReference, RunPolicy
from kiln.cluster.podtemplate import CONTAINER, PodSettings, build_pod
from kiln.cluster.result import parse_outcome
from kiln.cluster.statemachine import (
    CreatePod,
    Decision,
    DeletePod,
    Observation,
    PodView,
    RecordEvent,
    Sibling,
    WakeSiblings,
    builds_to_prune,
    decide,
    pod_name,
)

log = logging.getLogger("kiln.controller")
ATTEMPTS = 5
LOG_TAIL_LINES = 200


def pod_view(pod: dict[str, Any]) -> PodView:
    status = pod.get("status") or {}
    statuses = [c for c in status.get("containerStatuses") or [] if c.get("name") == CONTAINER]
    terminated = ((statuses[0].get("state") or {}).get("terminated") or {}) if statuses else {}
    return PodView(
        phase=status.get("phase") or "Pending",
        reason=status.get("reason"),
        message=status.get("message"),
        start_time=status.get("startTime"),
        exit_code=terminated.get("exitCode"),
        terminated_reason=terminated.get("reason"),
        termination_message=terminated.get("message"),
        finished_at=terminated.get("finishedAt"),
        deleting=bool((pod.get("metadata") or {}).get("deletionTimestamp")),
    )


class Reconciler:
    """``on_complete`` is called with every Build this reconciler moved to Complete (after the
    status write, outside any lock): redeploys and downstream triggers hang off it."""

    def __init__(self, kube: Kube, settings: PodSettings, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 limits: FleetLimits | None = None, on_complete: Callable[[Build], None] | None = None) -> None:  # fmt: skip
        self.kube = kube
        self.settings = settings
        self.clock = clock
        self.limits = limits or FleetLimits()
        self.on_complete = on_complete
        self._locks: dict[tuple[str, str], threading.RLock] = {}
        self._locks_guard = threading.Lock()
        # Held while a triggered build is admitted: counting the running ones and starting one is a unit.
        self._admission = threading.RLock()

    def _lock(self, namespace: str, key: str) -> threading.RLock:
        with self._locks_guard:
            return self._locks.setdefault((namespace, key), threading.RLock())

    def reconcile(self, namespace: str, name: str) -> None:
        build = self.kube.get_build(namespace, name)
        if build is None:
            return
        group = build.config_name or name
        with self._lock(namespace, group):
            decision = self._reconcile_one(namespace, name)
            if decision is not None and (WakeSiblings() in decision.actions or _is_queued(decision, build)):
                self.wake(namespace, build.config_name)
        if decision is not None and decision.status is not None and decision.status.phase is not build.status.phase:
            if build.trigger is not None and decision.status.phase.terminal:
                self.admit_queued()  # a triggered-build slot is free
            if decision.status.phase is BuildPhase.COMPLETE and self.on_complete is not None:
                done = build.model_copy(update={"status": decision.status})
                try:
                    self.on_complete(done)
                except Exception:  # a failed redeploy must not undo the build; the next completion or resync retries
                    log.exception("build %s/%s: completion hook failed", namespace, name)

    def admit_queued(self) -> None:
        """Offer free triggered-build slots to queued builds, oldest first."""
        if self.limits.unlimited:
            return
        queued = [b for b in self.kube.list_builds(None) if b.trigger is not None and b.status.phase is BuildPhase.NEW]
        for b in sorted(queued, key=lambda b: (str(b.metadata.get("creationTimestamp", "")), b.namespace, b.number)):
            with self._lock(b.namespace, b.config_name or b.name):
                self._reconcile_one(b.namespace, b.name)

    def wake(self, namespace: str, config: str | None) -> None:
        """Queued builds of ``config`` may start or be superseded now; finished ones beyond the history limits go."""
        if not config:
            return
        with self._lock(namespace, config):
            builds = self.kube.list_builds(namespace, config)
            for b in sorted(builds, key=lambda b: b.number):
                if b.status.phase is BuildPhase.NEW:
                    self._reconcile_one(namespace, b.name)
            bc = self.kube.get_config(namespace, config)
            if bc is not None:
                self._prune(namespace, bc)

    def _reconcile_one(self, namespace: str, name: str) -> Decision | None:
        for _ in range(ATTEMPTS):
            build = self.kube.get_build(namespace, name)
            if build is None or build.metadata.get("deletionTimestamp"):
                return None
            config = self.kube.get_config(namespace, build.config_name) if build.config_name else None
            admitting = build.trigger is not None and build.status.phase is BuildPhase.NEW and not self.limits.unlimited
            try:
                with self._admission if admitting else contextlib.nullcontext():
                    decision = decide(self._observe(build, config, admitting))
                    self._act(build, config, decision)
            except ConflictError:
                log.info("build %s/%s changed while deciding; observing again", namespace, name)
                continue
            return decision
        log.warning("build %s/%s: gave up after %d conflicting writes; the next event retries", namespace, name, ATTEMPTS)
        return None

    def _observe(self, build: Build, config: BuildConfig | None, admitting: bool = False) -> Observation:
        ns = build.namespace
        raw_pod = self.kube.get_pod(ns, pod_name(build.name))
        pod = pod_view(raw_pod) if raw_pod is not None else None
        if pod is not None and pod.phase in ("Succeeded", "Failed") and parse_outcome(pod.termination_message) is None:
            pod = self._with_log_outcome(ns, build.name, pod)
        siblings: list[Sibling] = []
        if build.config_name:
            siblings = [Sibling(b.name, b.number, b.status.phase) for b in self.kube.list_builds(ns, build.config_name) if b.name != build.name]
        return Observation(
            name=build.name,
            number=build.number,
            status=build.status,
            pod=pod,
            now=self.clock(),
            siblings=siblings,
            run_policy=config.spec.run_policy if config is not None else RunPolicy.SERIAL,
            deadline_seconds=build.spec.completion_deadline_seconds,
            slot=slot_for(build, self.kube.list_builds(None), self.limits) if admitting else None,
        )

    def _with_log_outcome(self, namespace: str, build: str, pod: PodView) -> PodView:
        """No termination message (a kubelet that does not keep one): the result line in the log."""
        from dataclasses import replace

        try:
            lines = list(self.kube.pod_log(namespace, pod_name(build)))
        except Exception as e:  # a log that cannot be read is not a reason to stop reconciling
            log.info("pod %s/%s: log unavailable: %s", namespace, pod_name(build), e)
            return pod
        return replace(pod, termination_message="".join(lines[-LOG_TAIL_LINES:]))

    def _act(self, build: Build, config: BuildConfig | None, decision: Decision) -> None:
        ns = build.namespace
        for action in decision.actions:
            if isinstance(action, CreatePod):
                try:
                    self.kube.create(build_pod(build, self.settings))
                except ConflictError:
                    pass  # it exists: created by an earlier attempt whose status write did not land
            elif isinstance(action, DeletePod):
                self.kube.delete_pod(ns, pod_name(build.name))
        status = decision.status
        if status is None and build.status.config is None and config is not None:
            status = build.status.model_copy()
        if status is not None:
            if status.config is None and config is not None:
                status.config = ConfigReference(namespace=ns, name=config.name)
            body = status.model_dump(by_alias=True, mode="json")
            self.kube.patch_status("Build", ns, build.name, str(build.metadata.get("resourceVersion")), body)
            log.info("build %s/%s: %s -> %s %s", ns, build.name, build.status.phase.value, status.phase.value, status.reason or "")
        involved = {"apiVersion": build.api_version, "kind": "Build", "metadata": build.metadata}
        for action in decision.actions:
            if isinstance(action, RecordEvent):
                self.kube.record_event(involved, action.reason, action.message, warning=action.warning)

    def _prune(self, namespace: str, config: BuildConfig) -> None:
        builds = self.kube.list_builds(namespace, config.name)
        doomed = builds_to_prune(
            [Sibling(b.name, b.number, b.status.phase) for b in builds],
            config.spec.successful_builds_history_limit,
            config.spec.failed_builds_history_limit,
        )
        for name in doomed:
            log.info("build %s/%s: pruned (history limits of buildconfig %s)", namespace, name, config.name)
            self.kube.delete_build(namespace, name)

    def resync(self, namespace: str | None = None) -> None:
        """Every unfinished build once: deadlines, and any event a watch missed."""
        for b in self.kube.list_builds(namespace):
            if not b.status.phase.terminal or b.status.phase is BuildPhase.CANCELLED:
                self.reconcile(b.namespace, b.name)


def _is_queued(decision: Decision, build: Build) -> bool:
    return build.status.phase is BuildPhase.NEW and (decision.status is None or decision.status.phase is BuildPhase.NEW)
