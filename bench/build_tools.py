"""The builders of the build benchmark, each run as the unprivileged user ``builder``.

Every tool keeps its state (kiln's store; buildah's --root/--runroot, HOME and XDG_RUNTIME_DIR)
in a builder-owned directory of its own that ``reset()`` empties, so a "cold" build really
starts from nothing: the base image is pulled from the loopback registry in every cold run.

* kiln: ``/usr/bin/python3 -m kiln`` on the world-readable copy of src/kiln that
  tests.fixtures.rootless makes, with a bytecode cache (PYTHONPYCACHEPREFIX, builder-owned)
  filled by the warm-up run, as an installed kiln has compiled bytecode.
* buildah: ``buildah bud --layers --isolation chroot`` with ``--storage-driver vfs`` and
  BUILDAH_ISOLATION=chroot: what works rootless here without fuse-overlayfs or a daemon.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tests.fixtures.rootless import Rootless

from bench.harness import BenchError, Command


class Tool(Protocol):
    name: str

    def reset(self) -> None: ...

    def build(self, context: Path, dockerfile: Path) -> Command: ...

    def built_id(self) -> str: ...

    def push(self, dest: str) -> Command: ...

    def before_push(self) -> None: ...

    def version(self) -> str: ...


def builder_dir(rootless: Rootless, path: Path) -> Path:
    """``path`` (made, emptied if it existed) owned by builder, mode 0700."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, mode=0o700)
    subprocess.run(["chown", f"{rootless.uid}:{rootless.gid}", str(path)], check=True)
    return path


def as_builder(rootless: Rootless, argv: list[str], env: Mapping[str, str] | None = None) -> Command:
    return Command(rootless.setpriv_argv(argv), rootless.builder_env(env))


@dataclass
class KilnTool:
    rootless: Rootless
    home: Path
    tag: str = "kiln.bench/app:latest"
    name: str = "kiln"
    extra_args: tuple[str, ...] = ()
    _env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        builder_dir(self.rootless, self.home)
        self.pycache = builder_dir(self.rootless, self.home / "pycache")
        self._env = {
            "KILN_STORE": str(self.store),
            "PYTHONDONTWRITEBYTECODE": "",
            "PYTHONPYCACHEPREFIX": str(self.pycache),
        }

    @property
    def store(self) -> Path:
        return self.home / "store"

    @property
    def iidfile(self) -> Path:
        return self.home / "iid"

    def reset(self) -> None:
        shutil.rmtree(self.store, ignore_errors=True)
        self.iidfile.unlink(missing_ok=True)

    def _kiln(self, *args: str) -> Command:
        return as_builder(self.rootless, self.rootless.kiln_argv(*args), self._env)

    def build(self, context: Path, dockerfile: Path) -> Command:
        self.iidfile.unlink(missing_ok=True)
        return self._kiln(
            "build",
            "--progress",
            "quiet",
            "-t",
            self.tag,
            "-f",
            str(dockerfile),
            "--iidfile",
            str(self.iidfile),
            *self.extra_args,
            str(context),
        )

    def built_id(self) -> str:
        try:
            return self.iidfile.read_text().strip()
        except FileNotFoundError:
            raise BenchError("kiln build wrote no --iidfile") from None

    def before_push(self) -> None:
        # Mount hints from earlier pushes would let kiln skip uploads; the destination is new.
        (self.store / "kiln" / "blob-sources.json").unlink(missing_ok=True)

    def push(self, dest: str) -> Command:
        return self._kiln("push", "--progress", "quiet", self.tag, dest)

    def version(self) -> str:
        return ""

    def layers(self) -> list[dict[str, object]]:
        """The layer descriptors of the last image built (read from the store as root)."""
        digest = self.built_id().removeprefix("sha256:")
        manifest = json.loads((self.store / "blobs" / "sha256" / digest).read_text())
        layers = manifest["layers"]
        assert isinstance(layers, list)
        return layers

    def blob(self, digest: str) -> Path:
        return self.store / "blobs" / "sha256" / digest.removeprefix("sha256:")


@dataclass
class BuildahTool:
    rootless: Rootless
    home: Path
    tag: str = "localhost/bench/app:latest"
    name: str = "buildah"

    def __post_init__(self) -> None:
        builder_dir(self.rootless, self.home)
        self.reset()

    def _dir(self, name: str) -> Path:
        return self.home / name

    def reset(self) -> None:
        for name in ("root", "runroot", "home", "xdg"):
            builder_dir(self.rootless, self._dir(name))
        (self.home / "iid").unlink(missing_ok=True)

    def _buildah(self, *args: str) -> Command:
        argv = [
            "buildah",
            "--root",
            str(self._dir("root")),
            "--runroot",
            str(self._dir("runroot")),
            "--storage-driver",
            "vfs",
            *args,
        ]
        env = {
            "HOME": str(self._dir("home")),
            "XDG_RUNTIME_DIR": str(self._dir("xdg")),
            "BUILDAH_ISOLATION": "chroot",
        }
        return as_builder(self.rootless, argv, env)

    def build(self, context: Path, dockerfile: Path) -> Command:
        (self.home / "iid").unlink(missing_ok=True)
        return self._buildah(
            "bud",
            "--layers",
            "--isolation",
            "chroot",
            "--tls-verify=false",
            "--quiet",
            "-t",
            self.tag,
            "-f",
            str(dockerfile),
            "--iidfile",
            str(self.home / "iid"),
            str(context),
        )

    def built_id(self) -> str:
        try:
            return (self.home / "iid").read_text().strip()
        except FileNotFoundError:
            raise BenchError("buildah bud wrote no --iidfile") from None

    def before_push(self) -> None:
        # containers/image remembers where blobs live (blob info cache) to mount or skip them.
        shutil.rmtree(self._dir("home") / ".local" / "share" / "containers" / "cache", ignore_errors=True)

    def push(self, dest: str) -> Command:
        return self._buildah("push", "--tls-verify=false", "--quiet", self.tag, f"docker://{dest}")

    def version(self) -> str:
        out = subprocess.run(["buildah", "--version"], capture_output=True, text=True, check=False).stdout
        return out.split()[2] if len(out.split()) > 2 else "unknown"
