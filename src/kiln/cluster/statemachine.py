"""The Build state machine, in one place: (Build, its pod, its siblings, now) -> (new status, actions).

Pure: no I/O, no clock, no Kubernetes client. The controller observes, calls ``decide``, carries
out the actions in order and then writes the status with the resourceVersion it read, so a
conflicting writer makes it observe and decide again. Every decision is driven by the stored
status and the pod as they are now, which is what makes a restarted controller continue where
the last one stopped:

* a Build starts by creating its pod (fixed name ``<build>-build``) and only then records
  Pending; a restart in between finds the pod and follows it, never creating a second one;
* Pending/Running with no pod means someone deleted it: Error (BuildPodDeleted), never a re-run.

Phases (OpenShift's)::

    New ──(runPolicy allows)──► Pending ──(pod running)──► Running ──► Complete | Failed
     │                            │                          │
     └── cancelled / superseded ──┴──────── cancelled ───────┴──► Cancelled
                                  └───── pod deleted ────────┴──► Error
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from kiln.cluster.models import BuildPhase, BuildStatus, BuildStatusOutput, OutputTo, RunPolicy
from kiln.cluster.result import REASON_GENERIC, BuildOutcome, format_time, parse_outcome, parse_time

ACTIVE = frozenset({BuildPhase.PENDING, BuildPhase.RUNNING})
FAILED_KIND = frozenset({BuildPhase.FAILED, BuildPhase.ERROR, BuildPhase.CANCELLED})

# Grace the controller gives the kubelet's activeDeadlineSeconds before enforcing the deadline itself.
DEADLINE_GRACE = timedelta(seconds=10)

MSG_CANCELLED = "The build was cancelled by the user."
MSG_DEADLINE = "Build was running longer than its defined completionDeadlineSeconds."
MSG_POD_DELETED = "The pod for this build was deleted before the build completed."


@dataclass(frozen=True)
class PodView:
    """What the state machine needs of a build pod."""

    phase: str  # Pending | Running | Succeeded | Failed | Unknown
    reason: str | None = None  # pod.status.reason, e.g. DeadlineExceeded
    message: str | None = None
    start_time: str | None = None
    exit_code: int | None = None
    terminated_reason: str | None = None  # container state.terminated.reason, e.g. OOMKilled
    termination_message: str | None = None
    finished_at: str | None = None
    deleting: bool = False


@dataclass(frozen=True)
class Sibling:
    """Another Build of the same BuildConfig."""

    name: str
    number: int
    phase: BuildPhase


@dataclass(frozen=True)
class Observation:
    name: str
    number: int
    status: BuildStatus
    pod: PodView | None
    now: datetime
    siblings: Sequence[Sibling] = ()
    run_policy: RunPolicy = RunPolicy.SERIAL
    deadline_seconds: int | None = None
    slot: str | None = None  # why a triggered build may not start yet (fleet limits); None: it may


REASON_WAITING_FOR_SLOT = "WaitingForTriggeredBuildSlot"


# -- actions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class CreatePod:
    pass


@dataclass(frozen=True)
class DeletePod:
    pass


@dataclass(frozen=True)
class RecordEvent:
    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class WakeSiblings:
    """This build left the queue or finished: queued builds of the BuildConfig may now start."""


Action = CreatePod | DeletePod | RecordEvent | WakeSiblings


@dataclass(frozen=True)
class Decision:
    status: BuildStatus | None = None  # None: leave the status as it is
    actions: tuple[Action, ...] = ()


# -- run policy --------------------------------------------------------------------------


def may_start(number: int, siblings: Sequence[Sibling], policy: RunPolicy) -> bool:
    """Serial builds run one at a time in number order; Parallel ones at once."""
    if policy is RunPolicy.PARALLEL:
        return True
    if any(s.phase in ACTIVE for s in siblings):
        return False
    return not any(s.phase is BuildPhase.NEW and s.number < number for s in siblings)


def superseded_by(number: int, siblings: Sequence[Sibling], policy: RunPolicy) -> str | None:
    """SerialLatestOnly: a queued build with a newer sibling is cancelled (the newest one runs)."""
    if policy is not RunPolicy.SERIAL_LATEST_ONLY:
        return None
    newer = [s for s in siblings if s.number > number]
    return max(newer, key=lambda s: s.number).name if newer else None


def builds_to_prune(builds: Sequence[Sibling], successful_limit: int, failed_limit: int) -> list[str]:
    """Names of finished builds beyond the history limits, oldest first (OpenShift counts Error and Cancelled as failed)."""
    newest_first = sorted(builds, key=lambda b: b.number, reverse=True)
    complete = [b for b in newest_first if b.phase is BuildPhase.COMPLETE]
    failed = [b for b in newest_first if b.phase in FAILED_KIND]
    doomed = complete[successful_limit:] + failed[failed_limit:]
    return [b.name for b in sorted(doomed, key=lambda b: b.number)]


# -- the machine -------------------------------------------------------------------------


def decide(obs: Observation) -> Decision:
    status = obs.status
    phase = status.phase
    if phase.terminal:
        # A cancelled build's pod goes; a finished one's stays for `kiln logs`.
        if phase is BuildPhase.CANCELLED and obs.pod is not None and not obs.pod.deleting:
            return Decision(None, (DeletePod(),))
        return Decision()
    if status.cancelled:
        return _finish(obs, BuildPhase.CANCELLED, "CancelledBuild", MSG_CANCELLED, delete_pod=True, event="BuildCancelled")
    if phase is BuildPhase.NEW and obs.pod is None:
        return _queued(obs)
    if obs.pod is None:
        return _finish(obs, BuildPhase.ERROR, "BuildPodDeleted", MSG_POD_DELETED, event="BuildPodDeleted")
    return _follow_pod(obs, obs.pod)


def _queued(obs: Observation) -> Decision:
    newer = superseded_by(obs.number, obs.siblings, obs.run_policy)
    if newer is not None:
        message = f"Cancelled: build {newer} is newer and the run policy is SerialLatestOnly."
        return _finish(obs, BuildPhase.CANCELLED, "CancelledBuild", message, event="BuildCancelled")
    if not may_start(obs.number, obs.siblings, obs.run_policy):
        return Decision()
    if obs.slot is not None:
        if obs.status.reason == REASON_WAITING_FOR_SLOT:
            return Decision()  # said once; the message need not follow every count
        waiting = obs.status.model_copy(deep=True)
        waiting.reason, waiting.message = REASON_WAITING_FOR_SLOT, obs.slot
        return Decision(waiting)
    status = obs.status.model_copy(deep=True)
    status.phase = BuildPhase.PENDING
    status.pod_name = pod_name(obs.name)
    status.reason = status.message = None
    return Decision(status, (CreatePod(), RecordEvent("BuildStarted", f"Build {obs.name} is now pending; pod {status.pod_name} created")))


def _follow_pod(obs: Observation, pod: PodView) -> Decision:
    status = obs.status.model_copy(deep=True)
    status.pod_name = pod_name(obs.name)
    if pod.phase in ("Pending", "Unknown"):
        if _deadline_passed(obs, pod):
            return _finish(obs, BuildPhase.FAILED, "DeadlineExceeded", MSG_DEADLINE, delete_pod=True, event="BuildFailed")
        status.phase = BuildPhase.PENDING if obs.status.phase is BuildPhase.NEW else obs.status.phase
        return _changed(obs, status)
    if pod.phase == "Running":
        if _deadline_passed(obs, pod):
            return _finish(obs, BuildPhase.FAILED, "DeadlineExceeded", MSG_DEADLINE, delete_pod=True, event="BuildFailed")
        status.phase = BuildPhase.RUNNING
        status.start_timestamp = status.start_timestamp or pod.start_time or format_time(obs.now)
        events = (RecordEvent("BuildRunning", f"Build {obs.name} is running"),) if obs.status.phase is not BuildPhase.RUNNING else ()
        return _changed(obs, status, events)
    outcome = parse_outcome(pod.termination_message)
    if pod.phase == "Succeeded":
        if outcome is not None and not outcome.ok:  # the container exited 0 but said it failed
            return _finish(obs, BuildPhase.FAILED, outcome.reason or REASON_GENERIC, outcome.message or "", pod=pod, outcome=outcome, event="BuildFailed")
        return _finish(obs, BuildPhase.COMPLETE, None, None, pod=pod, outcome=outcome, event="BuildCompleted")
    if pod.phase == "Failed":
        if pod.reason == "DeadlineExceeded":
            return _finish(obs, BuildPhase.FAILED, "DeadlineExceeded", MSG_DEADLINE, pod=pod, outcome=outcome, event="BuildFailed")
        if outcome is not None:
            return _finish(obs, BuildPhase.FAILED, outcome.reason or REASON_GENERIC, outcome.message or "", pod=pod, outcome=outcome, event="BuildFailed")
        if pod.terminated_reason == "OOMKilled":
            return _finish(obs, BuildPhase.FAILED, "OutOfMemoryKilled", "The build pod was killed due to an out of memory condition.", pod=pod, event="BuildFailed")
        if pod.exit_code is None:  # the container never ran: evicted, or the node gave up on it
            message = pod.message or pod.reason or "The build pod failed before its container ran."
            return _finish(obs, BuildPhase.ERROR, pod.reason or "BuildPodFailed", message, pod=pod, event="BuildError")
        return _finish(obs, BuildPhase.FAILED, REASON_GENERIC, f"The build pod exited with code {pod.exit_code}.", pod=pod, event="BuildFailed")
    return Decision()


def _deadline_passed(obs: Observation, pod: PodView) -> bool:
    started = obs.status.start_timestamp or pod.start_time
    if obs.deadline_seconds is None or not started:
        return False
    return obs.now - parse_time(started) > timedelta(seconds=obs.deadline_seconds) + DEADLINE_GRACE


def _changed(obs: Observation, status: BuildStatus, actions: tuple[Action, ...] = ()) -> Decision:
    return Decision(status if status != obs.status else None, actions)


def _finish(
    obs: Observation,
    phase: BuildPhase,
    reason: str | None,
    message: str | None,
    *,
    pod: PodView | None = None,
    outcome: BuildOutcome | None = None,
    delete_pod: bool = False,
    event: str,
) -> Decision:
    status = obs.status.model_copy(deep=True)
    status.phase = phase
    status.reason = reason
    status.message = message or None
    if pod is not None:
        status.start_timestamp = status.start_timestamp or pod.start_time
    completed = (pod.finished_at if pod is not None else None) or format_time(obs.now)
    status.completion_timestamp = completed
    if status.start_timestamp:
        status.duration = max(0, int((parse_time(completed) - parse_time(status.start_timestamp)).total_seconds() * 1e9))
    if outcome is not None:
        status.stages = list(outcome.stages)
        status.base_images = outcome.base_images
        status.log_snippet = outcome.log_snippet
        if outcome.image_digest:
            status.output = BuildStatusOutput(to=OutputTo(image_digest=outcome.image_digest))
        status.output_docker_image_reference = outcome.output_docker_image_reference or status.output_docker_image_reference
    actions: list[Action] = []
    if delete_pod and obs.pod is not None and not obs.pod.deleting:
        actions.append(DeletePod())
    text = f"Build {obs.name} {phase.value.lower()}" + (f": {message}" if message else "")
    actions.append(RecordEvent(event, text, warning=phase is not BuildPhase.COMPLETE))
    actions.append(WakeSiblings())
    return Decision(status, tuple(actions))


def pod_name(build_name: str) -> str:
    return f"{build_name}-build"
