"""`kiln build` end to end, always as the unprivileged builder user."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.cli.buildkit import BUSYBOX_BASE, BuilderWorkspace
from tests.fixtures.registry import Registry, RepoNamer


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stderr, result.stderr


def test_build_run_and_cached_rebuild(ws: BuilderWorkspace) -> None:
    ctx = ws.context("app", {
        "Dockerfile": BUSYBOX_BASE + "WORKDIR /app\nCOPY hello.txt .\nRUN chown app:app hello.txt && echo built > stamp\nCMD [\"cat\", \"/app/hello.txt\"]\n",
        "hello.txt": "hello from kiln\n",
    })
    first = ws.build(ctx, "-t", "localhost/app:1")
    assert first.returncode == 0, first.stderr
    digest = first.stdout.strip().splitlines()[-1]
    assert digest.startswith("sha256:")
    assert "DONE" in first.stderr and "CACHED" not in first.stderr

    run = ws.kiln("run", "localhost/app:1")
    assert run.returncode == 0, run.stderr
    assert run.stdout == "hello from kiln\n"
    owner = ws.kiln("run", "localhost/app:1", "stat", "-c", "%u:%g %n", "/app/hello.txt", "/app/stamp")
    assert owner.stdout.splitlines() == ["1000:1000 /app/hello.txt", "0:0 /app/stamp"]

    again = ws.build(ctx, "-t", "localhost/app:1")
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == digest  # unchanged rebuild: same image
    assert again.stderr.count("CACHED") == 5 and "DONE" not in again.stderr.replace("FROM", "")


def test_failing_run_reports_exit_code_and_tail_and_tags_nothing(ws: BuilderWorkspace) -> None:
    ctx = ws.context("fail", {"Dockerfile": BUSYBOX_BASE + "RUN echo first-line && echo the-last-words >&2 && exit 7\n"})
    before = ws.index() if ws.store.exists() else {"manifests": []}
    result = ws.build(ctx, "-t", "localhost/fail:1")
    assert result.returncode != 0
    _no_traceback(result)
    assert "exit code: 7" in result.stderr
    assert "the-last-words" in result.stderr.split("kiln: error:")[1]
    assert ws.index()["manifests"] == before["manifests"]
    check = ws.kiln("images", "-q")
    assert "localhost/fail:1" not in check.stdout
    assert list((ws.store / "kiln" / "tmp").glob("*")) == []


def test_syntax_error_names_file_line_and_shows_the_line(ws: BuilderWorkspace) -> None:
    ctx = ws.context("syntax", {"Dockerfile": "FROM scratch\nCOPY busybox /bin/busybox\nRUN --bogus=1 true\n"})
    result = ws.build(ctx)
    assert result.returncode != 0
    _no_traceback(result)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[0].startswith("kiln: error: ") and "Dockerfile:3:" in lines[0]
    assert "RUN --bogus=1 true" in lines[1]


def test_missing_copy_source_unknown_stage_and_bad_flag_are_one_line(ws: BuilderWorkspace) -> None:
    cases = {
        "nosrc": "FROM scratch\nCOPY does-not-exist /x\n",
        "badstage": "FROM scratch\nCOPY --from=later /b /c\nFROM scratch AS later\nCOPY busybox /b\nFROM scratch\nCOPY --from=0 /c /c\n",
        "nobase": "FROM no-such-stage-or-image.invalid/x:1\n",
        "badtarget": "FROM scratch\nCOPY busybox /b\n",
    }
    extra = {"badtarget": ("--target", "nope")}
    for name, dockerfile in cases.items():
        ctx = ws.context(name, {"Dockerfile": dockerfile})
        result = ws.build(ctx, *extra.get(name, ()))
        assert result.returncode != 0, name
        _no_traceback(result)
        errors = [line for line in result.stderr.splitlines() if line.startswith("kiln: error:")]
        assert len(errors) == 1, (name, result.stderr)
    bad_flag = ws.kiln("build", "--no-such-flag", ".")
    assert bad_flag.returncode == 2 and "no-such-flag" in bad_flag.stderr
    _no_traceback(bad_flag)


def test_secret_never_reaches_layers_history_cache_or_log(ws: BuilderWorkspace) -> None:
    secret_value = "s3cr3t-VALUE-9f8e7d"
    ctx = ws.context("secret", {
        "Dockerfile": BUSYBOX_BASE + "RUN --mount=type=secret,id=token cat /run/secrets/token | wc -c > /len && echo using-secret\n"
        "RUN --mount=type=secret,id=token,env=TOKEN test ${#TOKEN} -eq " + str(len(secret_value)) + " && echo env-ok\n",
    })
    secret_file = ws.root / "token.txt"
    secret_file.write_text(secret_value)
    subprocess.run(["chown", f"{ws.rootless.uid}", str(secret_file)], check=True)
    result = ws.build(ctx, "-t", "localhost/secret:1", "--secret", f"id=token,src={secret_file}")
    assert result.returncode == 0, result.stderr
    assert "env-ok" in result.stderr
    assert secret_value not in result.stderr + result.stdout
    length = ws.kiln("run", "localhost/secret:1", "cat", "/len")
    assert length.stdout.strip() == str(len(secret_value))
    # nowhere in the store: not in any blob (layers, configs with history), cache record or snapshot
    grep = subprocess.run(["grep", "-rl", secret_value, str(ws.store)], capture_output=True, text=True)
    assert grep.stdout == "", grep.stdout
    for blob in (ws.store / "blobs" / "sha256").iterdir():
        data = blob.read_bytes()
        if data[:2] == b"\x1f\x8b":
            import gzip

            data = gzip.decompress(data)
        assert secret_value.encode() not in data


def test_outputs_oci_layout_and_docker_archive(ws: BuilderWorkspace, tmp_path: Path) -> None:
    ctx = ws.context("out", {"Dockerfile": BUSYBOX_BASE + "LABEL x=y\nCMD [\"true\"]\n"})
    oci_dir = ws.root / "oci-out"
    archive = ws.root / "image.tar"
    result = ws.build(ctx, "-t", "localhost/out:v1", "--output", f"type=oci,dest={oci_dir}", "--output", f"type=docker,dest={archive}")
    assert result.returncode == 0, result.stderr
    digest = result.stdout.strip().splitlines()[-1]
    inspected = subprocess.run(["skopeo", "inspect", f"oci:{oci_dir}:v1"], capture_output=True, text=True)
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["Labels"] == {"x": "y"}
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{oci_dir}:v1"], capture_output=True, text=True, check=True)
    import hashlib

    assert "sha256:" + hashlib.sha256(raw.stdout.encode()).hexdigest() == digest
    import tempfile

    runroot = tempfile.mkdtemp(prefix="pr-", dir="/tmp")  # podman wants a runroot under 50 characters
    podman = ["podman", "--root", str(tmp_path / "proot"), "--runroot", runroot, "--storage-driver", "vfs"]
    loaded = subprocess.run([*podman, "load", "-i", str(archive)], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    listed = subprocess.run([*podman, "images", "--format", "{{.Repository}}:{{.Tag}}"], capture_output=True, text=True, check=True)
    assert "localhost/out:v1" in listed.stdout


def test_push_and_digest_and_metadata_files(ws: BuilderWorkspace, registry: Registry, fresh_repo: RepoNamer) -> None:
    ctx = ws.context("push", {"Dockerfile": BUSYBOX_BASE})
    ref = f"{registry.host}/{fresh_repo()}:1"
    result = ws.build(ctx, "-t", ref, "--push", "--digest-file", str(ws.root / "digest"), "--metadata-file", str(ws.root / "meta.json"))
    assert result.returncode == 0, result.stderr
    digest = (ws.root / "digest").read_text().strip()
    meta = json.loads((ws.root / "meta.json").read_text())
    assert meta["containerimage.digest"] == digest
    inspected = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"], capture_output=True, text=True, check=True)
    assert json.loads(inspected.stdout)["Digest"] == digest


def test_dry_run_prints_plan_without_building(ws: BuilderWorkspace) -> None:
    ctx = ws.context("dry", {"Dockerfile": "FROM scratch AS a\nCOPY busybox /b\nFROM scratch AS unused\nCOPY busybox /c\nFROM a\nRUN [\"/b\", \"true\"]\n"})
    result = ws.build(ctx, "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "stage 1 'unused'" in result.stdout and "skipped" in result.stdout
    assert "run" in result.stdout and "copy" in result.stdout
    assert not (ws.store / "blobs").exists() or not any((ws.store / "blobs" / "sha256").iterdir())


def test_target_builds_only_needed_stages(ws: BuilderWorkspace) -> None:
    ctx = ws.context("target", {
        "Dockerfile": BUSYBOX_BASE.replace("FROM scratch", "FROM scratch AS base")
        + "FROM base AS broken\nRUN exit 1\nFROM base AS good\nRUN echo good > /good\n",
    })
    result = ws.build(ctx, "--target", "good", "-t", "localhost/good:1")
    assert result.returncode == 0, result.stderr
    assert "exit 1" not in result.stderr


def test_source_date_epoch_gives_reproducible_digest(ws: BuilderWorkspace) -> None:
    files = {"Dockerfile": BUSYBOX_BASE + "COPY data.txt /data.txt\nRUN echo x > /x\n", "data.txt": "same\n"}
    one = ws.context("repro-a", files)
    two = ws.context("elsewhere/repro-b", files)
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    first = ws.build(one, env=env)
    second = ws.kiln("build", "--progress", "quiet", str(two), env={**env, "KILN_STORE": str(ws.root / "other-store")})
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.strip().splitlines()[-1] == second.stdout.strip().splitlines()[-1]


def test_walk_snapshotter_fallback_gives_the_same_image(ws: BuilderWorkspace) -> None:
    """Where overlayfs cannot be mounted, kiln copies snapshots and diffs by walking; same result."""
    dockerfile = BUSYBOX_BASE + (
        "RUN mkdir -p /d/sub && echo a > /d/a && echo b > /d/sub/b && ln -s a /d/link && chown 1000:1000 /d/a\n"
        "RUN rm /d/a && rm -r /d/sub && echo c > /d/c && chmod 600 /d/c\n"
        "WORKDIR /w\nCOPY f.txt .\n"
    )
    ctx = ws.context("walk", {"Dockerfile": dockerfile, "f.txt": "f\n"})
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    overlay = ws.kiln("build", "--progress", "plain", str(ctx), env={**env, "KILN_SNAPSHOTTER": "overlay", "KILN_STORE": str(ws.root / "s-overlay")})
    walk = ws.kiln("build", "--progress", "plain", str(ctx), env={**env, "KILN_SNAPSHOTTER": "walk", "KILN_STORE": str(ws.root / "s-walk")})
    assert overlay.returncode == 0 and walk.returncode == 0, overlay.stderr + walk.stderr
    assert walk.stdout.strip().splitlines()[-1] == overlay.stdout.strip().splitlines()[-1]
    assert not any((ws.root / "s-walk" / "kiln" / "scratch").glob("walk-*"))
