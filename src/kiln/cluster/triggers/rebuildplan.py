"""What a new digest of an image would set off: the BuildConfigs it rebuilds, in cascade order, then the workloads they redeploy.

Pure: the caller lists BuildConfigs and workloads. The cascade follows outputs to the
BuildConfigs that watch them, breadth first, each BuildConfig once (a chain rebuilds once, as the
controller does it); a cycle ends where it closes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kiln.cluster.models import BuildConfig
from kiln.cluster.redeploy import WorkloadUse
from kiln.cluster.triggers.imagechange import key, normalize, output_image, watched_images


@dataclass(frozen=True)
class Rebuild:
    namespace: str
    name: str
    because: str  # the image it watches that changes
    after: tuple[str, ...]  # upstream BuildConfigs ("ns/name") it waits for; empty: starts at once
    output: str | None


@dataclass(frozen=True)
class RebuildPlan:
    image: str
    rebuilds: tuple[Rebuild, ...]
    images: tuple[str, ...]  # every image that gets a new digest: the one given and the outputs rebuilt


def plan(image: str, configs: Sequence[BuildConfig]) -> RebuildPlan:
    start = normalize(image)
    changed = [start]
    producers: dict[str, str] = {}
    because: dict[tuple[str, str], str] = {}
    watched = {key(c): watched_images(c) for c in configs}  # once: it parses Dockerfiles
    frontier = [start]
    while frontier:  # breadth first over "watches an image that changes"
        nxt: list[str] = []
        for ref in frontier:
            for c in configs:
                k = key(c)
                if k in because or ref not in watched[k]:
                    continue
                because[k] = ref
                out = output_image(c)
                if out is not None and out not in changed:
                    changed.append(out)
                    producers[out] = f"{k[0]}/{k[1]}"
                    nxt.append(out)
        frontier = nxt
    by_key = {key(c): c for c in configs}
    pending: list[Rebuild] = []
    for k, ref in because.items():
        me = f"{k[0]}/{k[1]}"
        after = tuple(dict.fromkeys(producers[r] for r in watched[k] if r in producers and producers[r] != me))
        pending.append(Rebuild(k[0], k[1], ref, after, output_image(by_key[k])))
    ordered: list[Rebuild] = []
    placed: set[str] = set()
    while pending:  # upstream first; what is left in a cycle goes in listing order
        ready = [r for r in pending if all(a in placed for a in r.after)] or pending[:1]
        for r in ready:
            ordered.append(r)
            placed.add(f"{r.namespace}/{r.name}")
            pending.remove(r)
    return RebuildPlan(start, tuple(ordered), tuple(changed))


def redeploys(result: RebuildPlan, uses_by_image: dict[str, list[WorkloadUse]]) -> list[tuple[str, WorkloadUse]]:
    """(image, workload) for every workload that follows an image of the plan."""
    return [(img, use) for img in result.images for use in uses_by_image.get(img, [])]
