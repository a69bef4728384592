"""One Pod on the node: volumes, image pulls, init containers in order, containers concurrently,
restart policy, activeDeadlineSeconds, deletion, and the status written back to the API."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dev.kubeapi import ApiError, KubeApi
from dev.node.containers import ContainerState, now, termination_message
from dev.node.images import ImagePuller, PullError, write_pull_auth
from dev.node.podspec import ConfigError, Obj, command_and_args, container_env, run_as
from dev.node.volumes import HostVolume, UnsupportedVolume, VolumeError, container_mounts, prepare_volumes

KILL_GRACE = 20.0


@dataclass
class NodeContext:
    """What every pod runner shares with the agent."""

    api: KubeApi
    node_name: str
    host_ip: str
    state_dir: Path
    puller: ImagePuller
    worker_argv: list[str]  # python -m dev.node.container_run
    worker_env: dict[str, str]
    service_env: dict[str, str]
    log: Callable[[str], None] = field(default=print)

    def lookup(self, kind: str, ns: str, name: str) -> Obj | None:
        return self.api.get_or_none(f"/api/v1/namespaces/{ns}/{kind}/{name}")

    def token(self, ns: str, sa: str, audience: str | None, seconds: int) -> str:
        spec: Obj = {"expirationSeconds": max(seconds, 600)}
        if audience:
            spec["audiences"] = [audience]
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        try:
            result = self.api.create(f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token", body)
        except ApiError as exc:
            raise VolumeError(f"service account token for {ns}/{sa}: {exc.message}") from exc
        return str(result["status"]["token"])


class PodRunner:
    def __init__(self, ctx: NodeContext, pod: Obj) -> None:
        self.ctx = ctx
        self.pod = pod
        meta = pod["metadata"]
        self.ns, self.name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.dir = ctx.state_dir / "pods" / self.uid
        spec = pod["spec"]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.init = [ContainerState(c["name"], c.get("image", ""), True, c) for c in spec.get("initContainers") or []]
        self.main = [ContainerState(c["name"], c.get("image", ""), False, c) for c in spec.get("containers") or []]
        for c in self.main if self.init else []:
            c.waiting("PodInitializing")
        self.lock = threading.RLock()
        self.stopped = threading.Event()
        self.stop_reason: str | None = None
        self.start_time: str | None = None
        self.phase = "Pending"
        self.reason: str | None = None
        self.message: str | None = None
        self.sandbox_ready = False
        self.transitions: dict[str, tuple[str, str]] = {}
        self.finished = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"pod-{self.ns}-{self.name}", daemon=True)

    # ---- public --------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, reason: str) -> None:
        """Kill every container (deletion, deadline, agent shutdown) and end the pod's run."""
        with self.lock:
            if self.stop_reason is None:
                self.stop_reason = reason
            self.stopped.set()
            workers = [c.worker for c in self.init + self.main if c.worker is not None]
        for w in workers:
            _signal(w, signal.SIGTERM)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def container(self, name: str) -> ContainerState | None:
        return next((c for c in self.init + self.main if c.name == name), None)

    # ---- main ------------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            self._run()
        except UnsupportedVolume as exc:
            self._fail("UnsupportedVolume", str(exc))
        except Exception as exc:  # a bug here must not take the agent down; the pod says why
            self.ctx.log(f"pod {self.ns}/{self.name}: {type(exc).__name__}: {exc}")
            self._fail("NodeAgentError", f"{type(exc).__name__}: {exc}")
        finally:
            self._reap_all()
            self.finished.set()

    def _run(self) -> None:
        self.start_time = now()
        self.dir.mkdir(parents=True, exist_ok=True)
        deadline = self.pod["spec"].get("activeDeadlineSeconds")
        timer = None
        if deadline is not None:
            timer = threading.Timer(float(deadline), self.stop, args=("deadline",))
            timer.daemon = True
            timer.start()
        try:
            self._push()
            volumes = self._retry(self._volumes, "volumes")
            if not isinstance(volumes, dict):
                return self._stopped()
            self.sandbox_ready = True
            self._push()
            if not self._retry(self._pull_all, "images"):
                return self._stopped()
            for c in self.init:
                if not self._run_to_completion(c, volumes):
                    return self._stopped() if self.stopped.is_set() else self._finish()
            for c in self.main:
                if c.state == "waiting":
                    c.waiting("ContainerCreating")
            threads = [threading.Thread(target=self._run_to_completion, args=(c, volumes), daemon=True)
                       for c in self.main]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if self.stopped.is_set():
                return self._stopped()
            self._finish()
        finally:
            if timer is not None:
                timer.cancel()

    def _retry(self, step: Callable[[], object], what: str) -> object:
        """Run ``step`` until it succeeds (its result) or the pod is stopped (None)."""
        delay = 1.0
        while not self.stopped.is_set():
            try:
                result = step()
                return result if result is not None else True
            except VolumeError as exc:
                self.message = f"MountVolume.SetUp failed: {exc}"
                self._push()
            except PullError as exc:
                self._push()
                if not exc.retry:
                    self.stopped.wait()
                    return None
                self._mark_pull_backoff()
            if self.stopped.wait(delay):
                return None
            delay = min(delay * 2, 30.0)
        return None

    def _volumes(self) -> dict[str, HostVolume]:
        volumes = prepare_volumes(self.pod, self.dir, self.ctx.state_dir, self.ctx.lookup, self.ctx.token,
                                  self.ctx.host_ip)
        self.message = None
        return volumes

    def _pull_all(self) -> bool:
        auth_dir = None
        names = [s["name"] for s in self.pod["spec"].get("imagePullSecrets") or [] if s.get("name")]
        if names:
            found = [s for s in (self.ctx.lookup("secrets", self.ns, n) for n in names) if s is not None]
            auth_dir = write_pull_auth(self.dir / "pull-auth", found)
        for c in self.init + self.main:
            policy = c.spec.get("imagePullPolicy") or "IfNotPresent"
            try:
                c.image_digest, c.image_id = self.ctx.puller.ensure(c.image, policy, auth_dir)
            except PullError as exc:
                with self.lock:
                    c.waiting(exc.reason, str(exc))
                raise
            with self.lock:
                if c.reason in ("ErrImagePull", "ImagePullBackOff"):
                    c.waiting("PodInitializing" if self.init and not c.init else "ContainerCreating")
        return True

    def _mark_pull_backoff(self) -> None:
        with self.lock:
            for c in self.init + self.main:
                if c.reason == "ErrImagePull":
                    c.reason = "ImagePullBackOff"
        self._push()

    # ---- containers ------------------------------------------------------------------------
    def _run_to_completion(self, c: ContainerState, volumes: dict[str, HostVolume]) -> bool:
        """Run ``c`` with the restart policy; True if it finally succeeded."""
        backoff = 1.0
        while not self.stopped.is_set():
            self._attempt(c, volumes)
            if self.stopped.is_set():
                return False
            if c.state == "waiting":
                # a configuration error found inside (user, runAsNonRoot): the kubelet retries too
                if self.stopped.wait(10):
                    return False
                continue
            failed = c.state != "terminated" or c.exit_code != 0
            restart = (self.restart_policy == "Always" and not c.init) or (self.restart_policy != "Never" and failed)
            if not restart:
                return not failed
            if self.stopped.wait(backoff):
                return False
            backoff = min(backoff * 2, 30.0)
            with self.lock:
                c.restart()
            self._push()
        return False

    def _attempt(self, c: ContainerState, volumes: dict[str, HostVolume]) -> None:
        spec = None
        delay = 1.0
        while spec is None:
            try:
                spec = self._worker_spec(c, volumes)
            except (ConfigError, UnsupportedVolume) as exc:
                with self.lock:
                    c.waiting("CreateContainerConfigError", str(exc))
                self._push()
                if self.stopped.wait(delay):
                    return
                delay = min(delay * 2, 30.0)
        spec_file = self.dir / "specs" / f"{c.name}-{c.restart_count}.json"
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        spec_file.write_text(json.dumps(spec))
        with self.lock:
            if self.stopped.is_set():
                return
            c.container_id = "kiln://" + secrets.token_hex(16)
            c.log_path = Path(spec["log"])
            c.attempt_done = False
            c.worker = subprocess.Popen(
                [*self.ctx.worker_argv, str(spec_file)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                env=self.ctx.worker_env, cwd="/", start_new_session=True,
            )
        self._follow_worker(c, Path(spec["termination_file"]))

    def _follow_worker(self, c: ContainerState, term_file: Path) -> None:
        worker = c.worker
        assert worker is not None and worker.stdout is not None
        ended = False
        for raw in worker.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            kind = event.get("event")
            with self.lock:
                if kind == "started":
                    c.running(now())
                elif kind == "exited":
                    code = int(event["exit_code"])
                    c.terminated(code, "Completed" if code == 0 else "Error", "", signal=event.get("signal"))
                    c.message = termination_message(c, term_file)
                    ended = True
                elif kind == "exec_failed":
                    c.terminated(128, "StartError", str(event.get("message", "")))
                    ended = True
                elif kind == "config_error":
                    c.waiting(str(event.get("reason", "CreateContainerConfigError")), str(event.get("message", "")))
                    ended = True
                elif kind == "error":
                    c.terminated(128, "StartError", f"node agent: {event.get('message', '')}")
                    ended = True
            self._push()
        worker.wait()
        with self.lock:
            if not ended:
                c.terminated(137, "Error", "killed" if self.stopped.is_set() else "the container's process ended unexpectedly")
            c.attempt_done = True
            c.worker = None
        self._push()

    def _worker_spec(self, c: ContainerState, volumes: dict[str, HostVolume]) -> Obj:
        env = container_env(self.pod, c.spec, self.ctx.lookup, host_ip=self.ctx.host_ip, base=self.ctx.service_env)
        entrypoint, command = command_and_args(c.spec, env)
        uid, gid, non_root = run_as(self.pod, c.spec)
        mounts = container_mounts(c.spec, volumes)
        term = self.dir / "termination" / f"{c.name}-{c.restart_count}"
        term.parent.mkdir(parents=True, exist_ok=True)
        term.write_bytes(b"")
        os.chmod(term, 0o666)
        mounts = [*mounts, (str(term), c.spec.get("terminationMessagePath") or "/dev/termination-log", False)]
        log = self.dir / "logs" / c.name / f"{c.restart_count}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.touch()
        hostname = self.pod["spec"].get("hostname") or self.name
        return {
            "store": str(self.ctx.puller.store_dir),
            "image": c.image,
            "image_digest": c.image_digest,
            "command": command,
            "entrypoint": entrypoint,
            "env": env,
            "working_dir": c.spec.get("workingDir") or None,
            "run_as_user": uid,
            "run_as_group": gid,
            "run_as_non_root": non_root,
            "mounts": mounts,
            "hostname": hostname[:63],
            "log": str(log),
            "termination_file": str(term),
        }

    def _reap_all(self) -> None:
        for c in self.init + self.main:
            w = c.worker
            if w is None:
                continue
            try:
                w.wait(KILL_GRACE)
            except subprocess.TimeoutExpired:
                _signal(w, signal.SIGKILL)
                w.wait()

    # ---- endings -----------------------------------------------------------------------------
    def _stopped(self) -> None:
        with self.lock:
            for c in self.init + self.main:
                if c.state == "running":
                    c.terminated(137, "Error", "")
            if self.stop_reason == "deadline":
                self._deadline_exceeded()
        if self.stop_reason in ("deadline", "deleted"):
            self._push()

    def _fail(self, reason: str, message: str) -> None:
        with self.lock:
            self.phase, self.reason, self.message = "Failed", reason, message
        self._push()

    def _finish(self) -> None:
        with self.lock:
            self.phase = self._phase()
        self._push()

    def _phase(self) -> str:
        if any(c.state == "terminated" and c.exit_code != 0 for c in self.init):
            return "Failed"
        if any(c.state != "terminated" for c in self.init):
            return "Pending"
        mains = self.main
        if all(c.state == "terminated" for c in mains):
            return "Succeeded" if all(c.exit_code == 0 for c in mains) else "Failed"
        if any(c.state in ("running", "terminated") for c in mains):
            return "Running"
        return "Pending"

    # ---- status ------------------------------------------------------------------------------
    def _condition(self, kind: str, status: bool, reason: str | None = None) -> Obj:
        value = "True" if status else "False"
        previous = self.transitions.get(kind)
        if previous is None or previous[0] != value:
            self.transitions[kind] = (value, now())
        cond: Obj = {"type": kind, "status": value, "lastProbeTime": None,
                     "lastTransitionTime": self.transitions[kind][1]}
        if reason and not status:
            cond["reason"] = reason
        return cond

    def _deadline_exceeded(self) -> None:
        self.phase, self.reason = "Failed", "DeadlineExceeded"
        self.message = "Pod was active on the node longer than the specified deadline"

    def status(self) -> Obj:
        with self.lock:
            if self.phase not in ("Succeeded", "Failed"):
                if self.stop_reason == "deadline":
                    # as the kubelet: Failed/DeadlineExceeded from the moment the deadline passed,
                    # never a bare Failed reported by a container the deadline killed
                    self._deadline_exceeded()
                else:
                    self.phase = self._phase()
            done = self.phase in ("Succeeded", "Failed")
            inits_done = all(c.state == "terminated" and c.exit_code == 0 for c in self.init)
            ready = not done and all(c.ready for c in self.main)
            not_ready = "PodCompleted" if done else "ContainersNotReady"
            return {
                "phase": self.phase,
                "reason": self.reason,
                "message": self.message,
                "hostIP": self.ctx.host_ip,
                "hostIPs": [{"ip": self.ctx.host_ip}],
                "podIP": self.ctx.host_ip,
                "podIPs": [{"ip": self.ctx.host_ip}],
                "startTime": self.start_time,
                "conditions": [
                    self._condition("PodReadyToStartContainers", self.sandbox_ready),
                    self._condition("Initialized", inits_done, "PodCompleted" if done else "ContainersNotInitialized"),
                    self._condition("Ready", ready, not_ready),
                    self._condition("ContainersReady", ready, not_ready),
                    self._condition("PodScheduled", True),
                ],
                "initContainerStatuses": [c.to_api() for c in self.init] or None,
                "containerStatuses": [c.to_api() for c in self.main],
            }

    def _push(self) -> None:
        with self.lock:
            body = {"metadata": {"uid": self.uid}, "status": self.status()}
            try:
                self.ctx.api.patch(f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status", body)
            except ApiError as exc:
                if exc.status in (404, 409, 422):
                    return  # deleted, or replaced by a new pod of the same name
                self.ctx.log(f"pod {self.ns}/{self.name}: status update failed: {exc}")
            except Exception as exc:
                self.ctx.log(f"pod {self.ns}/{self.name}: status update failed: {exc}")


def _signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        proc.send_signal(sig)
    except ProcessLookupError:
        pass

