"""Helpers for `kiln s2i` tests: small S2I builder images made from busybox, sources, servers."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.cli.buildkit import BUSYBOX_BASE, BuilderWorkspace

#: assemble: copies the source to /opt/app/src, restores deps from /tmp/artifacts, records facts.
ASSEMBLE = """#!/bin/sh
set -e
echo "assemble ($WHO) as $(id -u):$(id -g) in $(pwd)"
mkdir -p /opt/app/deps
if [ -d /tmp/artifacts/deps ]; then
  echo "restored $(ls /tmp/artifacts/deps | wc -l) artifacts"
  cp -R /tmp/artifacts/deps/. /opt/app/deps/
fi
for dep in $(cat /tmp/src/deps.txt 2>/dev/null); do
  [ -f /opt/app/deps/$dep ] || { echo "fetching $dep"; echo "$dep" > /opt/app/deps/$dep; }
done
cp -R /tmp/src/. /opt/app/src
echo "$WHO" > /opt/app/who
echo "${GREETING:-hello}" > /opt/app/greeting
stat -c '%u:%g %n' /tmp/src /tmp/src/index.html > /opt/app/owners 2>/dev/null || true
"""
RUN = "#!/bin/sh\ncat /opt/app/greeting\n"
SAVE_ARTIFACTS = "#!/bin/sh\ncd /opt/app && tar cf - deps\n"
USAGE = "#!/bin/sh\necho \"usage: kiln s2i build SOURCE this-builder TAG ($WHO)\"\n"
ASSEMBLE_RUNTIME = """#!/bin/sh
set -e
echo "assemble-runtime as $(id -u) in $(pwd)"
ls -R . > /srv/listing
echo runtime-ready > /srv/ready
"""


def scripts(who: str, *, save_artifacts: bool = True) -> dict[str, str]:
    files = {"assemble": ASSEMBLE.replace("$WHO", who), "run": RUN, "usage": USAGE.replace("$WHO", who)}
    if save_artifacts:
        files["save-artifacts"] = SAVE_ARTIFACTS
    return files


def builder_dockerfile(*, label: str | None = "image:///usr/libexec/s2i-label", user: str = "1000", extra: str = "") -> str:
    """busybox + the default scripts at /usr/libexec/s2i and other ones at /usr/libexec/s2i-label."""
    text = BUSYBOX_BASE + (
        "RUN mkdir -p /opt/app && chown 1000:1000 /opt/app && chmod 1777 /tmp\n"
        "COPY default/ /usr/libexec/s2i/\n"
        "COPY label/ /usr/libexec/s2i-label/\n"
        "RUN chmod 755 /usr/libexec/s2i/* /usr/libexec/s2i-label/*\n"
        'LABEL io.k8s.display-name="Test builder" io.k8s.description="busybox S2I builder for tests" other=kept\n'
    )
    if label:
        text += f"LABEL io.openshift.s2i.scripts-url={label}\n"
    return text + extra + f"USER {user}\nWORKDIR /opt/app\n"


def builder_context(ws: BuilderWorkspace, name: str, dockerfile: str, *, save_artifacts: bool = True) -> Path:
    files: dict[str, str | bytes] = {"Dockerfile": dockerfile}
    for where in ("default", "label"):
        for script, content in scripts(where, save_artifacts=save_artifacts).items():
            files[f"{where}/{script}"] = content
    return ws.context(name, files)


def build_builder(ws: BuilderWorkspace, name: str, tag: str, dockerfile: str, **kw: bool) -> None:
    ctx = builder_context(ws, name, dockerfile, **kw)
    done = ws.build(ctx, "-t", tag)
    assert done.returncode == 0, done.stderr


def s2i(ws: BuilderWorkspace, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return ws.kiln("s2i", *args, env=env)


def s2i_build(ws: BuilderWorkspace, source: Path | str, builder: str, tag: str, *args: str) -> subprocess.CompletedProcess[str]:
    return s2i(ws, "build", "--progress", "plain", *args, str(source), builder, tag)


def image_config(ws: BuilderWorkspace, ref: str) -> dict[str, object]:
    """The config of a stored image (read as root from the store)."""
    index = ws.index()
    manifests = index["manifests"]
    assert isinstance(manifests, list)
    for m in manifests:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == ref:
            manifest = json.loads((ws.store / "blobs" / "sha256" / m["digest"].removeprefix("sha256:")).read_text())
            blob = ws.store / "blobs" / "sha256" / manifest["config"]["digest"].removeprefix("sha256:")
            config = json.loads(blob.read_text())
            assert isinstance(config, dict)
            return config
    raise AssertionError(f"{ref} is not in the store: {manifests}")


def run_in(ws: BuilderWorkspace, ref: str, *cmd: str) -> str:
    done = ws.kiln("run", ref, *cmd)
    assert done.returncode == 0, done.stderr
    return done.stdout




def git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "Ada Lovelace", "GIT_AUTHOR_EMAIL": "ada@example.com", "GIT_COMMITTER_NAME": "Ada Lovelace",
           "GIT_COMMITTER_EMAIL": "ada@example.com", "HOME": str(repo.parent), "PATH": "/usr/bin:/bin"}  # fmt: skip
    done = subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=repo, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()
