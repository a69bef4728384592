"""Where a strategy runs: the store, a scratch workspace, registry settings and mounted inputs.

The same object describes a build pod (inputs mounted by the pod template under ``/var/run/kiln``)
and a local ``kiln build --config`` (inputs taken from ``--inputs-dir``, or missing).
"""

from __future__ import annotations

import io
import json
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from kiln.build.log import PlainBuildLog
from kiln.oci.store import Store
from kiln.registry.options import RegistryOptions

# Paths inside the build pod (kept here: the pod template and the in-pod code must agree).
POD_INPUTS = Path("/var/run/kiln")
POD_WORKSPACE = Path("/workspace")
POD_STORE = Path("/var/lib/kiln")

SNIPPET_LINES = 20


class TailStream(io.TextIOBase):
    """Passes log text through to ``out`` and keeps the last lines for the Build's logSnippet."""

    def __init__(self, out: TextIO, lines: int = SNIPPET_LINES) -> None:
        self._out = out
        self._tail: deque[str] = deque(maxlen=lines)
        self._partial = ""

    def write(self, text: str) -> int:
        self._out.write(text)
        *done, self._partial = (self._partial + text).split("\n")
        self._tail.extend(done)
        return len(text)

    def flush(self) -> None:
        self._out.flush()

    def tail(self) -> str:
        return "\n".join([*self._tail, self._partial] if self._partial else self._tail)


@dataclass
class BuildEnvironment:
    store: Store
    workspace: Path  # scratch, owned by this build: source/, output/, pipeline workspace
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    push: bool = False
    source_dir: Path | None = None  # given source: skips git clone / binary download
    inputs_dir: Path | None = None  # <dir>/secrets/<name>, <dir>/configmaps/<name>, <dir>/source-secret, <dir>/push
    build_json: str = "{}"  # the Build object, for the Custom strategy's BUILD variable
    quiet: bool = False
    stream: TailStream = field(default_factory=lambda: TailStream(sys.stderr))

    def __post_init__(self) -> None:
        self.log = PlainBuildLog(self.stream, quiet=self.quiet)  # type: ignore[arg-type]

    def input_dir(self, *parts: str) -> Path | None:
        if self.inputs_dir is None:
            return None
        path = self.inputs_dir.joinpath(*parts)
        return path if path.exists() else None

    @property
    def push_config_dir(self) -> Path | None:
        """A directory with a Docker config.json (the pushSecret)."""
        return self.input_dir("push")

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.stream, flush=True)


def build_object_json(kind: str, metadata: dict[str, object], spec: dict[str, object]) -> str:
    return json.dumps({"apiVersion": "kiln.dev/v1alpha1", "kind": kind, "metadata": metadata, "spec": spec}, separators=(",", ":"))
