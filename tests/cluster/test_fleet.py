"""Fleet limits (pure): triggered builds queue FIFO for cluster and namespace slots; user builds do not."""

from __future__ import annotations

from kiln.cluster.fleet import FleetLimits, slot_for
from kiln.cluster.models import ANNOTATION_NUMBER, ANNOTATION_TRIGGER, LABEL_BUILDCONFIG, Build


def build(ns: str, config: str, number: int, phase: str, created: int, trigger: str | None = "ImageChange") -> Build:
    annotations = {ANNOTATION_NUMBER: str(number), **({ANNOTATION_TRIGGER: trigger} if trigger else {})}
    return Build.model_validate({
        "metadata": {"name": f"{config}-{number}", "namespace": ns, "labels": {LABEL_BUILDCONFIG: config}, "annotations": annotations,
                     "creationTimestamp": f"2026-11-27T00:00:{created:02d}Z"},
        "spec": {"source": {"dockerfile": "FROM x\n"}, "strategy": {"type": "Docker"}},
        "status": {"phase": phase},
    })  # fmt: skip


def test_only_the_oldest_queued_builds_get_free_slots() -> None:
    running = [build("a", f"r{i}", 1, "Running", i) for i in range(3)]
    queued = [build("a", f"q{i}", 1, "New", 10 + i) for i in range(3)]
    everything = running + queued
    limits = FleetLimits(cluster=4)
    assert [slot_for(q, everything, limits) is None for q in queued] == [True, False, False]
    assert "Waiting for a triggered-build slot" in (slot_for(queued[2], everything, limits) or "")


def test_namespace_limit_lets_another_namespace_pass() -> None:
    everything = [build("a", "r", 1, "Running", 0), build("a", "q", 1, "New", 1), build("b", "q", 1, "New", 2)]
    limits = FleetLimits(cluster=10, namespace=1)
    assert slot_for(everything[1], everything, limits) is not None
    assert slot_for(everything[2], everything, limits) is None


def test_user_builds_and_no_limits_are_never_held() -> None:
    everything = [build("a", f"r{i}", 1, "Running", i) for i in range(5)]
    mine = build("a", "mine", 1, "New", 9, trigger=None)
    assert slot_for(mine, [*everything, mine], FleetLimits(cluster=1)) is None
    queued = build("a", "q", 1, "New", 9)
    assert slot_for(queued, [*everything, queued], FleetLimits()) is None


def test_a_queued_build_held_by_its_own_run_policy_takes_no_slot() -> None:
    # q-2 waits for its sibling q-1 (Serial), so the newer p-1 may have the one free slot
    everything = [build("a", "q", 1, "Running", 0), build("a", "q", 2, "New", 1), build("a", "p", 1, "New", 2)]
    assert slot_for(everything[2], everything, FleetLimits(cluster=2)) is None
