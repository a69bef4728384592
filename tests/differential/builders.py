"""The two builders under comparison, both run rootless as ``builder``: buildah (the judge) and kiln.

One buildah storage root and one kiln store serve the whole session, so the base image is pulled
once by each and both builders' layer caches are exercised across cases (a wrong cache hit would
show up as a difference too).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.registry import Registry
from tests.fixtures.rootless import Rootless

BUILD_TIMEOUT = 240


class BuildFailed(AssertionError):
    def __init__(self, who: str, result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(f"{who} build failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
        self.result = result


def _manifest_format(fmt: str) -> list[str]:
    return ["-f", "v2s2"] if fmt == "docker" else ["-f", "oci"]


@dataclass(frozen=True)
class Buildah:
    """buildah 1.28 with vfs storage and chroot isolation in builder-owned directories."""

    rootless: Rootless
    base: Path

    @classmethod
    def create(cls, rootless: Rootless) -> Buildah:
        base = rootless.builder_tmpdir("buildah-")
        for name in ("root", "runroot", "home", "xdg"):
            (base / name).mkdir(mode=0o700)
            subprocess.run(["chown", f"{rootless.uid}:{rootless.gid}", str(base / name)], check=True)
        return cls(rootless, base)

    def _run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        argv = [
            "buildah",
            "--root", str(self.base / "root"),
            "--runroot", str(self.base / "runroot"),
            "--storage-driver", "vfs",
            *args,
        ]
        env = {
            "HOME": str(self.base / "home"),
            "XDG_RUNTIME_DIR": str(self.base / "xdg"),
            "BUILDAH_ISOLATION": "chroot",
        }
        return self.rootless.run_as_builder(argv, cwd=cwd or self.base, env=env, timeout=BUILD_TIMEOUT)

    def build(self, context: Path, dockerfile: Path, out: Path, *, fmt: str, args: list[str]) -> str:
        """Build, export to the OCI layout ``out`` (tag ``latest``); return the image id."""
        iidfile = out.with_name(out.name + ".iid")
        built = self._run(
            "build", "--isolation", "chroot", "--layers", "--tls-verify=false", "--format", fmt,
            "--iidfile", str(iidfile), "-f", str(dockerfile), *args, str(context),
            cwd=context.parent,
        )
        if built.returncode != 0:
            raise BuildFailed("buildah", built)
        image = iidfile.read_text().strip()
        # A Docker-format image must stay one: pushed to an OCI layout it would be converted, and
        # the OCI config has no Healthcheck, Shell or OnBuild.
        pushed = self._run("push", "--tls-verify=false", *_manifest_format(fmt), image, f"oci:{out}:latest")
        if pushed.returncode != 0:
            raise BuildFailed("buildah push", pushed)
        return image

    def push(self, image: str, ref: str, *, fmt: str) -> None:
        """Push a built image to a (loopback, plain HTTP) registry."""
        pushed = self._run("push", "--tls-verify=false", *_manifest_format(fmt), image, f"docker://{ref}")
        if pushed.returncode != 0:
            raise BuildFailed("buildah push", pushed)


@dataclass(frozen=True)
class Kiln:
    """``kiln build`` with one store for the session."""

    rootless: Rootless
    store: Path

    @classmethod
    def create(cls, rootless: Rootless) -> Kiln:
        return cls(rootless, rootless.builder_tmpdir("kiln-store-") / "store")

    def build(self, context: Path, dockerfile: Path, out: Path, *, fmt: str, args: list[str]) -> str:
        """Build, export to the OCI layout ``out`` (tag ``latest``); return the manifest digest."""
        argv = self.rootless.kiln_argv(
            "build", "--progress", "plain", "--format", fmt, "-f", str(dockerfile),
            "--output", f"type=oci,dest={out},name=latest", *args, str(context),
        )
        done = self.rootless.run_as_builder(
            argv, cwd=context.parent, env={"KILN_STORE": str(self.store)}, timeout=BUILD_TIMEOUT
        )
        if done.returncode != 0:
            raise BuildFailed("kiln", done)
        return done.stdout.strip().splitlines()[-1]


@dataclass(frozen=True)
class DiffEnv:
    """What a case needs from the session. ``values`` fill the {placeholders} of Dockerfiles and args."""

    rootless: Rootless
    registry: Registry
    buildah: Buildah
    kiln: Kiln
    values: dict[str, str]

    def workdir(self, name: str) -> Path:
        return self.rootless.builder_tmpdir(f"diff-{name}-")
