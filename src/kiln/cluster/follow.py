"""Waiting for a Build and following its pod's log (`kiln start-build --wait/--follow`, `kiln logs -f`)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from kiln.cluster.kube import Kube, KubeError, NotFoundError
from kiln.cluster.models import Build
from kiln.cluster.statemachine import pod_name

POLL_SECONDS = 0.5


def wait_for_build(kube: Kube, namespace: str, name: str, *, timeout: float | None = None,
                   on_phase: Callable[[Build], None] | None = None) -> Build:  # fmt: skip
    """Poll until the build reaches a final phase; ``on_phase`` sees every phase change."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last = None
    while True:
        build = kube.get_build(namespace, name)
        if build is None:
            raise NotFoundError(f"build {namespace}/{name}: not found (deleted?)")
        if build.status.phase != last:
            last = build.status.phase
            if on_phase is not None:
                on_phase(build)
        if build.status.phase.terminal:
            return build
        if deadline is not None and time.monotonic() > deadline:
            raise KubeError(f"build {namespace}/{name}: still {build.status.phase.value} after {timeout:.0f}s")
        time.sleep(POLL_SECONDS)


def follow_log(kube: Kube, namespace: str, build: str, *, follow: bool) -> Iterator[str]:
    """The build pod's log; with ``follow``, waits for the pod to start and streams until it ends."""
    pod = pod_name(build)
    while follow:
        current = kube.get_build(namespace, build)
        if current is None:
            raise NotFoundError(f"build {namespace}/{build}: not found")
        raw = kube.get_pod(namespace, pod)
        phase = ((raw or {}).get("status") or {}).get("phase")
        if phase in ("Running", "Succeeded", "Failed"):
            break
        if current.status.phase.terminal and raw is None:
            break  # it never ran (cancelled while queued), or the pod is gone
        time.sleep(POLL_SECONDS)
    if kube.get_pod(namespace, pod) is None:
        current = kube.get_build(namespace, build)
        snippet = current.status.log_snippet if current is not None else None
        if snippet:
            yield from (line + "\n" for line in snippet.splitlines())
            return
        raise NotFoundError(f"build {namespace}/{build}: it has no pod (yet, or any more)")
    yield from kube.pod_log(namespace, pod, follow=follow)


def latest_build_name(kube: Kube, namespace: str, config: str) -> str:
    bc = kube.get_config(namespace, config)
    if bc is None:
        raise NotFoundError(f"buildconfig {namespace}/{config}: not found")
    if bc.status.last_version == 0:
        raise NotFoundError(f"buildconfig {namespace}/{config}: no build started yet")
    return f"{config}-{bc.status.last_version}"
