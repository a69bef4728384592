"""The Build state machine and run-policy decisions, without a cluster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kiln.cluster.models import BaseImage, BuildPhase, BuildStatus, RunPolicy, StageInfo
from kiln.cluster.result import MARKER, BuildOutcome, format_time
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
    may_start,
    superseded_by,
)

NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)
T0 = format_time(NOW - timedelta(seconds=30))


def obs(phase: BuildPhase = BuildPhase.NEW, pod: PodView | None = None, **kw: Any) -> Observation:
    status = BuildStatus(phase=phase, **kw.pop("status", {}))
    return Observation(name="app-3", number=3, status=status, pod=pod, now=NOW, **kw)


def kinds(d: Decision) -> list[type]:
    return [type(a) for a in d.actions]


def test_new_build_creates_its_pod_then_is_pending() -> None:
    d = decide(obs())
    assert d.status is not None and d.status.phase is BuildPhase.PENDING
    assert d.status.pod_name == "app-3-build"
    assert kinds(d) == [CreatePod, RecordEvent]


def test_restart_after_pod_creation_follows_the_pod_instead_of_creating_another() -> None:
    # crashed after creating the pod, before writing Pending
    d = decide(obs(BuildPhase.NEW, PodView("Running", start_time=T0)))
    assert CreatePod not in kinds(d)
    assert d.status is not None and d.status.phase is BuildPhase.RUNNING
    assert d.status.start_timestamp == T0


def test_pending_with_a_pending_pod_changes_nothing() -> None:
    d = decide(obs(BuildPhase.PENDING, PodView("Pending"), status={"pod_name": "app-3-build"}))
    assert d == Decision()


def test_running_is_recorded_once() -> None:
    d = decide(obs(BuildPhase.PENDING, PodView("Running", start_time=T0)))
    assert d.status is not None and d.status.phase is BuildPhase.RUNNING
    assert kinds(d) == [RecordEvent]
    again = decide(obs(BuildPhase.RUNNING, PodView("Running", start_time=T0), status={"start_timestamp": T0, "pod_name": "app-3-build"}))
    assert again == Decision()


def test_success_copies_stages_and_digest_from_the_termination_message() -> None:
    outcome = BuildOutcome(
        ok=True,
        stages=[StageInfo(name="FetchInputs", start_time=T0, duration_milliseconds=12), StageInfo(name="Build", duration_milliseconds=900)],
        image_digest="sha256:" + "a" * 64,
        output_docker_image_reference="localhost:5000/app:latest",
        base_images=[BaseImage(name="localhost:5000/lib/base:1", digest="sha256:" + "b" * 64)],
    )
    finished = format_time(NOW - timedelta(seconds=5))
    pod = PodView("Succeeded", start_time=T0, exit_code=0, termination_message=outcome.to_message(), finished_at=finished)
    d = decide(obs(BuildPhase.RUNNING, pod, status={"start_timestamp": T0}))
    assert d.status is not None
    assert d.status.phase is BuildPhase.COMPLETE
    assert d.status.image_digest == "sha256:" + "a" * 64
    assert d.status.output_docker_image_reference == "localhost:5000/app:latest"
    assert [s.name for s in d.status.stages] == ["FetchInputs", "Build"]
    assert d.status.base_images == outcome.base_images
    assert d.status.completion_timestamp == finished
    assert d.status.duration == 25 * 10**9
    assert kinds(d) == [RecordEvent, WakeSiblings]
    event = d.actions[0]
    assert isinstance(event, RecordEvent) and not event.warning and event.reason == "BuildCompleted"


def test_result_from_a_log_line_when_there_is_no_termination_message() -> None:
    outcome = BuildOutcome(ok=False, reason="DockerBuildFailed", message="RUN false: exit 1")
    pod = PodView("Failed", exit_code=1, termination_message=f"noise\n{MARKER}{outcome.to_message()}\n")
    d = decide(obs(BuildPhase.RUNNING, pod))
    assert d.status is not None and (d.status.phase, d.status.reason) == (BuildPhase.FAILED, "DockerBuildFailed")
    assert d.status.message == "RUN false: exit 1"


def test_failure_without_outcome() -> None:
    d = decide(obs(BuildPhase.RUNNING, PodView("Failed", exit_code=2)))
    assert d.status is not None and (d.status.phase, d.status.reason) == (BuildPhase.FAILED, "GenericBuildFailed")
    oom = decide(obs(BuildPhase.RUNNING, PodView("Failed", exit_code=137, terminated_reason="OOMKilled")))
    assert oom.status is not None and oom.status.reason == "OutOfMemoryKilled"
    evicted = decide(obs(BuildPhase.PENDING, PodView("Failed", reason="Evicted", message="node out of disk")))
    assert evicted.status is not None and (evicted.status.phase, evicted.status.reason) == (BuildPhase.ERROR, "Evicted")


def test_deadline_from_the_kubelet() -> None:
    d = decide(obs(BuildPhase.RUNNING, PodView("Failed", reason="DeadlineExceeded", message="Pod was active on the node longer than the specified deadline")))
    assert d.status is not None and (d.status.phase, d.status.reason) == (BuildPhase.FAILED, "DeadlineExceeded")
    assert DeletePod not in kinds(d)


def test_deadline_enforced_by_the_controller_when_the_kubelet_does_not() -> None:
    start = format_time(NOW - timedelta(seconds=100))
    running = PodView("Running", start_time=start)
    assert decide(obs(BuildPhase.RUNNING, running, status={"start_timestamp": start, "pod_name": "app-3-build"}, deadline_seconds=200)).status is None
    d = decide(obs(BuildPhase.RUNNING, running, status={"start_timestamp": start}, deadline_seconds=60))
    assert d.status is not None and (d.status.phase, d.status.reason) == (BuildPhase.FAILED, "DeadlineExceeded")
    assert DeletePod in kinds(d)


@pytest.mark.parametrize("phase", [BuildPhase.NEW, BuildPhase.PENDING, BuildPhase.RUNNING])
def test_cancel_removes_the_pod(phase: BuildPhase) -> None:
    pod = None if phase is BuildPhase.NEW else PodView("Running", start_time=T0)
    d = decide(obs(phase, pod, status={"cancelled": True}))
    assert d.status is not None and d.status.phase is BuildPhase.CANCELLED
    assert (DeletePod in kinds(d)) == (pod is not None)
    assert d.status.completion_timestamp == format_time(NOW)


def test_a_cancelled_builds_lingering_pod_is_deleted_and_a_finished_ones_kept() -> None:
    assert kinds(decide(obs(BuildPhase.CANCELLED, PodView("Running")))) == [DeletePod]
    assert decide(obs(BuildPhase.CANCELLED, PodView("Running", deleting=True))) == Decision()
    assert decide(obs(BuildPhase.COMPLETE, PodView("Succeeded"))) == Decision()
    assert decide(obs(BuildPhase.FAILED, None, status={"cancelled": True})) == Decision()


def test_pod_deleted_under_a_running_build_is_an_error_not_a_rerun() -> None:
    d = decide(obs(BuildPhase.RUNNING, None, status={"start_timestamp": T0}))
    assert d.status is not None and (d.status.phase, d.status.reason) == (BuildPhase.ERROR, "BuildPodDeleted")
    assert CreatePod not in kinds(d)


# -- run policy ----------------------------------------------------------------------------


def sib(n: int, phase: BuildPhase) -> Sibling:
    return Sibling(f"app-{n}", n, phase)


def test_serial_queues_behind_an_active_or_older_queued_build() -> None:
    assert not may_start(3, [sib(2, BuildPhase.RUNNING)], RunPolicy.SERIAL)
    assert not may_start(3, [sib(1, BuildPhase.COMPLETE), sib(2, BuildPhase.NEW)], RunPolicy.SERIAL)
    assert may_start(3, [sib(1, BuildPhase.COMPLETE), sib(2, BuildPhase.FAILED), sib(4, BuildPhase.NEW)], RunPolicy.SERIAL)
    assert may_start(3, [sib(2, BuildPhase.RUNNING), sib(1, BuildPhase.PENDING)], RunPolicy.PARALLEL)
    d = decide(obs(siblings=[sib(2, BuildPhase.PENDING)]))
    assert d == Decision()


def test_serial_latest_only_cancels_queued_builds_that_have_a_newer_sibling() -> None:
    assert superseded_by(3, [sib(4, BuildPhase.NEW), sib(5, BuildPhase.NEW)], RunPolicy.SERIAL_LATEST_ONLY) == "app-5"
    assert superseded_by(3, [sib(4, BuildPhase.NEW)], RunPolicy.SERIAL) is None
    assert superseded_by(5, [sib(4, BuildPhase.RUNNING)], RunPolicy.SERIAL_LATEST_ONLY) is None
    d = decide(obs(siblings=[sib(2, BuildPhase.RUNNING), sib(4, BuildPhase.NEW)], run_policy=RunPolicy.SERIAL_LATEST_ONLY))
    assert d.status is not None and d.status.phase is BuildPhase.CANCELLED
    assert "app-4" in (d.status.message or "")
    # the newest one waits for the running build, then starts
    newest = Observation("app-4", 4, BuildStatus(), None, NOW, [sib(2, BuildPhase.RUNNING), sib(3, BuildPhase.NEW)], RunPolicy.SERIAL_LATEST_ONLY)
    assert decide(newest) == Decision()
    later = Observation("app-4", 4, BuildStatus(), None, NOW, [sib(2, BuildPhase.COMPLETE), sib(3, BuildPhase.CANCELLED)], RunPolicy.SERIAL_LATEST_ONLY)
    assert CreatePod in kinds(decide(later))


def test_history_limits() -> None:
    builds = [sib(1, BuildPhase.COMPLETE), sib(2, BuildPhase.FAILED), sib(3, BuildPhase.COMPLETE), sib(4, BuildPhase.CANCELLED),
              sib(5, BuildPhase.COMPLETE), sib(6, BuildPhase.ERROR), sib(7, BuildPhase.RUNNING), sib(8, BuildPhase.NEW)]  # fmt: skip
    assert builds_to_prune(builds, 2, 1) == ["app-1", "app-2", "app-4"]
    assert builds_to_prune(builds, 0, 0) == ["app-1", "app-2", "app-3", "app-4", "app-5", "app-6"]
    assert builds_to_prune(builds, 5, 5) == []


def test_outcome_fits_a_termination_message() -> None:
    big = BuildOutcome(ok=False, reason="DockerBuildFailed", message="m" * 3000, log_snippet="line\n" * 2000,
                       stages=[StageInfo(name="Build", duration_milliseconds=1)])  # fmt: skip
    text = big.to_message()
    assert len(text.encode()) <= 4096
    back = BuildOutcome.model_validate_json(text)
    assert back.reason == "DockerBuildFailed" and back.stages[0].name == "Build"
    assert back.log_snippet is None or back.log_snippet.endswith("line\n")


def test_base_images_outlast_the_stages_in_a_termination_message_and_go_whole() -> None:
    bases = [BaseImage(name=f"registry.example/lib/base-{n}:1", digest="sha256:" + f"{n:x}" * 64) for n in range(10)]
    stages = [StageInfo(name=f"Stage{n}", start_time=T0, duration_milliseconds=n) for n in range(40)]
    full = BuildOutcome(ok=True, stages=stages, image_digest="sha256:" + "a" * 64, base_images=bases)
    assert len(full.model_dump_json(by_alias=True, exclude_none=True)) > 4096
    back = BuildOutcome.model_validate_json(full.to_message())
    assert back.stages == [] and back.base_images == bases  # stages only show; triggers watch the bases
    # a list cut short would stop watching images: it is left out whole (not known, nothing recorded)
    many = [BaseImage(name=f"registry.example/lib/base-{n}:1", digest="sha256:" + "c" * 64) for n in range(60)]
    text = BuildOutcome(ok=True, image_digest="sha256:" + "a" * 64, base_images=many).to_message()
    assert len(text.encode()) <= 4096
    back = BuildOutcome.model_validate_json(text)
    assert back.base_images is None and back.image_digest == "sha256:" + "a" * 64
