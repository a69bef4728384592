"""The status of one container as the node agent tracks it, and its Kubernetes API form."""

from __future__ import annotations

import datetime as dt
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Obj = dict[str, Any]
MAX_TERMINATION_MESSAGE = 4096
FALLBACK_LINES, FALLBACK_BYTES = 80, 2048


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ContainerState:
    name: str
    image: str
    init: bool
    spec: Obj
    image_id: str = ""
    image_digest: str = ""
    state: str = "waiting"  # waiting | running | terminated
    reason: str = "ContainerCreating"
    message: str = ""
    exit_code: int = 0
    signal: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    restart_count: int = 0
    container_id: str = ""
    last_terminated: Obj | None = None
    log_path: Path | None = None  # the current attempt's log
    previous_log: Path | None = None
    attempt_done: bool = True  # no attempt running: `follow` stops at the log's end
    worker: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def waiting(self, reason: str, message: str = "") -> None:
        self.state, self.reason, self.message = "waiting", reason, message

    def running(self, started_at: str) -> None:
        self.state, self.reason, self.message, self.started_at = "running", "", "", started_at
        self.finished_at = None

    def terminated(self, exit_code: int, reason: str, message: str, finished_at: str | None = None,
                   signal: int | None = None) -> None:
        self.state, self.exit_code, self.reason, self.message = "terminated", exit_code, reason, message
        self.signal = signal
        self.finished_at = finished_at or now()
        self.started_at = self.started_at or self.finished_at

    def restart(self) -> None:
        """Keep the finished attempt as lastState and count a restart."""
        self.last_terminated = self._terminated_obj()
        self.restart_count += 1
        self.previous_log = self.log_path
        self.started_at = self.finished_at = None
        self.waiting("ContainerCreating")

    def _terminated_obj(self) -> Obj:
        obj: Obj = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }
        if self.message:
            obj["message"] = self.message
        if self.signal is not None:
            obj["signal"] = self.signal
        if self.container_id:
            obj["containerID"] = self.container_id
        return obj

    @property
    def ready(self) -> bool:
        return self.state == "running"

    def to_api(self) -> Obj:
        if self.state == "running":
            state: Obj = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated":
            state = {"terminated": self._terminated_obj()}
        else:
            waiting: Obj = {"reason": self.reason}
            if self.message:
                waiting["message"] = self.message
            state = {"waiting": waiting}
        obj: Obj = {
            "name": self.name,
            "image": self.image,
            "imageID": self.image_id,
            "ready": self.ready,
            "started": self.state == "running",
            "restartCount": self.restart_count,
            "state": state,
            "lastState": {"terminated": self.last_terminated} if self.last_terminated else {},
        }
        if self.container_id:
            obj["containerID"] = self.container_id
        return obj


def log_content_lines(path: Path) -> list[bytes]:
    """The container's output lines (CRI prefix removed; partial pieces joined)."""
    try:
        raw = path.read_bytes()
    except OSError:
        return []
    lines: list[bytes] = []
    pending = b""
    for record in raw.splitlines(keepends=True):
        parts = record.split(b" ", 3)
        if len(parts) < 4:
            continue
        content = parts[3]
        if parts[2] == b"P":
            pending += content[:-1] if content.endswith(b"\n") else content
            continue
        lines.append(pending + content)
        pending = b""
    if pending:
        lines.append(pending)
    return lines


def termination_message(c: ContainerState, term_file: Path) -> str:
    """terminationMessagePath's content; FallbackToLogsOnError takes the log's tail on failure."""
    try:
        data = term_file.read_bytes()[:MAX_TERMINATION_MESSAGE]
    except OSError:
        data = b""
    policy = c.spec.get("terminationMessagePolicy", "File")
    if not data and policy == "FallbackToLogsOnError" and c.exit_code != 0 and c.log_path is not None:
        tail = b"".join(log_content_lines(c.log_path)[-FALLBACK_LINES:])
        data = tail[-FALLBACK_BYTES:]
    return data.decode(errors="replace")
