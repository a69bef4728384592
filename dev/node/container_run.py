"""One container run, in its own process: ``python -m dev.node.container_run SPEC.json``.

The node agent starts one of these per container attempt. It enters kiln's user namespace
(rootless: uid 0 inside, the subordinate ids mapped), unpacks the image's snapshots, and runs the
container through ``kiln.runtime.container.run_container`` (kiln's sandbox). Output lines go to the
log file in the CRI log format (``TIMESTAMP stdout F|P LINE``). Progress is reported to the agent
as JSON lines on stdout: ``{"event": "started"}``, then ``exited`` / ``exec_failed`` /
``config_error`` / ``error``.

SIGTERM (the agent killing the pod) raises SystemExit inside ``run``, which kills the whole
sandbox, waits until it is gone and removes its writable layer before this process exits.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, BinaryIO


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class CriLog:
    """Writes output lines as ``<RFC3339Nano> stdout F <line>`` (P for a partial line)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream

    def __call__(self, data: bytes) -> None:
        tag = b"F" if data.endswith(b"\n") else b"P"
        line = data if data.endswith(b"\n") else data + b"\n"
        self.stream.write(now_rfc3339().encode() + b" stdout " + tag + b" " + line)
        self.stream.flush()


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run(spec: dict[str, Any]) -> None:
    from dev.node.podspec import non_root_violation, user_spec
    from kiln.build.image import load_image
    from kiln.build.overlay import enter_private_mount_namespace
    from kiln.build.snapshots import Snapshots
    from kiln.errors import KilnError
    from kiln.oci.models import Platform
    from kiln.oci.store import Store
    from kiln.runtime.container import RunSpec, run_container
    from kiln.sandbox.spec import ExecFailedError, Mount
    from kiln.sandbox.userns import ensure_userns

    ensure_userns()  # re-executes this module as uid 0 of kiln's user namespace when unprivileged
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    enter_private_mount_namespace()
    store = Store(Path(spec["store"]))
    try:
        image = load_image(store, store.resolve(spec["image_digest"]), Platform(), what=spec["image"])
    except KilnError as exc:
        _emit("config_error", reason="CreateContainerConfigError", message=f"image {spec['image']}: {exc}")
        return
    image_user = image.config.config.user or ""
    if spec["run_as_non_root"]:
        violation = non_root_violation(image_user, spec["run_as_user"])
        if violation:
            _emit("config_error", reason="CreateContainerConfigError", message=violation)
            return
    snapshots = Snapshots(store)
    snapshots.ensure(image.layers)  # unpacking is not part of the container's run time
    mounts = [Mount("bind", target, source, readonly=ro) for source, target, ro in spec["mounts"]]
    run_spec = RunSpec(
        command=spec["command"],
        entrypoint=spec["entrypoint"],
        env=spec["env"],
        user=user_spec(image_user, spec["run_as_user"], spec["run_as_group"]),
        workdir=spec["working_dir"],
        volumes=mounts,
        network="host",
        hostname=spec["hostname"],
        remove=True,
    )
    with open(spec["log"], "ab") as log:
        run_spec.on_output = CriLog(log)
        _emit("started", at=now_rfc3339())
        try:
            outcome = run_container(snapshots, image, run_spec)
        except ExecFailedError as exc:
            log.write(f"{now_rfc3339()} stdout F {exc}\n".encode())
            _emit("exec_failed", at=now_rfc3339(), message=str(exc), exit_code=128)
            return
        except KilnError as exc:  # e.g. an unknown USER: the container could not be created
            _emit("config_error", reason="CreateContainerError", message=str(exc))
            return
    result = outcome.result
    _emit("exited", at=now_rfc3339(), exit_code=result.exit_code, signal=result.signal)


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    try:
        run(spec)
    except SystemExit:
        raise
    except BaseException as exc:
        traceback.print_exc()
        _emit("error", message=f"{type(exc).__name__}: {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
