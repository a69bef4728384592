"""A local Kubernetes control plane for kiln's tests and demos: etcd, kube-apiserver,
kube-controller-manager, a loopback registry and kiln's test-only node agent, all on 127.0.0.1.

    python -m dev.cluster up|down|status [--state-dir .kiln-dev]

Everything lives under the state dir (certificates, etcd data, logs, PID files, kubeconfig).
Processes are recorded in ``pids/NAME.pid`` and stopped by that PID. See docs/dev-cluster.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import yaml

from dev import agent_launch, procs, testbin
from dev.kubeapi import ApiError, KubeApi, write_kubeconfig
from dev.pki import Pki, create_pki

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STATE = REPO / ".kiln-dev"
NODE_NAME = "kiln-node-0"
SERVICE_CIDR = "10.0.0.0/24"
REGISTRY_BINARY = "/usr/bin/docker-registry"
# Start order; stop goes the other way.
COMPONENTS = ("registry", "etcd", "kube-apiserver", "kube-controller-manager", "node-agent")


def say(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


@dataclass
class ClusterInfo:
    """What a running dev cluster offers; saved as STATE/cluster.json."""

    state_dir: str
    kubeconfig: str
    server: str
    registry: str  # host:port of the loopback registry (plain HTTP)
    node_name: str
    etcd_url: str
    ca_file: str
    agent_dir: str
    agent_user: str
    kubernetes_version: str = testbin.KUBERNETES_VERSION
    etcd_version: str = testbin.ETCD_VERSION

    @classmethod
    def load(cls, state_dir: Path) -> ClusterInfo:
        return cls(**json.loads((state_dir / "cluster.json").read_text()))


class DevCluster:
    def __init__(self, state_dir: Path = DEFAULT_STATE, *, die_with_parent: bool = False,
                 agent_user: str | None = None) -> None:
        self.state = Path(state_dir).resolve()
        self.die_with_parent = die_with_parent
        self.agent_user = agent_user or agent_launch.default_agent_user()

    # ---- paths -----------------------------------------------------------------------------
    def pid_file(self, name: str) -> Path:
        return self.state / "pids" / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.state / "logs" / f"{name}.log"

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    # ---- status ----------------------------------------------------------------------------
    def running(self) -> dict[str, int | None]:
        return {name: procs.recorded_pid(self.pid_file(name)) for name in COMPONENTS}

    def is_up(self) -> bool:
        return all(pid is not None for pid in self.running().values()) and (self.state / "cluster.json").exists()

    def info(self) -> ClusterInfo:
        return ClusterInfo.load(self.state)

    # ---- up ----------------------------------------------------------------------------------
    def up(self) -> ClusterInfo:
        if self.is_up():
            say(f"already running (state {self.state})")
            return self.info()
        started = time.monotonic()
        self.down(quiet=True)
        bins = testbin.ensure_binaries()
        self._fresh_state()
        pki = create_pki(self.state / "pki")
        try:
            registry = self._start_registry()
            etcd_url = self._start_etcd(bins.etcd)
            server = self._start_apiserver(bins.kube_apiserver, pki, etcd_url)
            write_kubeconfig(self.kubeconfig, server, pki.ca.cert, pki.admin.cert, pki.admin.key)
            self._start_controller_manager(bins.kube_controller_manager, pki, server)
            agent_dir = self._start_agent(pki, server)
            info = ClusterInfo(
                state_dir=str(self.state), kubeconfig=str(self.kubeconfig), server=server, registry=registry,
                node_name=NODE_NAME, etcd_url=etcd_url, ca_file=str(pki.ca.cert), agent_dir=str(agent_dir),
                agent_user=self.agent_user,
            )
            (self.state / "cluster.json").write_text(json.dumps(asdict(info), indent=2) + "\n")
            self._wait_ready(info)
        except BaseException:
            self.down(quiet=True)
            raise
        say(f"up in {time.monotonic() - started:.1f}s: {server}, registry {registry}, node {NODE_NAME}")
        say(f"export KUBECONFIG={self.kubeconfig}")
        return info

    def _fresh_state(self) -> None:
        """Wipe everything but the registry's data and the agent's image store (cheap to keep)."""
        self.state.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state, 0o755)  # the node agent (user builder) must traverse it
        keep = {"registry-data", "agent"}
        for entry in self.state.iterdir():
            if entry.name in keep:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        agent_launch.clean_agent_pods(self.state / "agent")
        for sub in ("pids", "logs"):
            (self.state / sub).mkdir()

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        say(f"starting {name}")
        procs.spawn(argv, pid_file=self.pid_file(name), log_file=self.log_file(name), env=env,
                    cwd=self.state, die_with_parent=self.die_with_parent)

    def _start_registry(self) -> str:
        data = self.state / "registry-data"
        data.mkdir(exist_ok=True)
        for _ in range(5):
            port = procs.free_port()
            config = {
                "version": 0.1,
                "log": {"level": "warn", "formatter": "text"},
                "storage": {"filesystem": {"rootdirectory": str(data)}, "delete": {"enabled": True},
                            "maintenance": {"uploadpurging": {"enabled": False}}},
                "http": {"addr": f"127.0.0.1:{port}", "secret": os.urandom(16).hex()},
            }
            cfg = self.state / "registry.yml"
            cfg.write_text(yaml.safe_dump(config))
            env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
            self._spawn("registry", [REGISTRY_BINARY, "serve", str(cfg)], env)
            try:
                procs.wait_until(lambda port=port: httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code == 200,  # type: ignore[misc]
                                 30, "registry", pid_file=self.pid_file("registry"), log_file=self.log_file("registry"))
            except RuntimeError:
                procs.stop(self.pid_file("registry"))
                continue  # most likely lost the race for the port
            host = f"127.0.0.1:{port}"
            (self.state / "registry").write_text(host + "\n")
            return host
        raise RuntimeError(f"docker-registry did not start; see {self.log_file('registry')}")

    def _start_etcd(self, etcd: Path) -> str:
        for _ in range(5):
            client, peer = procs.free_port(), procs.free_port()
            url = f"http://127.0.0.1:{client}"
            self._spawn("etcd", [
                str(etcd), "--name=kiln-dev", f"--data-dir={self.state / 'etcd-data'}",
                f"--listen-client-urls={url}", f"--advertise-client-urls={url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=kiln-dev=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",  # throwaway data: skip fsync, it dominates small writes on a VM
                "--log-level=warn", "--quota-backend-bytes=2147483648",
            ])
            try:
                procs.wait_until(lambda url=url: httpx.get(f"{url}/health", timeout=2).json().get("health") == "true",  # type: ignore[misc]
                                 60, "etcd", pid_file=self.pid_file("etcd"), log_file=self.log_file("etcd"))
                return url
            except RuntimeError:
                procs.stop(self.pid_file("etcd"))
                shutil.rmtree(self.state / "etcd-data", ignore_errors=True)
        raise RuntimeError(f"etcd did not start; see {self.log_file('etcd')}")

    def _start_apiserver(self, binary: Path, pki: Pki, etcd_url: str) -> str:
        for _ in range(3):
            port = procs.free_port()
            server = f"https://127.0.0.1:{port}"
            self._spawn("kube-apiserver", apiserver_argv(binary, pki, etcd_url, port, self.state))
            started = time.monotonic()
            try:
                procs.wait_until(lambda server=server: _readyz(server, pki), 120, "kube-apiserver",  # type: ignore[misc]
                                 pid_file=self.pid_file("kube-apiserver"), log_file=self.log_file("kube-apiserver"))
                say(f"kube-apiserver ready ({time.monotonic() - started:.1f}s)")
                return server
            except RuntimeError as e:
                last = e
                procs.stop(self.pid_file("kube-apiserver"))
        raise last

    def _start_controller_manager(self, binary: Path, pki: Pki, server: str) -> None:
        kc = self.state / "controller-manager.kubeconfig"
        write_kubeconfig(kc, server, pki.ca.cert, pki.controller_manager.cert, pki.controller_manager.key,
                         user="system:kube-controller-manager", embed=False)
        self._spawn("kube-controller-manager", controller_manager_argv(binary, pki, kc))

    def _start_agent(self, pki: Pki, server: str) -> Path:
        launch = agent_launch.prepare(self.state, self.agent_user, pki, self.kubeconfig)
        self._spawn("node-agent", launch.argv(NODE_NAME, die_with_parent=self.die_with_parent), launch.env)
        return launch.agent_dir

    def _wait_ready(self, info: ClusterInfo) -> None:
        started = time.monotonic()
        with KubeApi(Path(info.kubeconfig)) as api:
            # kube-controller-manager works once it has made the default ServiceAccount and the
            # root CA ConfigMap; the node agent once its Node is Ready.
            procs.wait_until(lambda: api.get_or_none("/api/v1/namespaces/default/serviceaccounts/default") is not None
                             and api.get_or_none("/api/v1/namespaces/default/configmaps/kube-root-ca.crt") is not None,
                             120, "kube-controller-manager", pid_file=self.pid_file("kube-controller-manager"),
                             log_file=self.log_file("kube-controller-manager"))
            say(f"kube-controller-manager ready ({time.monotonic() - started:.1f}s)")
            procs.wait_until(lambda: _node_ready(api, info.node_name), 120, "node agent",
                             pid_file=self.pid_file("node-agent"), log_file=self.log_file("node-agent"))
            say(f"node {info.node_name} ready ({time.monotonic() - started:.1f}s)")

    # ---- down ----------------------------------------------------------------------------
    def down(self, *, quiet: bool = False) -> None:
        stopped = []
        for name in reversed(COMPONENTS):
            if procs.stop(self.pid_file(name), grace=15.0 if name == "node-agent" else 10.0):
                stopped.append(name)
        if not quiet:
            say(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")

    def status(self) -> dict[str, object]:
        result: dict[str, object] = {"state_dir": str(self.state), "processes": self.running()}
        if (self.state / "cluster.json").exists():
            result["cluster"] = asdict(self.info())
        return result


def _readyz(server: str, pki: Pki) -> bool:
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert))
    ctx.load_cert_chain(pki.admin.cert, pki.admin.key)
    return httpx.get(f"{server}/readyz", verify=ctx, timeout=5).status_code == 200


def _node_ready(api: KubeApi, name: str) -> bool:
    try:
        node = api.get(f"/api/v1/nodes/{name}")
    except ApiError:
        return False
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node.get("status", {}).get("conditions", []))


def apiserver_argv(binary: Path, pki: Pki, etcd_url: str, port: int, state: Path) -> list[str]:
    """Flags after controller-runtime's envtest, plus what a node agent and real RBAC need."""
    return [
        str(binary),
        f"--etcd-servers={etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cert-dir={state / 'pki'}",
        f"--tls-cert-file={pki.apiserver.cert}",
        f"--tls-private-key-file={pki.apiserver.key}",
        f"--client-ca-file={pki.ca.cert}",
        # Node+RBAC as kubeadm does: the admin (system:masters) may do everything, every other
        # identity (the controller's ServiceAccount, kube-controller-manager's per-controller
        # accounts) gets exactly what its Roles grant.
        "--authorization-mode=Node,RBAC",
        f"--service-account-issuer=https://127.0.0.1:{port}",
        f"--service-account-key-file={pki.sa_public}",
        f"--service-account-signing-key-file={pki.sa_private}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # No token is auto-mounted into pods (the node agent has no kube-api-access volume);
        # PodSecurity and the other default admission plugins stay on.
        "--disable-admission-plugins=ServiceAccount",
        # The API lets privileged pods through so that PodSecurity admission is what rejects them
        # in namespaces that enforce baseline/restricted.
        "--allow-privileged=true",
        # pods/log, like kubectl logs: the API server calls the node agent's kubelet port.
        "--kubelet-preferred-address-types=InternalIP",
        f"--kubelet-certificate-authority={pki.ca.cert}",
        f"--kubelet-client-certificate={pki.apiserver_kubelet_client.cert}",
        f"--kubelet-client-key={pki.apiserver_kubelet_client.key}",
        # The API server refuses to publish a loopback address in the `kubernetes` Endpoints;
        # nothing here routes Service IPs anyway (pods get KUBERNETES_SERVICE_HOST=127.0.0.1).
        "--endpoint-reconciler-type=none",
        "--profiling=false",
        "--v=1",
    ]


def controller_manager_argv(binary: Path, pki: Pki, kubeconfig: Path) -> list[str]:
    return [
        str(binary),
        f"--kubeconfig={kubeconfig}",
        "--secure-port=0",  # no metrics/health port: nothing to collide with between clusters
        "--leader-elect=false",
        "--controllers=*",  # the cloud controllers skip themselves without a cloud provider
        "--use-service-account-credentials=true",  # each controller acts as its own SA: RBAC as in production
        f"--root-ca-file={pki.ca.cert}",
        f"--service-account-private-key-file={pki.sa_private}",
        f"--cluster-signing-cert-file={pki.ca.cert}",
        f"--cluster-signing-key-file={pki.ca.key}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--cluster-name=kiln-dev",
        "--v=1",
    ]


def build_builder_image(info: ClusterInfo, tag: str = "kiln/builder:dev") -> str | None:
    """Build the kiln builder image with kiln itself and push it to the cluster's registry.

    Uses deploy/builder/build.py when it exists (it also makes the Debian base without Docker
    Hub), else ``kiln build -f deploy/builder/Dockerfile``. Returns the pushed reference, or None
    (with a message) while there is no Dockerfile yet.
    """
    dockerfile = REPO / "deploy" / "builder" / "Dockerfile"
    script = REPO / "deploy" / "builder" / "build.py"
    if not dockerfile.exists():
        say(f"builder image: skipped, {dockerfile.relative_to(REPO)} does not exist yet")
        return None
    ref = f"{info.registry}/{tag}"
    store = Path(info.state_dir) / "builder-store"
    env = dict(os.environ, KILN_STORE=str(store))
    if script.exists():
        argv = [sys.executable, str(script), ref, "--store", str(store)]
    else:
        argv = [sys.executable, "-m", "kiln", "build", "-f", str(dockerfile), "-t", ref, "--push",
                "--progress", "plain", str(REPO)]
    say(f"builder image: {' '.join(Path(a).name if a == sys.executable else a for a in argv)}")
    started = time.monotonic()
    done = subprocess.run(argv, env=env, cwd=REPO, check=False, stdout=sys.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"building the builder image failed (exit {done.returncode})")
    (Path(info.state_dir) / "builder-image").write_text(ref + "\n")
    say(f"builder image: pushed {ref} in {time.monotonic() - started:.0f}s")
    return ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "build-binaries", "builder-image"])
    parser.add_argument("--state-dir", type=Path, default=Path(os.environ.get("KILN_DEV_STATE", DEFAULT_STATE)))
    parser.add_argument("--no-builder-image", action="store_true", help="up: skip building the builder image")
    args = parser.parse_args(argv)
    cluster = DevCluster(args.state_dir)
    try:
        if args.command == "build-binaries":
            testbin.ensure_binaries()
        elif args.command == "up":
            info = cluster.up()
            if not args.no_builder_image:
                try:
                    build_builder_image(info)
                except RuntimeError as e:
                    say(f"{e}; the cluster is up, retry with: python -m dev.cluster builder-image")
        elif args.command == "builder-image":
            if not cluster.is_up():
                say("the cluster is not running: make cluster-up")
                return 1
            build_builder_image(cluster.info())
        elif args.command == "down":
            cluster.down()
        else:
            print(json.dumps(cluster.status(), indent=2))
            return 0 if cluster.is_up() else 3
    except testbin.TestbinUnavailable as e:
        say(f"cannot build the control-plane binaries: {e}")
        return 2
    except RuntimeError as e:
        say(str(e))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
