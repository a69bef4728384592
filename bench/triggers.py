"""The security-fix loop: seconds from pushing a new base image to a Deployment patched to the rebuilt app.

On the dev control plane (etcd, kube-apiserver, kube-controller-manager, kiln's node agent; see
docs/dev-cluster.md) with `kiln controller` and a docker-registry that sends it push
notifications. Each run pushes a base with a new /etc/security-fix and waits until the
Deployment's container points at the new app digest (``repo@sha256:...``).

There is no peer that runs here (OpenShift's build controller needs a whole OpenShift), so each
case compares kiln with kiln minus one of its shortcuts:

* **rebase**: an app whose last stage only copies onto the base (``COPY --link``), swapped onto
  the new base (docs/rebase.md), against the same BuildConfig with ``rebase: false`` (a full
  build in a build pod);
* **chain**: base -> builder image (RUN on the base) -> app (uses both) -> Deployment, with push
  notifications, against the same chain found by polling only (every 2 s).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import BenchConfig, BenchError, Benchmark, Result, Row, Sample

RUNS_TIMEOUT = 300.0


class _Loop:
    """One BuildConfig setup in its own namespace: push a fix, time until the Deployment follows."""

    def __init__(self, env: _Env, name: str, registry: str, dockerfile: Callable[[str], str], *, rebase: bool = True) -> None:
        from tests.cluster import e2e_support as e2e
        from tests.cluster.trigger_support import IMAGE_AND_CONFIG, buildconfig, deployment, push_base
        from tests.e2e.cluster_fixtures import create_namespace

        self.env, self.registry, self.name = env, registry, name
        self.ns = create_namespace(env.cluster.api())
        self.base = f"{name}/base:1"
        push_base(env.tmp, registry, self.base)
        app = f"{registry}/{name}/app:latest"
        self.app_repo = f"{registry}/{name}/app"
        extra: dict[str, Any] = {} if rebase else {"dockerStrategy": {"rebase": False}}
        for bc_name, text, out in self._configs(dockerfile(f"{registry}/{self.base}"), app):
            bc = buildconfig(bc_name, text, out, IMAGE_AND_CONFIG)
            bc["spec"]["strategy"].update(extra)
            e2e.create(env.kube, self.ns, bc)
            e2e.wait_until(f"{bc_name}'s first build", lambda n=bc_name: self._complete(f"{n}-1"), RUNS_TIMEOUT, env.ctl.log_tail)
        e2e.create(env.kube, self.ns, deployment("web", "placeholder:1", app))
        e2e.wait_until("the first redeploy", lambda: "@sha256:" in self._image(), RUNS_TIMEOUT, env.ctl.log_tail)
        time.sleep(3)  # the watches record their first sight

    def _configs(self, text: str, app: str) -> list[tuple[str, str, str]]:
        if "\n---\n" not in text:
            return [("app", text, app)]
        builder_text, app_text = text.split("\n---\n")
        return [("builder", builder_text, f"{self.registry}/{self.name}/builder:latest"), ("app", app_text, app)]

    def _complete(self, build: str) -> bool:
        b = self.env.k.get_build(self.ns, build)
        if b is not None and b.status.phase.terminal and b.status.phase.value != "Complete":
            raise BenchError(f"build {self.ns}/{build}: {b.status.phase.value}: {b.status.message}")
        return b is not None and b.status.phase.value == "Complete"

    def _image(self) -> str:
        from tests.cluster.trigger_support import deployment_image

        return deployment_image(self.env.cluster, self.ns, "web")

    def once(self) -> Sample:
        from tests.cluster.trigger_support import push_base

        before = self._image()
        fix = f"fix-{next(self.env.counter)}"
        t0, c0 = time.monotonic(), time.process_time()
        push_base(self.env.tmp, self.registry, self.base, fix=fix)
        deadline = t0 + RUNS_TIMEOUT
        while self._image() == before:
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: the Deployment was not patched within {RUNS_TIMEOUT:.0f}s\n{self.env.ctl.log_tail()}")
            time.sleep(0.05)
        return Sample(time.monotonic() - t0, time.process_time() - c0)


class _Env:
    def __init__(self, cluster: Any, ctl: Any, kube: Any, tmp: Path) -> None:
        from kiln.cluster.kube import Kube

        self.cluster, self.ctl, self.kube, self.tmp = cluster, ctl, kube, tmp
        self.k: Kube = kube
        self.counter = itertools.count()


REBASE_DOCKERFILE = "FROM {busybox} AS build\nRUN echo app > /app\nFROM {base}\nCOPY --link --from=build /app /app\n"
CHAIN_DOCKERFILES = "FROM {base}\nRUN echo built > /built\n---\nFROM {builder} AS b\nFROM {base}\nCOPY --from=b /built /app-built\n"


def run(config: BenchConfig) -> Result:
    from tests.cluster import e2e_support as e2e
    from tests.e2e.cluster_fixtures import start_session_cluster
    from tests.fixtures.images import make_busybox_oci_layout, push_with_skopeo
    from tests.fixtures.registry import Registry, notifications_to

    from kiln.cluster.kube import Kube

    runs = 1 if config.quick else config.runs
    sessions = start_session_cluster()
    cluster = next(sessions)
    try:
        busy_layout = make_busybox_oci_layout(config.workdir / "busybox")
        push_with_skopeo(busy_layout.layout, cluster.registry, "bench/busybox:latest")
        installed = e2e.install(cluster, cluster.image("bench/busybox:latest"))
        ctl = e2e.controller(installed)
        overrides = notifications_to(f"{ctl.trigger_url}/notifications", ctl.notification_token)
        with Registry.plain(config.workdir / "notifying", config_overrides=overrides) as reg:
            env = _Env(cluster, ctl, Kube(cluster.client()), config.workdir)
            busybox = installed.busybox
            rebase_df = lambda base: REBASE_DOCKERFILE.format(busybox=busybox, base=base)  # noqa: E731
            chain_df = lambda base: CHAIN_DOCKERFILES.format(base=base, builder=base.replace("/base:1", "/builder:latest"))  # noqa: E731
            cases = [
                ("rebase", "push a base; the app's final stage only copies onto it: rebase vs full build", (
                    _Loop(env, "rb-kiln", reg.host, rebase_df), _Loop(env, "rb-full", reg.host, rebase_df, rebase=False))),
                ("chain", "push a base; builder then app rebuilt, then the Deployment: notifications vs polling (2 s)", (
                    _Loop(env, "ch-notify", reg.host, chain_df), _Loop(env, "ch-poll", cluster.registry, chain_df))),
            ]  # fmt: skip
            rows = []
            for case, description, (kiln_loop, peer_loop) in cases:
                samples: dict[str, list[Sample]] = {"kiln": [], "peer": []}
                for i in range(runs):
                    order = [("kiln", kiln_loop), ("peer", peer_loop)]
                    for who, loop in order if i % 2 == 0 else reversed(order):
                        s = loop.once()
                        samples[who].append(s)
                        if config.verbose:
                            print(f"  {case:<6} run {i + 1}/{runs} {who:<4} {s.seconds:7.3f} s", flush=True)
                rows.append(Row(case, description, tuple(samples["kiln"]), tuple(samples["peer"])))
    finally:
        e2e.stop_controller()
        next(sessions, None)
    return Result(
        name="triggers",
        title="Security-fix loop: base push to patched Deployment",
        peer="kiln without the shortcut (full build / polling)",
        rows=tuple(rows),
        runs=runs,
        notes=(
            "Dev control plane (etcd, kube-apiserver, kube-controller-manager) and kiln's node agent on 127.0.0.1; build pods run the kiln builder image.",
            "Time from the push of a new base (skopeo) until the Deployment's container image is the new app digest; cpu is this process only.",
            f"Polling interval {e2e.POLL_INTERVAL:.0f} s; notifications from docker-registry (CNCF distribution).",
        ),
    )


BENCHMARK = Benchmark(name="triggers", title="Security-fix loop: base push to patched Deployment", peer="kiln without the shortcut", run=run)
