"""kiln's node agent — TEST AND DEV ONLY, not a kubelet and never shipped.

    python -m dev.node_agent --kubeconfig KC --state-dir DIR --tls-cert C --tls-key K --client-ca CA

It registers one Node, keeps it Ready (Lease + status heartbeats), binds the Pods nobody
scheduled (there is no kube-scheduler) to it, and runs every Pod bound to it: images pulled by
kiln's registry client into the agent's kiln store, each container run in its own image in
kiln's sandbox (rootless when the agent runs unprivileged, as `make cluster-up` starts it), status
written back to the API, logs served on a kubelet-compatible HTTPS port for ``pods/log``.
Scope and limits: docs/dev-cluster.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import signal
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from dev.kubeapi import ApiError, KubeApi, Obj
from dev.node.containers import ContainerState
from dev.node.images import ImagePuller
from dev.node.kubelet_server import KubeletServer
from dev.node.pod import NodeContext, PodRunner

HEARTBEAT = 10.0
HOST_IP = "127.0.0.1"
AGENT_VERSION = "v1.37.2-kiln-node-agent"


def log(msg: str) -> None:
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    print(f"{stamp} node-agent: {msg}", file=sys.stderr, flush=True)


def _rfc3339(micro: bool = False) -> str:
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ"
    return dt.datetime.now(dt.UTC).strftime(fmt)


def _memory_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1])
    return 4 << 20


class NodeAgent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.node_name: str = args.node_name
        self.state_dir = Path(args.state_dir).resolve()
        self.api = KubeApi(Path(args.kubeconfig))
        self.labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.kiln.dev/agent": "true",
        }
        for item in args.node_label or []:
            k, _, v = item.partition("=")
            self.labels[k] = v
        self.runners: dict[str, PodRunner] = {}  # by pod uid
        self.by_name: dict[tuple[str, str], PodRunner] = {}
        self.terminating: set[str] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        port = urlsplit(self.api.server).port or 443
        puller = ImagePuller(self.state_dir / "store")
        worker_env = dict(os.environ)
        self.ctx = NodeContext(
            api=self.api, node_name=self.node_name, host_ip=HOST_IP, state_dir=self.state_dir, puller=puller,
            worker_argv=[sys.executable, "-m", "dev.node.container_run"], worker_env=worker_env,
            service_env={
                "KUBERNETES_SERVICE_HOST": HOST_IP,
                "KUBERNETES_SERVICE_PORT": str(port),
                "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
                "KUBERNETES_PORT": f"tcp://{HOST_IP}:{port}",
            },
            log=log,
        )
        self.server = KubeletServer(self._find, Path(args.tls_cert), Path(args.tls_key), Path(args.client_ca))

    # ---- node --------------------------------------------------------------------------------
    def _node_status(self) -> Obj:
        cpu = str(os.cpu_count() or 1)
        mem = f"{_memory_kib()}Ki"
        resources = {"cpu": cpu, "memory": mem, "pods": "110", "ephemeral-storage": "100Gi"}
        beat = _rfc3339()
        conditions = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                {"type": t, "status": s, "reason": r, "message": f"kiln node agent: {r}",
                 "lastHeartbeatTime": beat, "lastTransitionTime": self.started}
                for t, s, r in conditions
            ],
            "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": self.node_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.server.port}},
            "nodeInfo": {
                "machineID": "kiln", "systemUUID": "kiln", "bootID": "kiln",
                "kernelVersion": platform.release(), "osImage": "kiln node agent (test only)",
                "containerRuntimeVersion": "kiln://0.1.0", "kubeletVersion": AGENT_VERSION,
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            },
        }

    def register(self) -> None:
        self.started = _rfc3339()
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node_name, "labels": self.labels}}
        try:
            self.api.create("/api/v1/nodes", body)
            log(f"registered node {self.node_name}")
        except ApiError as exc:
            if exc.status != 409:
                raise
            self.api.patch(f"/api/v1/nodes/{self.node_name}", {"metadata": {"labels": self.labels}})
        self.heartbeat()

    def heartbeat(self) -> None:
        self.api.patch(f"/api/v1/nodes/{self.node_name}/status", {"status": self._node_status()})
        lease_path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        spec = {"holderIdentity": self.node_name, "leaseDurationSeconds": 40, "renewTime": _rfc3339(micro=True)}
        if self.api.get_or_none(lease_path) is None:
            self.api.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.node_name, "namespace": "kube-node-lease"}, "spec": spec,
            })
        else:
            self.api.patch(lease_path, {"spec": spec})

    def _heartbeats(self) -> None:
        while not self.stopping.wait(HEARTBEAT):
            try:
                self.heartbeat()
            except Exception as exc:
                log(f"heartbeat failed: {exc}")

    # ---- pods --------------------------------------------------------------------------------
    def _find(self, ns: str, pod: str, container: str) -> tuple[ContainerState | None, str]:
        with self.lock:
            runner = self.by_name.get((ns, pod))
        if runner is None:
            return None, f'pod "{pod}" in namespace "{ns}" is not running on node {self.node_name}'
        c = runner.container(container)
        if c is None:
            return None, f'container "{container}" is not valid for pod "{pod}"'
        return c, ""

    def _selector_matches(self, pod: Obj) -> bool:
        selector = pod["spec"].get("nodeSelector") or {}
        return all(self.labels.get(k) == v for k, v in selector.items())

    def handle(self, kind: str, pod: Obj) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        if kind == "DELETED":
            self._forget(uid, kill=True)
            return
        node = spec.get("nodeName")
        if not node:
            if not meta.get("deletionTimestamp") and not spec.get("schedulingGates") and self._selector_matches(pod):
                self._bind(pod)
            return
        if node != self.node_name:
            return
        with self.lock:
            runner = self.runners.get(uid)
        if meta.get("deletionTimestamp"):
            with self.lock:
                if uid in self.terminating:
                    return
                self.terminating.add(uid)
            threading.Thread(target=self._terminate, args=(pod, runner), daemon=True).start()
            return
        phase = (pod.get("status") or {}).get("phase")
        if runner is None and phase not in ("Succeeded", "Failed"):
            runner = PodRunner(self.ctx, pod)
            with self.lock:
                old = self.by_name.get((meta["namespace"], meta["name"]))
                self.runners[uid] = runner
                self.by_name[(meta["namespace"], meta["name"])] = runner
            if old is not None and old.uid != uid:
                old.stop("deleted")
            log(f"starting pod {meta['namespace']}/{meta['name']}")
            runner.start()

    def _bind(self, pod: Obj) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        try:
            self.api.create(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", body)
            log(f"bound {meta['namespace']}/{meta['name']} to {self.node_name}")
        except ApiError as exc:
            if exc.status not in (404, 409):
                log(f"binding {meta['namespace']}/{meta['name']} failed: {exc}")

    def _terminate(self, pod: Obj, runner: PodRunner | None) -> None:
        """Graceful deletion: kill the containers, then confirm with a grace-period-0 delete."""
        meta = pod["metadata"]
        if runner is not None:
            runner.stop("deleted")
            runner.finished.wait(60)
        body = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                "preconditions": {"uid": meta["uid"]}}
        try:
            self.api.delete(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", body)
        except ApiError as exc:
            if exc.status not in (404, 409):
                log(f"deleting {meta['namespace']}/{meta['name']} failed: {exc}")

    def _forget(self, uid: str, *, kill: bool) -> None:
        with self.lock:
            runner = self.runners.pop(uid, None)
            if runner is not None and self.by_name.get((runner.ns, runner.name)) is runner:
                del self.by_name[(runner.ns, runner.name)]
        if runner is None:
            return
        if kill:
            runner.stop("deleted")
        threading.Thread(target=self._cleanup, args=(runner,), daemon=True).start()

    def _cleanup(self, runner: PodRunner) -> None:
        runner.finished.wait(120)
        from kiln.sandbox.userns import run_in_userns

        # files written by containers belong to subordinate ids: remove them as root of the namespace
        if os.geteuid() == 0:
            import shutil

            shutil.rmtree(runner.dir, ignore_errors=True)
        elif runner.dir.exists():
            run_in_userns(["rm", "-rf", "--", str(runner.dir)])

    def watch_pods(self) -> None:
        while not self.stopping.is_set():
            try:
                listing = self.api.get("/api/v1/pods")
                seen = set()
                for pod in listing.get("items", []):
                    seen.add(pod["metadata"]["uid"])
                    self.handle("ADDED", pod)
                with self.lock:
                    gone = [uid for uid in self.runners if uid not in seen]
                for uid in gone:
                    self._forget(uid, kill=True)
                rv = listing["metadata"]["resourceVersion"]
                while not self.stopping.is_set():
                    for event in self.api.watch("/api/v1/pods", rv, timeout_seconds=60):
                        kind, obj = event["type"], event["object"]
                        if kind == "ERROR":
                            raise ApiError(int(obj.get("code", 500)), str(obj.get("message")), "watch")
                        rv = obj["metadata"]["resourceVersion"]
                        if kind != "BOOKMARK":
                            self.handle(kind, obj)
            except ApiError as exc:
                if exc.status != 410:
                    log(f"pod watch: {exc}")
                    self.stopping.wait(1)
            except Exception as exc:
                if self.stopping.is_set():
                    return
                log(f"pod watch: {type(exc).__name__}: {exc}")
                self.stopping.wait(1)

    # ---- lifecycle ---------------------------------------------------------------------------
    def run(self) -> None:
        self.server.start()
        log(f"kubelet endpoint https://{HOST_IP}:{self.server.port} (logs); state {self.state_dir}; uid {os.geteuid()}")
        self.register()
        threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True).start()
        watcher = threading.Thread(target=self.watch_pods, name="pod-watch", daemon=True)
        watcher.start()
        self.stopping.wait()
        self.shutdown()

    def shutdown(self) -> None:
        log("stopping: killing running containers")
        with self.lock:
            runners = list(self.runners.values())
        for r in runners:
            r.stop("agent-shutdown")
        for r in runners:
            r.finished.wait(30)
        self.server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dev.node_agent", description="kiln's test-only node agent")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--node-name", default="kiln-node-0")
    parser.add_argument("--node-label", action="append", metavar="K=V")
    parser.add_argument("--tls-cert", required=True)
    parser.add_argument("--tls-key", required=True)
    parser.add_argument("--client-ca", required=True)
    args = parser.parse_args(argv)
    Path(args.state_dir).mkdir(parents=True, exist_ok=True)
    agent = NodeAgent(args)
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stopping.set())
    agent.run()
    time.sleep(0.1)


if __name__ == "__main__":
    main()
