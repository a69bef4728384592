"""The controller on the real control plane: run policies, deadline, cancellation, history, restart, GC, events."""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pytest

from kiln.cluster.instantiate import start_build
from kiln.cluster.kube import Kube
from kiln.cluster.models import BuildPhase
from kiln.cluster.statemachine import pod_name
from tests.cluster import e2e_support as e2e

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DONE = {BuildPhase.COMPLETE, BuildPhase.FAILED, BuildPhase.ERROR, BuildPhase.CANCELLED}


def sleeper(name: str, busybox: str, seconds: int, *, exit_code: int = 0, **spec: Any) -> dict[str, Any]:
    run = f"sleep {seconds}" + (f" && exit {exit_code}" if exit_code else "")
    return {
        "apiVersion": "kiln.dev/v1alpha1",
        "kind": "BuildConfig",
        "metadata": {"name": name},
        "spec": {"source": {"dockerfile": f"FROM {busybox}\nRUN {run}\n"}, "strategy": {"type": "Docker"}, **spec},
    }


def phases(k: Kube, ns: str, config: str) -> dict[str, BuildPhase]:
    return {b.name: b.status.phase for b in k.list_builds(ns, config)}


def test_serial_runs_one_build_at_a_time_in_order(installed: e2e.Installed, ctl: e2e.ControllerProcess, k: Kube, namespace: str) -> None:
    e2e.create(k, namespace, sleeper("serial", installed.busybox, 3))
    names = [start_build(k, namespace, "serial").name for _ in range(3)]
    assert names == ["serial-1", "serial-2", "serial-3"]
    seen_active: list[int] = []

    def all_done() -> bool:
        now = phases(k, namespace, "serial")
        seen_active.append(sum(p in (BuildPhase.PENDING, BuildPhase.RUNNING) for p in now.values()))
        return all(p in DONE for p in now.values())

    e2e.wait_until("serial builds", all_done, diagnose=ctl.log_tail)
    assert max(seen_active) == 1
    builds = sorted(k.list_builds(namespace, "serial"), key=lambda b: b.number)
    assert [b.status.phase for b in builds] == [BuildPhase.COMPLETE] * 3
    for earlier, later in itertools.pairwise(builds):
        assert earlier.status.completion_timestamp is not None and later.status.start_timestamp is not None
        assert later.status.start_timestamp >= earlier.status.completion_timestamp


def test_serial_latest_only_cancels_queued_builds(installed: e2e.Installed, ctl: e2e.ControllerProcess, k: Kube, namespace: str) -> None:
    e2e.create(k, namespace, sleeper("latest", installed.busybox, 4, runPolicy="SerialLatestOnly"))
    start_build(k, namespace, "latest")
    e2e.wait_phase(k, namespace, "latest-1", {BuildPhase.RUNNING, BuildPhase.PENDING}, ctl)
    start_build(k, namespace, "latest")
    start_build(k, namespace, "latest")
    e2e.wait_until("all finished", lambda: all(p in DONE for p in phases(k, namespace, "latest").values()) and len(phases(k, namespace, "latest")) == 3,
                   diagnose=ctl.log_tail)  # fmt: skip
    final = phases(k, namespace, "latest")
    assert final == {"latest-1": BuildPhase.COMPLETE, "latest-2": BuildPhase.CANCELLED, "latest-3": BuildPhase.COMPLETE}
    cancelled = k.get_build(namespace, "latest-2")
    assert cancelled is not None and "latest-3" in (cancelled.status.message or "")
    assert k.get_pod(namespace, pod_name("latest-2")) is None  # it never ran


def test_deadline_fails_the_build(installed: e2e.Installed, ctl: e2e.ControllerProcess, k: Kube, namespace: str) -> None:
    e2e.create(k, namespace, sleeper("slow", installed.busybox, 120, completionDeadlineSeconds=5))
    start_build(k, namespace, "slow")
    build = e2e.wait_phase(k, namespace, "slow-1", DONE, ctl, timeout=120)
    assert (build.status.phase, build.status.reason) == (BuildPhase.FAILED, "DeadlineExceeded")
    pod = k.get_pod(namespace, pod_name("slow-1"))
    assert pod is None or pod["spec"]["activeDeadlineSeconds"] == 5


def test_cancel_build_removes_the_pod(installed: e2e.Installed, ctl: e2e.ControllerProcess, k: Kube, namespace: str) -> None:
    e2e.create(k, namespace, sleeper("cancelme", installed.busybox, 120))
    # `start-build --wait` is waiting when the build is cancelled: it exits non-zero (0 is for Complete only)
    waiter = e2e.kiln_popen(installed, "start-build", "cancelme", "-n", namespace, "--wait")
    e2e.wait_phase(k, namespace, "cancelme-1", {BuildPhase.RUNNING}, ctl)
    assert k.get_pod(namespace, pod_name("cancelme-1")) is not None
    done = e2e.kiln_cli(installed, "cancel-build", "cancelme-1", "-n", namespace, "--wait")
    assert done.returncode == 0, done.stderr
    build = k.get_build(namespace, "cancelme-1")
    assert build is not None and build.status.phase is BuildPhase.CANCELLED and build.status.reason == "CancelledBuild"
    e2e.wait_until("pod deleted", lambda: k.get_pod(namespace, pod_name("cancelme-1")) is None)
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 1, out + err
    assert "build cancelme-1 cancelled: CancelledBuild" in err


def test_history_limits_prune_old_builds(installed: e2e.Installed, ctl: e2e.ControllerProcess, k: Kube, namespace: str) -> None:
    e2e.create(k, namespace, sleeper("hist", installed.busybox, 0, successfulBuildsHistoryLimit=1, failedBuildsHistoryLimit=1))
    for _ in range(2):
        b = start_build(k, namespace, "hist")
        e2e.wait_phase(k, namespace, b.name, DONE, ctl)
    k.api.patch(  # the next two fail
        __import__("kiln.cluster.kube", fromlist=["BuildConfigResource"]).BuildConfigResource, "hist",
        {"spec": {"source": {"dockerfile": f"FROM {installed.busybox}\nRUN exit 1\n"}}}, namespace=namespace,
        patch_type=__import__("lightkube.types", fromlist=["PatchType"]).PatchType.MERGE,
    )  # fmt: skip
    for _ in range(2):
        b = start_build(k, namespace, "hist")
        e2e.wait_phase(k, namespace, b.name, DONE, ctl)
    e2e.wait_until("pruning", lambda: set(phases(k, namespace, "hist")) == {"hist-2", "hist-4"}, diagnose=lambda: str(phases(k, namespace, "hist")))
    assert phases(k, namespace, "hist") == {"hist-2": BuildPhase.COMPLETE, "hist-4": BuildPhase.FAILED}


def test_controller_restart_mid_build_never_starts_it_twice(installed: e2e.Installed, ctl: e2e.ControllerProcess, k: Kube, namespace: str) -> None:
    e2e.create(k, namespace, sleeper("restart", installed.busybox, 6))
    start_build(k, namespace, "restart")
    e2e.wait_phase(k, namespace, "restart-1", {BuildPhase.RUNNING}, ctl)
    pod = k.get_pod(namespace, pod_name("restart-1"))
    assert pod is not None
    uid = pod["metadata"]["uid"]
    ctl.kill()
    ctl.start()
    build = e2e.wait_phase(k, namespace, "restart-1", DONE, ctl)
    assert build.status.phase is BuildPhase.COMPLETE
    after = k.get_pod(namespace, pod_name("restart-1"))
    assert after is not None and after["metadata"]["uid"] == uid  # the same pod, not a second run
    # a build queued while the controller is down starts once it is back
    ctl.kill()
    start_build(k, namespace, "restart")
    ctl.start()
    assert e2e.wait_phase(k, namespace, "restart-2", DONE, ctl).status.phase is BuildPhase.COMPLETE


def test_concurrent_starts_take_distinct_numbers(installed: e2e.Installed, ctl: e2e.ControllerProcess, k: Kube, namespace: str, cluster: Any) -> None:
    e2e.create(k, namespace, sleeper("race", installed.busybox, 0, runPolicy="Parallel"))
    names: list[str] = []
    lock = threading.Lock()

    def starter() -> None:
        b = start_build(Kube(cluster.client()), namespace, "race")
        with lock:
            names.append(b.name)

    threads = [threading.Thread(target=starter) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(names) == [f"race-{n}" for n in range(1, 6)]
    bc = k.get_config(namespace, "race")
    assert bc is not None and bc.status.last_version == 5
    for n in names:
        assert e2e.wait_phase(k, namespace, n, DONE, ctl).status.phase is BuildPhase.COMPLETE


def test_events_and_owner_references(installed: e2e.Installed, ctl: e2e.ControllerProcess, k: Kube, namespace: str, cluster: Any) -> None:
    from lightkube.resources.core_v1 import Event

    e2e.create(k, namespace, sleeper("owned", installed.busybox, 0))
    start_build(k, namespace, "owned")
    e2e.wait_phase(k, namespace, "owned-1", DONE, ctl)
    reasons = {e.reason for e in cluster.client().list(Event, namespace=namespace) if e.involvedObject.name == "owned-1"}
    assert {"BuildStarted", "BuildCompleted"} <= reasons
    pod = k.get_pod(namespace, pod_name("owned-1"))
    assert pod is not None and pod["metadata"]["ownerReferences"][0]["kind"] == "Build"
    # deleting the BuildConfig removes its builds and their pods (garbage collection)
    from kiln.cluster.kube import BuildConfigResource

    k.api.delete(BuildConfigResource, "owned", namespace=namespace)
    e2e.wait_until("builds and pods collected", lambda: not k.list_builds(namespace, "owned") and k.get_pod(namespace, pod_name("owned-1")) is None)


def test_healthz_and_a_stack_dump_on_request(ctl: e2e.ControllerProcess) -> None:
    """/healthz (the Deployment's probes) answers from the watchdog; SIGUSR1 writes every thread's
    stack to the log and the controller goes on."""
    import os
    import signal

    import httpx

    def healthy() -> bool:
        try:
            return httpx.get(f"{ctl.trigger_url}/healthz", timeout=5).text == "ok\n"
        except httpx.HTTPError:
            return False  # still starting

    e2e.wait_until("controller /healthz", healthy, diagnose=ctl.log_tail)
    assert ctl.proc is not None
    offset = ctl.log_path.stat().st_size
    os.kill(ctl.proc.pid, signal.SIGUSR1)
    e2e.wait_until("a stack dump in the log", lambda: "_resync_loop" in ctl.log_path.read_text(errors="replace")[offset:], timeout=30)
    assert ctl.proc.poll() is None and healthy()
