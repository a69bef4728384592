"""Helpers for tests that run `kiln build` / `kiln run` as the unprivileged builder user."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.rootless import Rootless


@dataclass
class BuilderWorkspace:
    """A builder-owned directory with a store, and a way to run kiln there as builder."""

    rootless: Rootless
    root: Path

    @property
    def store(self) -> Path:
        return self.root / "store"

    def context(self, name: str, files: dict[str, str | bytes], *, busybox: bool = True) -> Path:
        """A build context owned by builder; ``busybox`` adds Debian's static busybox as ./busybox."""
        ctx = self.root / name
        ctx.mkdir(parents=True, exist_ok=True)
        for rel, content in files.items():
            path = ctx / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        if busybox:
            shutil.copy2("/bin/busybox", ctx / "busybox")
        subprocess.run(["chown", "-R", f"{self.rootless.uid}:{self.rootless.gid}", str(ctx)], check=True)
        return ctx

    def kiln(self, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        extra = {"KILN_STORE": str(self.store), **(env or {})}
        return self.rootless.run_as_builder(self.rootless.kiln_argv(*args), cwd=self.root, env=extra, timeout=timeout)

    def build(self, ctx: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.kiln("build", "--progress", "plain", *args, str(ctx), env=env)

    def index(self) -> dict[str, object]:
        result = json.loads((self.store / "index.json").read_text())
        assert isinstance(result, dict)
        return result

    def read_as_root(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()


BUSYBOX_BASE = """\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin && mkdir -p /etc /tmp && echo root:x:0:0:root:/root:/bin/sh > /etc/passwd && echo app:x:1000:1000::/home/app:/bin/sh >> /etc/passwd && echo root:x:0: > /etc/group && echo app:x:1000: >> /etc/group"]
ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin
"""
