"""`kiln s2i` end to end, as the unprivileged builder user, with builder images made from busybox."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.buildkit import BUSYBOX_BASE, BuilderWorkspace
from tests.cli.s2ikit import (
    ASSEMBLE,
    ASSEMBLE_RUNTIME,
    build_builder,
    builder_dockerfile,
    git,
    image_config,
    run_in,
    s2i,
    s2i_build,
)
from tests.fixtures.httpdir import http_dir
from tests.fixtures.registry import Registry, RepoNamer
from tests.fixtures.rootless import Rootless

BUILDER = "localhost/s2i/builder:1"  # scripts-url label -> /usr/libexec/s2i-label
PLAIN = "localhost/s2i/plain:1"  # no label: /usr/libexec/s2i
NOSAVE = "localhost/s2i/nosave:1"  # no save-artifacts script anywhere
ROOT = "localhost/s2i/root:1"  # USER 0
NAMED = "localhost/s2i/named:1"  # USER app
RUNTIME = "localhost/s2i/runtime:1"


@pytest.fixture(scope="module")
def sw(rootless: Rootless) -> BuilderWorkspace:
    """One workspace (and store) for the module, holding the builder images."""
    ws = BuilderWorkspace(rootless, rootless.builder_tmpdir("s2i-"))
    build_builder(ws, "b-plain", PLAIN, builder_dockerfile(label=None))
    build_builder(ws, "b-label", BUILDER, builder_dockerfile(extra='LABEL io.openshift.s2i.assemble-input-files="/opt/app/src:app;/opt/app/greeting:."\n'))
    build_builder(ws, "b-nosave", NOSAVE, builder_dockerfile(), save_artifacts=False)
    build_builder(ws, "b-root", ROOT, builder_dockerfile(user="0"))
    build_builder(ws, "b-named", NAMED, builder_dockerfile(user="app"))
    runtime = ws.context("b-runtime", {
        "Dockerfile": BUSYBOX_BASE + "RUN mkdir -p /srv && chown 1000:1000 /srv\nCOPY s2i/ /usr/libexec/s2i/\n"
        "RUN chmod 755 /usr/libexec/s2i/*\nLABEL io.openshift.s2i.scripts-url=image:///usr/libexec/s2i io.k8s.display-name=runtime\n"
        "USER 1000\nWORKDIR /srv\n",
        "s2i/assemble-runtime": ASSEMBLE_RUNTIME,
        "s2i/run": "#!/bin/sh\ncat /srv/greeting\n",
    })  # fmt: skip
    done = ws.build(runtime, "-t", RUNTIME)
    assert done.returncode == 0, done.stderr
    return ws


def source(ws: BuilderWorkspace, name: str, extra: dict[str, str | bytes] | None = None) -> Path:
    # name.txt: sources of different tests differ, so no test sees another's cached assemble
    files: dict[str, str | bytes] = {"index.html": "<h1>hi</h1>\n", "deps.txt": "a\nb\n", "name.txt": name}
    return ws.context(name, {**files, **(extra or {})}, busybox=False)


def _one_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("kiln: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _tags(ws: BuilderWorkspace) -> set[str]:
    manifests = ws.index()["manifests"]
    assert isinstance(manifests, list)
    return {m.get("annotations", {}).get("org.opencontainers.image.ref.name", "") for m in manifests}


def test_build_directory_env_labels_user_cmd_ignore_and_push(sw: BuilderWorkspace, registry: Registry, fresh_repo: RepoNamer) -> None:
    src = source(sw, "app1", {
        ".s2i/environment": "# comment\nGREETING = from-environment-file\nFROM_S2I=1\n",
        ".s2iignore": "# rules\nsecret.txt\nlogs/*.log\n",
        "secret.txt": "do not ship\n",
        "logs/x.log": "noise\n",
        "logs/keep.txt": "kept\n",
        ".git/config": "[core]\n",
    })  # fmt: skip
    envfile = sw.root / "env.txt"
    envfile.write_text("FROM_FILE=yes\n")
    tag = f"{registry.host}/{fresh_repo()}:1"
    done = s2i_build(sw, src, BUILDER, tag, "-E", str(envfile), "-e", "GREETING=from-flag", "--push")
    assert done.returncode == 0, done.stderr
    assert "assemble (label) as 1000:1000 in /opt/app" in done.stderr
    digest = done.stdout.strip().splitlines()[-1]
    cfg = image_config(sw, tag)["config"]
    assert isinstance(cfg, dict)
    assert cfg["Cmd"] == ["/usr/libexec/s2i-label/run"]
    assert cfg["User"] == "1000"
    env = cfg["Env"]
    assert "GREETING=from-flag" in env and "FROM_S2I=1" in env and "FROM_FILE=yes" in env
    labels = cfg["Labels"]
    assert labels["io.openshift.s2i.build.image"] == BUILDER
    assert labels["io.openshift.s2i.build.source-location"] == str(src)
    assert labels["io.k8s.display-name"] == "Test builder"
    assert labels["io.k8s.description"] == "busybox S2I builder for tests"
    assert labels["io.openshift.s2i.scripts-url"] == "image:///usr/libexec/s2i-label"
    assert labels["other"] == "kept"
    assert not any(k.startswith("io.openshift.s2i.build.commit") for k in labels)

    assert run_in(sw, tag) == "from-flag\n"
    listing = run_in(sw, tag, "find", "/opt/app/src").split()
    assert "/opt/app/src/index.html" in listing and "/opt/app/src/logs/keep.txt" in listing
    assert "/opt/app/src/secret.txt" not in listing and "/opt/app/src/logs/x.log" not in listing
    assert not any("/.git" in p for p in listing)
    assert run_in(sw, tag, "cat", "/opt/app/owners").splitlines() == ["1000:0 /tmp/src", "1000:0 /tmp/src/index.html"]

    pushed = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{tag}"], capture_output=True, text=True, check=True)
    assert json.loads(pushed.stdout)["Digest"] == digest

    again = s2i_build(sw, src, BUILDER, tag, "-E", str(envfile), "-e", "GREETING=from-flag")
    assert again.returncode == 0, again.stderr
    assert "assemble (label)" not in again.stderr  # unchanged inputs: assemble comes from the cache
    assert again.stdout.strip().splitlines()[-1] == digest


def test_scripts_url_precedence(sw: BuilderWorkspace) -> None:
    plain = source(sw, "prec-plain")
    done = s2i_build(sw, plain, PLAIN, "localhost/prec:default")
    assert done.returncode == 0, done.stderr
    assert run_in(sw, "localhost/prec:default", "cat", "/opt/app/who") == "default\n"
    assert image_config(sw, "localhost/prec:default")["config"]["Cmd"] == ["/usr/libexec/s2i/run"]  # type: ignore[index]

    done = s2i_build(sw, plain, BUILDER, "localhost/prec:label")
    assert done.returncode == 0, done.stderr
    assert run_in(sw, "localhost/prec:label", "cat", "/opt/app/who") == "label\n"

    overridden = source(sw, "prec-source", {".s2i/bin/assemble": ASSEMBLE.replace("$WHO", "source")})
    done = s2i_build(sw, overridden, BUILDER, "localhost/prec:source")
    assert done.returncode == 0, done.stderr
    assert run_in(sw, "localhost/prec:source", "cat", "/opt/app/who") == "source\n"
    cfg = image_config(sw, "localhost/prec:source")["config"]
    assert cfg["Cmd"] == ["/usr/libexec/s2i-label/run"]  # type: ignore[index]  # run: not in .s2i/bin

    served = sw.root / "served"
    served.mkdir()
    (served / "assemble").write_text(ASSEMBLE.replace("$WHO", "http"))
    (served / "run").write_text("#!/bin/sh\necho served-run\n")
    with http_dir(served) as url:
        done = s2i_build(sw, overridden, BUILDER, "localhost/prec:http", "--scripts-url", url)
        assert done.returncode == 0, done.stderr
        empty = sw.root / "empty-served"
        empty.mkdir()
    assert run_in(sw, "localhost/prec:http", "cat", "/opt/app/who") == "http\n"
    assert run_in(sw, "localhost/prec:http") == "served-run\n"
    assert image_config(sw, "localhost/prec:http")["config"]["Cmd"] == ["/tmp/scripts/run"]  # type: ignore[index]

    subprocess.run(["chown", "-R", f"{sw.rootless.uid}", str(served)], check=True)
    (served / "assemble").write_text(ASSEMBLE.replace("$WHO", "file"))
    done = s2i_build(sw, plain, BUILDER, "localhost/prec:file", "--scripts-url", served.as_uri())
    assert done.returncode == 0, done.stderr
    assert run_in(sw, "localhost/prec:file", "cat", "/opt/app/who") == "file\n"

    with http_dir(empty) as url:
        failed = s2i_build(sw, plain, BUILDER, "localhost/prec:none", "--scripts-url", url)
    assert "could not download any scripts" in _one_error(failed)


def test_incremental_restores_artifacts_and_falls_back(sw: BuilderWorkspace) -> None:
    src = source(sw, "inc")
    tag = "localhost/inc:1"
    first = s2i_build(sw, src, BUILDER, tag, "--incremental", "--incremental-pull-policy", "never")
    assert first.returncode == 0, first.stderr
    assert "no previous image localhost/inc:1 in the store" in first.stderr
    assert "fetching a" in first.stderr and "fetching b" in first.stderr

    (src / "deps.txt").write_text("a\nb\nc\n")
    second = s2i_build(sw, src, BUILDER, tag, "--incremental")
    assert second.returncode == 0, second.stderr
    assert "save-artifacts of the previous image localhost/inc:1" in second.stderr
    assert "restored 2 artifacts" in second.stderr
    assert "fetching c" in second.stderr and "fetching a" not in second.stderr
    assert run_in(sw, tag, "ls", "/opt/app/deps").split() == ["a", "b", "c"]
    # the saved tar never reaches the image: only the artifacts assemble kept
    assert run_in(sw, tag, "sh", "-c", "find / -xdev -name artifacts.tar 2>/dev/null; true") == ""

    (src / "deps.txt").write_text("a\nb\nc\nd\n")
    clean = s2i_build(sw, src, BUILDER, tag)
    assert clean.returncode == 0, clean.stderr
    assert "restored" not in clean.stderr and "fetching a" in clean.stderr

    nosave = "localhost/inc:nosave"
    assert s2i_build(sw, src, NOSAVE, nosave).returncode == 0
    fallback = s2i_build(sw, src, NOSAVE, nosave, "--incremental", "--no-cache")
    assert fallback.returncode == 0, fallback.stderr
    assert "has no save-artifacts script" in fallback.stderr and "building without artifacts" in fallback.stderr
    assert "fetching a" in fallback.stderr


def _store_files(ws: BuilderWorkspace) -> dict[str, tuple[int, float]]:
    out = {}
    for dirpath, _dirs, files in os.walk(ws.store):
        for name in [*files, *_dirs]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, ws.store)] = (st.st_size, st.st_mtime)
    return out


def test_allowed_uids_refuses_before_any_work(sw: BuilderWorkspace) -> None:
    src = source(sw, "uids")
    before = _store_files(sw)
    cases = [
        ((ROOT, "1-"), "outside --allowed-uids"),
        ((NAMED, "1-"), "is not numeric"),
        ((BUILDER, "1-999,2000-"), "uid 1000, outside --allowed-uids 1-999,2000-"),
    ]
    for (builder, uids), expected in cases:
        result = s2i_build(sw, src, builder, "localhost/uids:1", "--allowed-uids", uids)
        assert expected in _one_error(result), result.stderr
        assert "#1 " not in result.stderr  # no build step started
    refused = s2i_build(sw, src, BUILDER, "localhost/uids:1", "--allowed-uids", "1-", "--assemble-user", "0")
    assert "root" in _one_error(refused)
    assert _store_files(sw) == before  # nothing pulled, cached, unpacked or tagged

    allowed = s2i_build(sw, src, BUILDER, "localhost/uids:1", "--allowed-uids", "1000-2000")
    assert allowed.returncode == 0, allowed.stderr


def test_runtime_image_extended_build_and_incremental(sw: BuilderWorkspace) -> None:
    src = source(sw, "ext", {"deps.txt": "x\ny\n"})
    tag = "localhost/ext:1"
    first = s2i_build(sw, src, BUILDER, tag, "--runtime-image", RUNTIME, "--incremental", "--incremental-pull-policy", "never")
    assert first.returncode == 0, first.stderr
    assert "no previous image localhost/ext:1-s2i-builder" in first.stderr
    assert "assemble-runtime as 1000 in /srv" in first.stderr
    assert run_in(sw, tag) == "hello\n"  # the runtime's run script shows the greeting artifact
    assert run_in(sw, tag, "stat", "-c", "%u %n", "/srv/app/src/index.html").strip() == "1000 /srv/app/src/index.html"
    assert run_in(sw, tag, "cat", "/srv/ready") == "runtime-ready\n"
    assert "No such file" in sw.kiln("run", tag, "ls", "/opt/app").stdout  # the builder's tree stays behind
    cfg = image_config(sw, tag)["config"]
    assert isinstance(cfg, dict)
    assert cfg["Cmd"] == ["/usr/libexec/s2i/run"] and cfg["User"] == "1000"
    assert cfg["Labels"]["io.k8s.display-name"] == "Test builder"
    assert cfg["Labels"]["io.openshift.s2i.build.image"] == BUILDER
    assert "localhost/ext:1-s2i-builder" in _tags(sw)

    (src / "deps.txt").write_text("x\ny\nz\n")
    second = s2i_build(sw, src, BUILDER, tag, "--runtime-image", RUNTIME, "--incremental")
    assert second.returncode == 0, second.stderr
    assert "save-artifacts of the previous image localhost/ext:1-s2i-builder" in second.stderr
    assert "restored 2 artifacts" in second.stderr and "fetching z" in second.stderr
    assert run_in(sw, tag, "ls", "/srv/app/src").split() == ["deps.txt", "index.html", "name.txt"]

    only_greeting = s2i_build(sw, src, BUILDER, "localhost/ext:2", "--runtime-image", RUNTIME, "--runtime-artifact", "/opt/app/greeting:.")
    assert only_greeting.returncode == 0, only_greeting.stderr
    assert "No such file" in sw.kiln("run", "localhost/ext:2", "ls", "/srv/app").stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def git_daemon(sw: BuilderWorkspace) -> Iterator[tuple[Path, int]]:
    base = sw.root / "git-served"
    base.mkdir()
    port = _free_port()
    proc = subprocess.Popen(
        ["git", "-c", "safe.directory=*", "daemon", "--reuseaddr", "--export-all", f"--base-path={base}", "--listen=127.0.0.1", f"--port={port}", str(base)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        yield base, port
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def test_git_sources_commit_labels_ref_copy_and_context_dir(sw: BuilderWorkspace, git_daemon: tuple[Path, int]) -> None:
    base, port = git_daemon
    repo = base / "app.git"
    shutil.copytree(source(sw, "git-src", {"sub/index.html": "<p>sub</p>\n", "sub/deps.txt": "s\n"}), repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "first commit")
    (repo / "index.html").write_text("<h1>second</h1>\n")
    git(repo, "commit", "-q", "-am", "second commit")
    git(repo, "tag", "v2")
    (repo / "dirty.txt").write_text("not committed\n")
    subprocess.run(["chown", "-R", f"{sw.rootless.uid}:{sw.rootless.gid}", str(base)], check=True)
    head = git(repo, "rev-parse", "HEAD")

    url = f"git://127.0.0.1:{port}/app.git"
    done = s2i_build(sw, url, BUILDER, "localhost/git:1", "--ref", "v2")
    assert done.returncode == 0, done.stderr
    labels = image_config(sw, "localhost/git:1")["config"]["Labels"]  # type: ignore[index]
    assert labels["io.openshift.s2i.build.commit.id"] == head
    assert labels["io.openshift.s2i.build.commit.author"] == "Ada Lovelace <ada@example.com>"
    assert labels["io.openshift.s2i.build.commit.message"] == "second commit"
    assert labels["io.openshift.s2i.build.commit.ref"] == "HEAD"  # a tag checkout is detached, as in s2i
    assert labels["io.openshift.s2i.build.commit.date"] == git(repo, "show", "-s", "--format=%ad", "HEAD")
    assert labels["io.openshift.s2i.build.source-location"] == url
    assert run_in(sw, "localhost/git:1", "cat", "/opt/app/src/index.html") == "<h1>second</h1>\n"

    done = s2i_build(sw, repo.as_uri(), BUILDER, "localhost/git:2", "--ref", "main~1", "--context-dir", "sub")
    assert done.returncode == 0, done.stderr
    assert run_in(sw, "localhost/git:2", "ls", "/opt/app/src").split() == ["deps.txt", "index.html"]
    assert run_in(sw, "localhost/git:2", "cat", "/opt/app/src/index.html") == "<p>sub</p>\n"
    labels = image_config(sw, "localhost/git:2")["config"]["Labels"]  # type: ignore[index]
    assert labels["io.openshift.s2i.build.source-context-dir"] == "sub"
    assert labels["io.openshift.s2i.build.commit.message"] == "first commit"

    cloned = s2i_build(sw, repo, BUILDER, "localhost/git:3")  # a local repository is cloned: committed files only
    assert cloned.returncode == 0, cloned.stderr
    assert "dirty.txt" not in run_in(sw, "localhost/git:3", "ls", "/opt/app/src")
    copied = s2i_build(sw, repo, BUILDER, "localhost/git:4", "--copy")
    assert copied.returncode == 0, copied.stderr
    assert "dirty.txt" in run_in(sw, "localhost/git:4", "ls", "/opt/app/src")
    assert image_config(sw, "localhost/git:4")["config"]["Labels"]["io.openshift.s2i.build.commit.id"] == head  # type: ignore[index]

    bad = s2i_build(sw, repo.as_uri(), BUILDER, "localhost/git:5", "--ref", "no-such-ref")
    assert "git checkout no-such-ref" in _one_error(bad)


def test_tarball_source(sw: BuilderWorkspace) -> None:
    src = source(sw, "tar-src", {"nested/file.txt": "in a tarball\n"})
    archive = sw.root / "app.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=".")
    os.chown(archive, sw.rootless.uid, sw.rootless.gid)
    done = s2i_build(sw, archive, BUILDER, "localhost/tar:1")
    assert done.returncode == 0, done.stderr
    assert run_in(sw, "localhost/tar:1", "cat", "/opt/app/src/nested/file.txt") == "in a tarball\n"

    evil = sw.root / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        tar.addfile(info)
    os.chown(evil, sw.rootless.uid, sw.rootless.gid)
    assert "outside the source directory" in _one_error(s2i_build(sw, evil, BUILDER, "localhost/tar:2"))


def test_usage(sw: BuilderWorkspace) -> None:
    done = s2i(sw, "usage", BUILDER)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "usage: kiln s2i build SOURCE this-builder TAG (label)\n"
    served = sw.root / "usage-served"
    served.mkdir()
    (served / "usage").write_text("#!/bin/sh\necho served usage as $(id -u)\n")
    with http_dir(served) as url:
        done = s2i(sw, "usage", PLAIN, "--scripts-url", url)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "served usage as 1000\n"
    missing = s2i(sw, "usage", PLAIN, "--scripts-url", "image:///nowhere")
    assert "has no usage script" in _one_error(missing)


def test_as_dockerfile_round_trip(sw: BuilderWorkspace) -> None:
    src = source(sw, "asdf", {".s2i/bin/assemble": ASSEMBLE.replace("$WHO", "source"), ".s2i/environment": "A=$HOME \"q\"\n"})
    out = sw.root / "asdf-out"
    done = s2i(sw, "build", "--as-dockerfile", str(out / "Dockerfile"), "-e", "GREETING=dockerfile", str(src), BUILDER, "localhost/asdf:s2i")
    assert done.returncode == 0, done.stderr
    text = (out / "Dockerfile").read_text()
    assert "FROM localhost/s2i/builder:1 AS builder" in text
    assert (out / "upload" / "src" / "index.html").is_file() and (out / "upload" / "scripts" / "assemble").is_file()
    assert not (sw.store / "index.json").read_text().count("localhost/asdf")  # nothing was built

    built = sw.build(out, "-t", "localhost/asdf:dockerfile")
    assert built.returncode == 0, built.stderr
    direct = s2i_build(sw, src, BUILDER, "localhost/asdf:s2i", "-e", "GREETING=dockerfile")
    assert direct.returncode == 0, direct.stderr
    a = image_config(sw, "localhost/asdf:dockerfile")["config"]
    b = image_config(sw, "localhost/asdf:s2i")["config"]
    assert isinstance(a, dict) and isinstance(b, dict)
    for key in ("Env", "Cmd", "User", "Labels", "WorkingDir"):
        assert a.get(key) == b.get(key), key
    assert 'A=$HOME "q"' in a["Env"]
    for ref in ("localhost/asdf:dockerfile", "localhost/asdf:s2i"):
        assert run_in(sw, ref) == "dockerfile\n"
        assert run_in(sw, ref, "cat", "/opt/app/who") == "source\n"
    listing = [run_in(sw, ref, "sh", "-c", "cd /opt/app /tmp && find . /tmp/src /tmp/scripts -exec stat -c '%n %u:%g %a %s' {} + | sort")
               for ref in ("localhost/asdf:dockerfile", "localhost/asdf:s2i")]  # fmt: skip
    assert listing[0] == listing[1] and "/tmp/src/index.html" in listing[0]


def test_failing_and_missing_assemble_are_one_line_and_tag_nothing(sw: BuilderWorkspace) -> None:
    failing = source(sw, "fail", {".s2i/bin/assemble": "#!/bin/sh\necho compiling\necho the-last-words >&2\nexit 3\n"})
    result = s2i_build(sw, failing, BUILDER, "localhost/fail:1")
    line = _one_error(result)
    assert "assemble script /tmp/scripts/assemble failed in localhost/s2i/builder:1: exit code: 3" in line
    assert "the-last-words" in result.stderr.split("kiln: error:")[1]
    missing = s2i_build(sw, source(sw, "missing"), BUILDER, "localhost/fail:2", "--scripts-url", "image:///usr/libexec/nowhere")
    assert "has no assemble script at /usr/libexec/nowhere/assemble" in _one_error(missing)
    assert not {"localhost/fail:1", "localhost/fail:2"} & _tags(sw)
    assert list((sw.store / "kiln" / "tmp").glob("s2i-*")) == []


def test_inject_is_seen_by_assemble_and_kept_out_of_the_image(sw: BuilderWorkspace) -> None:
    secret = "inj3cted-S3CRET-value"
    secrets_dir = sw.root / "secrets"
    secrets_dir.mkdir()
    (secrets_dir / "token").write_text(secret)
    subprocess.run(["chown", "-R", f"{sw.rootless.uid}", str(secrets_dir)], check=True)
    src = source(sw, "inject", {".s2i/bin/assemble": "#!/bin/sh\nset -e\nwc -c < /opt/app/run/secrets/token > /opt/app/seen\necho hi > /opt/app/greeting\n"})
    done = s2i_build(sw, src, BUILDER, "localhost/inject:1", "--inject", f"{secrets_dir}:run/secrets")
    assert done.returncode == 0, done.stderr
    assert run_in(sw, "localhost/inject:1", "cat", "/opt/app/seen").strip() == str(len(secret))
    grep = subprocess.run(["grep", "-rl", secret, str(sw.store)], capture_output=True, text=True)
    assert grep.stdout == ""
    for blob in (sw.store / "blobs" / "sha256").iterdir():
        data = blob.read_bytes()
        assert secret.encode() not in (gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
