"""Fleet limits: how many triggered builds may run at once, cluster-wide and per namespace.

One base image update can make hundreds of BuildConfigs fire at once (kpack issue 774: a rebuild
storm). Triggered builds are therefore created at once but start only while a slot is free, in
the order they were created (a FIFO over all namespaces); builds a user started are not limited.
The queue is the set of New triggered Builds itself, so a restarted controller has it too. Pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from kiln.cluster.models import Build, BuildPhase

ACTIVE = (BuildPhase.PENDING, BuildPhase.RUNNING)


@dataclass(frozen=True)
class FleetLimits:
    cluster: int = 0  # 0: no limit
    namespace: int = 0

    @property
    def unlimited(self) -> bool:
        return self.cluster <= 0 and self.namespace <= 0


def _order(b: Build) -> tuple[str, str, int]:
    return (str(b.metadata.get("creationTimestamp", "")), b.namespace, b.number)


def _blocked_by_sibling(b: Build, builds: Sequence[Build]) -> bool:
    """A queued build its own BuildConfig holds back (Serial run policy) must not hold a slot."""
    return any(
        o.config_name == b.config_name and o.namespace == b.namespace and o.name != b.name
        and (o.status.phase in ACTIVE or (o.status.phase is BuildPhase.NEW and o.number < b.number))
        for o in builds
    )  # fmt: skip


def slot_for(build: Build, builds: Sequence[Build], limits: FleetLimits) -> str | None:
    """None if ``build`` may start now; else why it waits. ``builds``: every Build in the cluster."""
    if build.trigger is None or limits.unlimited:
        return None
    triggered = [b for b in builds if b.trigger is not None]
    running = sum(1 for b in triggered if b.status.phase in ACTIVE)
    per_ns = Counter(b.namespace for b in triggered if b.status.phase in ACTIVE)
    queue = sorted((b for b in triggered if b.status.phase is BuildPhase.NEW and not b.status.cancelled), key=_order)

    def fits(ns: str) -> bool:
        return (limits.cluster <= 0 or running < limits.cluster) and (limits.namespace <= 0 or per_ns[ns] < limits.namespace)

    for q in queue:
        if q.namespace == build.namespace and q.name == build.name:
            break
        if fits(q.namespace) and not _blocked_by_sibling(q, builds):
            running += 1  # an older queued build takes this slot first
            per_ns[q.namespace] += 1
    if fits(build.namespace):
        return None
    return (
        f"Waiting for a triggered-build slot: {running} running or ahead in the queue "
        f"(limits: {limits.cluster or 'none'} in the cluster, {limits.namespace or 'none'} per namespace)"
    )
