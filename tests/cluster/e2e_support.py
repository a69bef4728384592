"""Shared by tests/e2e/test_builds.py and test_controller.py: the builder image, kiln installed, the controller.

Session singletons (module-level, so two test modules share one builder image and one controller
process). The controller runs on the host as `kiln controller` with a kubeconfig holding a token
of the `kiln-controller` ServiceAccount, so the RBAC in deploy/rbac.yaml is what it really gets.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kiln.cluster.kube import Kube
from kiln.cluster.models import Build, BuildPhase

REPO = Path(__file__).resolve().parents[2]
WAIT = 420.0  # generous: the VM is shared; a healthy run needs a fraction of it


@dataclass
class Installed:
    builder_image: str
    busybox: str
    admin_kubeconfig: Path
    controller_kubeconfig: Path
    registry: str


_installed: Installed | None = None
_controller: ControllerProcess | None = None


def build_builder_image(registry: str) -> str:
    ref = f"{registry}/kiln/builder:e2e"
    done = subprocess.run([sys.executable, str(REPO / "deploy/builder/build.py"), ref], capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"building the builder image failed:\n{done.stderr[-4000:]}")
    return ref


def install(cluster: Any, busybox: str) -> Installed:
    """CRDs and RBAC applied by `kiln install`'s code (the controller Deployment and registry dry-run only)."""
    global _installed
    if _installed is not None:
        return _installed
    from kiln.cluster.install import install as apply
    from kiln.cluster.manifests import InstallOptions

    admin = Kube(cluster.client())
    builder = build_builder_image(cluster.registry)
    apply(admin, InstallOptions(builder_image=builder, with_registry=False, with_controller=False), say=lambda _t: None)
    apply(admin, InstallOptions(builder_image=builder), say=lambda _t: None, dry_run=True)
    api = cluster.api()
    token = api.create("/api/v1/namespaces/kiln-system/serviceaccounts/kiln-controller/token",
                       {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 86400}})  # fmt: skip
    kubeconfig = Path(tempfile.mkdtemp(prefix="kiln-e2e-controller-")) / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": cluster.server, "certificate-authority": str(cluster.ca_file)}}],
        "users": [{"name": "u", "user": {"token": token["status"]["token"]}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "default"}}],
    }))  # fmt: skip
    _installed = Installed(builder, busybox, cluster.kubeconfig, kubeconfig, cluster.registry)
    return _installed


# The triggers of the e2e controller: fast polling, and a fleet limit the fleet test can observe.
POLL_INTERVAL = 2.0
MAX_TRIGGERED_BUILDS = 4
WATCHDOG_SECONDS = 120.0  # well above any healthy unit of work here, well below the tests' waits
# The supervisor probes /healthz as the controller Deployment's livenessProbe does (deploy/controller.yaml).
PROBE_GRACE, PROBE_PERIOD, PROBE_TIMEOUT, PROBE_FAILURES = 30.0, 20.0, 5.0, 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ControllerProcess:
    """`kiln controller` as a child process, stopped (and restartable) by PID.

    Its trigger endpoint (webhooks, registry notifications) listens on 127.0.0.1:``trigger_port``,
    the same port across restarts; registries notify it with ``notification_token``.

    Like the kubelet under the controller's Deployment, a supervisor thread starts it again when
    it exits without being told to (its watchdog exits a wedged controller, see
    kiln.cluster.watchdog) and kills and restarts it when /healthz fails three probes in a row
    (a process too wedged for its own watchdog); each such restart is kept in
    ``unexpected_exits`` and reported at the end of the session.
    """

    def __init__(self, installed: Installed) -> None:
        self.installed = installed
        self.log_path = Path(tempfile.mkdtemp(prefix="kiln-e2e-controller-log-")) / "controller.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.trigger_port = free_port()
        self.notification_token = secrets.token_hex(16)
        self.unexpected_exits: list[str] = []
        self._lock = threading.RLock()
        self._supervisor: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def trigger_url(self) -> str:
        return f"http://127.0.0.1:{self.trigger_port}"

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.installed.controller_kubeconfig), "KILN_BUILDER_IMAGE": self.installed.builder_image,
               "PYTHONPATH": str(REPO / "src"), "KILN_WEBHOOK_LISTEN": f"127.0.0.1:{self.trigger_port}",
               "KILN_NOTIFICATION_TOKEN": self.notification_token, "KILN_POLL_INTERVAL": str(POLL_INTERVAL),
               "KILN_MAX_TRIGGERED_BUILDS": str(MAX_TRIGGERED_BUILDS), "KILN_MAX_TRIGGERED_BUILDS_PER_NAMESPACE": str(MAX_TRIGGERED_BUILDS),
               "KILN_WATCHDOG_SECONDS": str(WATCHDOG_SECONDS)}  # fmt: skip
        with self._lock:
            log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
            self.proc = subprocess.Popen([sys.executable, "-m", "kiln", "controller"], env=env, stdout=log, stderr=log, start_new_session=True)
            log.close()
            if self._supervisor is None:
                self._stopping.clear()
                self._supervisor = threading.Thread(target=self._supervise, name="e2e-controller-supervisor", daemon=True)
                self._supervisor.start()

    def _supervise(self) -> None:
        failures, next_probe = 0, time.monotonic() + PROBE_GRACE
        while not self._stopping.wait(0.5):
            with self._lock:
                proc = self.proc
                if proc is None:
                    failures, next_probe = 0, time.monotonic() + PROBE_GRACE
                    continue
                if proc.poll() is not None:
                    self._restart(f"exited with {proc.returncode}")
                    failures, next_probe = 0, time.monotonic() + PROBE_GRACE
                    continue
            if time.monotonic() < next_probe:
                continue
            next_probe = time.monotonic() + PROBE_PERIOD
            failures = 0 if self._healthy() else failures + 1
            if failures >= PROBE_FAILURES:  # the Deployment's liveness probe would restart it now
                with self._lock:
                    if self.proc is proc and proc.poll() is None:
                        os.kill(proc.pid, signal.SIGUSR1)  # faulthandler answers even with the GIL held
                        time.sleep(0.5)
                        os.kill(proc.pid, signal.SIGKILL)
                        proc.wait()
                        self._restart(f"failed {PROBE_FAILURES} liveness probes (/healthz)")
                failures, next_probe = 0, time.monotonic() + PROBE_GRACE

    def _healthy(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f"{self.trigger_url}/healthz", timeout=PROBE_TIMEOUT) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def _restart(self, why: str) -> None:
        assert self.proc is not None
        self.unexpected_exits.append(f"{time.strftime('%H:%M:%S')} pid {self.proc.pid} {why}")
        with open(self.log_path, "a") as log:
            log.write(f"=== e2e supervisor: the controller {why}; starting it again ===\n")
        self.start()

    def kill(self) -> None:
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.kill()
            self.proc = None
        if self._supervisor is not None:
            self._supervisor.join(5)
            self._supervisor = None

    def status(self) -> str:
        with self._lock:
            proc = self.proc
        now = "not started" if proc is None else f"pid {proc.pid} " + ("running" if proc.poll() is None else f"exited with {proc.returncode}")
        return f"controller: {now}; unexpected exits: {'; '.join(self.unexpected_exits) or 'none'}"

    def log_tail(self, lines: int = 80) -> str:
        with self._lock:
            proc = self.proc
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGUSR1)  # every thread's stack into the log (see controller.run)
            time.sleep(0.5)
            lines += 150
        try:
            text = "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            text = ""
        return f"{self.status()}\n{text}"


def controller(installed: Installed) -> ControllerProcess:
    global _controller
    if _controller is None:
        _controller = ControllerProcess(installed)
        _controller.start()
    elif _controller.proc is None or _controller.proc.poll() is not None:
        _controller.start()
    return _controller


def stop_controller() -> None:
    global _controller
    if _controller is not None:
        _controller.stop()
        _controller = None


# -- driving builds ---------------------------------------------------------------------------


def _cli_env(installed: Installed) -> dict[str, str]:
    return {**os.environ, "KUBECONFIG": str(installed.admin_kubeconfig), "PYTHONPATH": str(REPO / "src"), "KILN_STORE": str(Path(tempfile.gettempdir()) / "kiln-e2e-cli-store")}


def kiln_cli(installed: Installed, *args: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kiln", *args], env=_cli_env(installed), capture_output=True, text=True, timeout=timeout, check=False)


def kiln_popen(installed: Installed, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "kiln", *args], env=_cli_env(installed), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def create(kube: Kube, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
    obj = json.loads(json.dumps(obj))
    obj["metadata"]["namespace"] = namespace
    return kube.create(obj)


def wait_until(what: str, check: Callable[[], Any], timeout: float = WAIT, diagnose: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{diagnose()}" if diagnose else ""))


def wait_phase(kube: Kube, namespace: str, name: str, phases: set[BuildPhase], ctl: ControllerProcess | None = None,
               timeout: float = WAIT) -> Build:  # fmt: skip
    def check() -> Build | None:
        b = kube.get_build(namespace, name)
        return b if b is not None and b.status.phase in phases else None

    def diagnose() -> str:
        b = kube.get_build(namespace, name)
        return f"build: {b.status if b else None}\ncontroller log:\n{ctl.log_tail() if ctl else ''}"

    result: Build = wait_until(f"build {name} in {sorted(p.value for p in phases)}", check, timeout, diagnose)
    return result
