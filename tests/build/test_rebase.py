"""`kiln rebase` against a real registry, judged by a full rebuild unpacked with umoci.

The scenario: base:1 (busybox) is pushed, the app is built FROM it by kiln and pushed, then
base:1 is rebuilt with a changed file (a "security fix") and pushed to the same tag. The app
is rebased onto it and, independently, rebuilt from scratch on it; both are unpacked by umoci
and must hold the same files, entry for entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kiln.build.annotations import BASE_DIGEST, BASE_NAME, REBASABLE
from kiln.build.rebase import RebaseRefused, rebase_image
from kiln.frontend.dockerfile.compile import compile_dockerfile
from kiln.oci.models import ContainerConfig, ImageConfig, Platform
from kiln.registry.options import RegistryOptions
from tests.cli.buildkit import BUSYBOX_BASE, BuilderWorkspace
from tests.fixtures.registry import Registry
from tests.fixtures.rootless import Rootless

OPTIONS = RegistryOptions()
ACCEPT = "application/vnd.oci.image.manifest.v1+json"

APP_DOCKERFILE = """\
FROM {base}
COPY --link --chown=1000:1000 app/ /app/
COPY --link --chmod=755 run.sh /usr/local/bin/run
ENV APP_MODE=prod
CMD ["/usr/local/bin/run"]
"""


@dataclass
class Scenario:
    ws: BuilderWorkspace
    registry: Registry
    base: str  # host/repo:1
    app: str  # host/repo:1, rebased in place by the test that owns it
    app_ctx: Path
    base1: str  # manifest digests
    base2: str
    app_before: str


def _name(what: str) -> str:
    return f"t/rebase-{what}-{uuid.uuid4().hex[:8]}"


def _digest(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def _base_context(ws: BuilderWorkspace, version: str) -> Path:
    dockerfile = BUSYBOX_BASE + "COPY version /etc/base-version\n"
    return ws.context(f"base-{version}", {"Dockerfile": dockerfile, "version": f"security level {version}\n"})


def _app_context(ws: BuilderWorkspace, name: str, dockerfile: str) -> Path:
    ctx = ws.context(name, {
        "Dockerfile": dockerfile,
        "app/data.txt": "payload\n",
        "app/sub/nested.txt": "nested\n",
        "app/tool": "#!/bin/sh\necho tool\n",
        "run.sh": "#!/bin/sh\ncat /app/data.txt\n",
    }, busybox=False)
    (ctx / "app/tool").chmod(0o750)
    (ctx / "app/current").symlink_to("data.txt")
    os.lchown(ctx / "app/current", ws.rootless.uid, ws.rootless.gid)
    return ctx


def _manifest(registry: Registry, repo_ref: str) -> dict[str, object]:
    repo, _, ref = repo_ref.partition(":")
    resp = httpx.get(f"{registry.url}/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT})
    resp.raise_for_status()
    result = json.loads(resp.content)
    assert isinstance(result, dict)
    return result


def _config(registry: Registry, repo: str, manifest: dict[str, object]) -> dict[str, object]:
    desc = manifest["config"]
    assert isinstance(desc, dict)
    resp = httpx.get(f"{registry.url}/v2/{repo}/blobs/{desc['digest']}")
    resp.raise_for_status()
    result = json.loads(resp.content)
    assert isinstance(result, dict)
    return result


def _steps(config: dict[str, object]) -> list[object]:
    history = config["history"]
    assert isinstance(history, list)
    return [h.get("created_by") for h in history]


def _annotations(registry: Registry, ref: str) -> dict[str, str]:
    notes = _manifest(registry, ref.removeprefix(registry.host + "/")).get("annotations") or {}
    assert isinstance(notes, dict)
    return notes


@pytest.fixture(scope="module")
def scenario(rootless: Rootless, registry: Registry) -> Iterator[Scenario]:
    ws = BuilderWorkspace(rootless, rootless.builder_tmpdir("rebase-"))
    base = f"{registry.host}/{_name('base')}:1"
    app = f"{registry.host}/{_name('app')}:1"
    base1 = _digest(ws.build(_base_context(ws, "1"), "-t", base, "--push"))
    app_ctx = _app_context(ws, "app", APP_DOCKERFILE.format(base=base))
    app_before = _digest(ws.build(app_ctx, "-t", app, "--push"))
    base2 = _digest(ws.build(_base_context(ws, "2"), "-t", base, "--push"))
    assert base1 != base2
    yield Scenario(ws, registry, base, app, app_ctx, base1, base2, app_before)


# -- the tree comparison -----------------------------------------------------------------------


def _unpack(registry: Registry, ref: str, where: Path) -> Path:
    """skopeo copies the image to an OCI layout and umoci (not kiln) unpacks it, as root."""
    layout = where / "layout"
    where.mkdir(parents=True)
    bundle = where / "bundle"
    for argv in (
        ["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{layout}:img"],
        ["umoci", "unpack", "--image", f"{layout}:img", str(bundle)],
    ):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{argv[0]}: {proc.stderr}"
    return bundle / "rootfs"


def _tree(root: Path) -> dict[str, tuple[object, ...]]:
    """path -> (type, mode, uid, gid, size, content sha256 or link target) for every entry."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            st = os.lstat(path)
            what: object = None
            if stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            out[str(path.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_size if not stat.S_ISDIR(st.st_mode) else 0, what)
    return out


_PUT_BLOB = re.compile(r'"PUT /v2/(?P<repo>\S+)/blobs/uploads/\S*digest=sha256%3A(?P<hex>[0-9a-f]{64})')


def _uploaded(registry: Registry, repo: str, since: int) -> set[str]:
    """Blobs whose bytes were uploaded (an upload completed by PUT) to ``repo``, from the
    registry's own access log; a mount or an existing blob completes no upload."""
    text = registry.log_file.read_bytes()[since:].decode(errors="replace")
    return {f"sha256:{m['hex']}" for m in _PUT_BLOB.finditer(text) if m["repo"] == repo}


# -- tests ---------------------------------------------------------------------------------------


def test_build_annotates_base_and_marks_linked_copies_rebasable(scenario: Scenario) -> None:
    notes = _annotations(scenario.registry, scenario.app)
    assert notes == {BASE_NAME: scenario.base, BASE_DIGEST: scenario.base1, REBASABLE: "true"}


def test_rebase_equals_full_rebuild_and_uploads_only_the_config(scenario: Scenario, tmp_path: Path) -> None:
    reg = scenario.registry
    app_repo = scenario.app.removeprefix(reg.host + "/").partition(":")[0]
    log_at = reg.log_file.stat().st_size
    lines: list[str] = []
    result = rebase_image(scenario.app, options=OPTIONS, report=lines.append)
    assert (result.old_base_digest, result.new_base_digest) == (scenario.base1, scenario.base2)
    assert result.reused_layers == 2 and result.reference == f"{scenario.app}@{result.digest}"
    assert lines and scenario.base1 in lines[0]

    rebased = _manifest(reg, f"{app_repo}:1")
    config_desc = rebased["config"]
    assert isinstance(config_desc, dict)
    # The app's layers were already there and the new base layer was mounted: only the config moved.
    assert _uploaded(reg, app_repo, log_at) == {config_desc["digest"]}
    assert rebased["annotations"] == {BASE_NAME: scenario.base, BASE_DIGEST: scenario.base2, REBASABLE: "true"}

    rebuilt_ref = f"{reg.host}/{app_repo}:rebuilt"
    _digest(scenario.ws.build(scenario.app_ctx, "-t", rebuilt_ref, "--push", "--pull", "always"))
    rebuilt = _manifest(reg, f"{app_repo}:rebuilt")
    rebased_cfg, rebuilt_cfg = _config(reg, app_repo, rebased), _config(reg, app_repo, rebuilt)
    assert rebased_cfg["rootfs"] == rebuilt_cfg["rootfs"]  # kiln's layers are deterministic
    assert rebased_cfg["config"] == rebuilt_cfg["config"]
    assert _steps(rebased_cfg) == _steps(rebuilt_cfg)

    one, two = _tree(_unpack(reg, scenario.app, tmp_path / "rebased")), _tree(_unpack(reg, rebuilt_ref, tmp_path / "rebuilt"))
    assert one == two
    assert one["etc/base-version"][5] == hashlib.sha256(b"security level 2\n").hexdigest()
    assert one["app/current"][0] == stat.S_IFLNK and one["app/current"][5] == "data.txt"
    assert one["app/tool"][1:4] == (0o750, 1000, 1000)
    assert one["usr/local/bin/run"][1] == 0o755

    again = rebase_image(scenario.app, options=OPTIONS)  # already on the newest base: same image
    assert again.digest == result.digest and again.old_base_digest == again.new_base_digest == scenario.base2


def test_refuses_wrong_old_base_and_missing_annotations(scenario: Scenario) -> None:
    with pytest.raises(RebaseRefused, match="is not built on"):
        rebase_image(scenario.app, old_base=f"{scenario.app.rpartition(':')[0]}@{scenario.app_before}", options=OPTIONS)
    # a docker-format build has no manifest annotations
    plain = f"{scenario.registry.host}/{_name('docker')}:1"
    _digest(scenario.ws.build(scenario.app_ctx, "-t", plain, "--push", "--format", "docker"))
    with pytest.raises(RebaseRefused, match=f"{re.escape(plain)}: has no org.opencontainers.image.base.name"):
        rebase_image(plain, options=OPTIONS)
    # naming the old base is enough then (and the new base defaults to its tag)
    moved = rebase_image(plain, old_base=f"{scenario.base}@{scenario.base2}", force=True, options=OPTIONS)
    assert moved.new_base_digest == scenario.base2


def test_run_in_final_stage_is_not_rebasable_and_is_refused(scenario: Scenario) -> None:
    ws, reg = scenario.ws, scenario.registry
    ref = f"{reg.host}/{_name('run')}:1"
    ctx = ws.context("with-run", {"Dockerfile": f"FROM {scenario.base}\nRUN echo built > /built\n"}, busybox=False)
    _digest(ws.build(ctx, "-t", ref, "--push"))
    notes = _annotations(reg, ref)
    assert REBASABLE not in notes and notes[BASE_DIGEST] == scenario.base2
    before = _manifest(reg, ref.removeprefix(reg.host + "/"))
    with pytest.raises(RebaseRefused, match="not marked rebasable"):
        rebase_image(ref, options=OPTIONS)
    assert _manifest(reg, ref.removeprefix(reg.host + "/")) == before  # nothing written


def test_multi_stage_copy_from_build_stage_is_rebasable(scenario: Scenario) -> None:
    ws, reg = scenario.ws, scenario.registry
    ref = f"{reg.host}/{_name('multi')}:1"
    dockerfile = (
        f"FROM {scenario.base} AS build\nRUN mkdir /out && echo compiled > /out/bin\n"
        f"FROM {scenario.base}\nCOPY --link --from=build /out/ /srv/\nCMD [\"cat\", \"/srv/bin\"]\n"
    )
    _digest(ws.build(ws.context("multi", {"Dockerfile": dockerfile}, busybox=False), "-t", ref, "--push"))
    assert _annotations(reg, ref)[REBASABLE] == "true"


# -- the compiler's rule, without building ------------------------------------------------------


def _rebasable(dockerfile: str, *, on_build: list[str] | None = None) -> bool:
    config = ImageConfig(config=ContainerConfig(env=["PATH=/bin"], on_build=on_build))
    plan = compile_dockerfile(
        dockerfile, filename="Dockerfile", build_args={}, target=None, platform=Platform(),
        image_format="oci", resolve_config=lambda ref: config,
    )
    return plan.rebasable


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("COPY --link a /a\nENV X=1\nLABEL l=v\nEXPOSE 80\nUSER app\nCMD [\"x\"]\nENTRYPOINT [\"y\"]\nVOLUME /v\nSTOPSIGNAL TERM\nARG Z\n", True),
        ("ADD --link https://example.com/f /f\n", True),
        ("COPY --link --chown=1000:1000 a /a\n", True),
        ("COPY --link --chown=app:app a /a\n", False),  # the base's /etc/passwd decides the ids
        ("COPY a /a\n", False),  # without --link the layer repeats the base's parent directories
        ("WORKDIR /app\n", False),  # may create the directory, with the base's parents' metadata
        ("RUN true\n", False),
        ("ENV X=1\n", True),
    ],
)
def test_rebasable_rule(body: str, expected: bool) -> None:
    assert _rebasable("FROM base\n" + body) is expected


def test_rebasable_rule_follows_stage_chains_and_refuses_scratch_and_triggers() -> None:
    assert _rebasable("FROM base AS b\nENV X=1\nFROM b\nCOPY --link a /a\n") is True
    assert _rebasable("FROM base AS b\nRUN true\nFROM b\nCOPY --link a /a\n") is False
    assert _rebasable("FROM scratch\nCOPY --link a /a\n") is False
    assert _rebasable("FROM base\nCOPY --link a /a\n", on_build=["ENV X=1"]) is False
