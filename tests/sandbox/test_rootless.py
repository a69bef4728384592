"""The sandbox as the unprivileged user ``builder``: user namespace, full id mapping, cleanup."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from kiln.sandbox.idmap import parse_subid
from tests.fixtures.rootless import Rootless
from tests.sandbox.conftest import (
    NESTED_ARGV,
    NESTED_ENV,
    NESTED_INNER_SPEC,
    PATH_ENV,
    host_mounts_matching,
    host_processes_matching,
    make_busybox_rootfs,
    make_python_rootfs,
    nested_mounts,
    unique_sleep,
    wait_until,
)

pytestmark = pytest.mark.rootless


def subid_start(kind: str) -> int:
    user = pwd.getpwnam("builder")
    with open(f"/etc/sub{kind}") as f:
        ranges = parse_subid(f.read(), "builder", user.pw_uid)
    assert ranges, f"/etc/sub{kind} has no range for builder: run `make setup`"
    return ranges[0].start


class Sandbox:
    """Runs ``python -m kiln.sandbox run SPEC`` as builder."""

    def __init__(self, rootless: Rootless, work: Path) -> None:
        self.rootless = rootless
        self.work = work
        self.owner = (rootless.uid, rootless.gid)
        self._count = 0

    def rootfs(self, name: str = "rootfs", **kwargs: Any) -> Path:
        return make_busybox_rootfs(self.work / name, owner=self.owner, **kwargs)

    def mkdir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir()
        os.chown(path, *self.owner)
        return path

    def _files(self, spec: dict[str, Any]) -> tuple[Path, Path]:
        self._count += 1
        spec_file = self.work / f"spec{self._count}.json"
        spec_file.write_text(json.dumps({"env": PATH_ENV, **spec}))
        result_file = self.work / f"result{self._count}.json"
        return spec_file, result_file

    def argv(self, spec: dict[str, Any]) -> tuple[list[str], Path]:
        spec_file, result_file = self._files(spec)
        argv = self.rootless.python_argv("-m", "kiln.sandbox", "run", str(spec_file), "--result", str(result_file))
        return argv, result_file

    def run(self, spec: dict[str, Any], env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
        argv, result_file = self.argv(spec)
        done = self.rootless.run_as_builder(argv, env=env, timeout=120)
        result = json.loads(result_file.read_text()) if result_file.exists() else {}
        return done, result

    def unshare(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run a helper command as root of builder's user namespace (like `buildah unshare`)."""
        return self.rootless.run_as_builder(self.rootless.python_argv("-m", "kiln.sandbox", "unshare", *argv))


@pytest.fixture
def sandbox(rootless: Rootless, builder_tmp: Path) -> Sandbox:
    return Sandbox(rootless, builder_tmp)


def test_builder_gets_the_full_subordinate_mapping(sandbox: Sandbox, rootless: Rootless) -> None:
    done = sandbox.rootless.run_as_builder(rootless.python_argv("-m", "kiln.sandbox", "mapping"))
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    uid_start, gid_start = subid_start("uid"), subid_start("gid")
    assert [line.split() for line in info["uid_map"]] == [["0", str(rootless.uid), "1"], ["1", str(uid_start), "65536"]]
    assert [line.split() for line in info["gid_map"]] == [["0", str(rootless.gid), "1"], ["1", str(gid_start), "65536"]]
    assert info["full"] is True
    assert done.stderr == ""


def test_without_newuidmap_only_the_own_id_is_mapped_with_a_warning(sandbox: Sandbox) -> None:
    rootfs = sandbox.rootfs()
    # kiln finds newuidmap through PATH; without it the fallback applies (the sandbox's own
    # PATH comes from the spec).
    done, result = sandbox.run(
        {"rootfs": str(rootfs), "argv": ["sh", "-c", "cat /proc/self/uid_map; id -u; touch /f; chown 1000 /f; echo chown=$?"]},
        env={"PATH": "/nonexistent"},
    )
    assert "warning" in done.stderr and "chown to other uids" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1  # one line
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["0", str(sandbox.rootless.uid), "1"]
    assert lines[1] == "0"
    assert "chown=1" in lines
    assert result["exit_code"] == 0


def test_run_as_builder_exit_code_and_output(sandbox: Sandbox) -> None:
    rootfs = sandbox.rootfs()
    done, result = sandbox.run({"rootfs": str(rootfs), "argv": ["sh", "-c", "id -u; echo to-stderr >&2; exit 5"]})
    assert done.returncode == 5
    assert done.stdout == "0\nto-stderr\n"
    assert result["exit_code"] == 5 and result["output_tail"] == "0\nto-stderr\n"


def test_chown_to_other_ids_works_and_lands_on_subordinate_ids(sandbox: Sandbox) -> None:
    rootfs = sandbox.rootfs()
    script = "touch /f && chown 1000:1000 /f && stat -c %u:%g /f && mkdir /d && chown 65535:0 /d && stat -c %u:%g /d"
    done, _ = sandbox.run({"rootfs": str(rootfs), "argv": ["sh", "-c", script]})
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split() == ["1000:1000", "65535:0"]
    st = os.stat(rootfs / "f")
    assert (st.st_uid, st.st_gid) == (subid_start("uid") + 999, subid_start("gid") + 999)
    assert os.stat(rootfs / "d").st_uid == subid_start("uid") + 65534
    assert os.stat(rootfs / "d").st_gid == sandbox.rootless.gid  # gid 0 inside is builder's own


def test_user_switch_inside_the_sandbox(sandbox: Sandbox) -> None:
    rootfs = sandbox.rootfs()
    done, _ = sandbox.run(
        {"rootfs": str(rootfs), "argv": ["id"], "uid": 1000, "gid": 1000, "additional_gids": [2000]}
    )
    assert done.stdout.strip() == "uid=1000(user) gid=1000(user) groups=2000(extra)"


def test_overlay_upper_belongs_to_mapped_ids_and_is_read_inside_the_namespace(sandbox: Sandbox) -> None:
    lower = sandbox.rootfs("lower", mountpoints=False)
    (lower / "old").write_text("old\n")
    os.chown(lower / "old", *sandbox.owner)
    upper, work = sandbox.mkdir("upper"), sandbox.mkdir("work")
    script = "echo new > /new && chown 1000:1000 /new && rm /old && mkdir /d && chown 2000:2000 /d && echo x > /d/x"
    spec = {"rootfs": {"lowerdirs": [str(lower)], "upperdir": str(upper), "workdir": str(work)}, "argv": ["sh", "-c", script]}
    done, result = sandbox.run(spec)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(os.listdir(upper)) == ["d", "new", "old"]
    assert result["placeholders"] == []
    # From the host the files belong to builder's subordinate ids ...
    assert os.stat(upper / "new").st_uid == subid_start("uid") + 999
    # ... and inside kiln's user namespace they are what the build step made them.
    seen = sandbox.unshare("stat", "-c", "%u:%g %F %n", str(upper / "new"), str(upper / "d"), str(upper / "old"))
    assert seen.returncode == 0, seen.stderr
    assert [line.split(" ", 1)[0] for line in seen.stdout.splitlines()] == ["1000:1000", "2000:2000", "0:0"]
    assert "character special file" in seen.stdout.splitlines()[2]  # whiteout for /old
    assert sandbox.unshare("cat", str(upper / "d" / "x")).stdout == "x\n"


def test_isolation_as_builder(sandbox: Sandbox, tcp_server: tuple[int, list[bytes]], marker: str) -> None:
    port, received = tcp_server
    rootfs = sandbox.rootfs()
    context = sandbox.mkdir("context")
    (context / "file").write_text("context\n")
    os.chown(context / "file", *sandbox.owner)
    host_secret = Path("/tmp") / marker
    host_secret.write_text("host-only")
    try:
        script = (
            f"cat /tmp/{marker}; echo host=$?; "
            "ls /proc | grep -c '^[0-9]'; "
            "cat /ctx/file; touch /ctx/new; echo ctx=$?; "
            f"echo hi | nc 127.0.0.1 {port}; echo nc=$?"
        )
        spec = {
            "rootfs": str(rootfs),
            "argv": ["sh", "-c", script],
            "network": "none",
            "mounts": [{"type": "bind", "source": str(context), "target": "/ctx", "readonly": True}],
        }
        done, _ = sandbox.run(spec)
    finally:
        host_secret.unlink()
    lines = done.stdout.splitlines()
    assert "host=1" in lines and "host-only" not in done.stdout
    assert int(lines[lines.index("host=1") + 1]) < 6  # only the sandbox's few processes
    assert "context" in lines and "ctx=1" in lines
    assert "nc=1" in lines and received == []
    assert sorted(os.listdir(context)) == ["file"]


def test_timeout_as_builder_kills_the_tree(sandbox: Sandbox, marker: str) -> None:
    arg = unique_sleep(marker)
    rootfs = sandbox.rootfs()
    done, result = sandbox.run({"rootfs": str(rootfs), "argv": ["sh", "-c", f"sleep {arg} & sleep {arg}"], "timeout": 1})
    assert result["timed_out"] is True and done.returncode == 137
    assert host_processes_matching(f"sleep {arg}") == []


def _start_long_running(sandbox: Sandbox, marker: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    arg = unique_sleep(marker)
    rootfs = sandbox.rootfs()
    argv, _ = sandbox.argv({"rootfs": str(rootfs), "argv": ["sh", "-c", f"sleep {arg} & echo started; sleep {arg}"]})
    proc = sandbox.rootless.popen_as_builder(argv)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    assert len(host_processes_matching(f"sleep {arg}")) == 2
    return proc, f"sleep {arg}", rootfs


def _builder_staging_dirs(rootless: Rootless) -> set[str]:
    base = Path("/tmp") / f"kiln-sandbox-{rootless.uid}"
    return set(os.listdir(base)) if base.is_dir() else set()


def test_ctrl_c_kills_the_tree_and_leaves_nothing(sandbox: Sandbox, marker: str) -> None:
    staging_before = _builder_staging_dirs(sandbox.rootless)
    proc, needle, rootfs = _start_long_running(sandbox, marker)
    os.kill(proc.pid, signal.SIGINT)  # the builder's kiln process, outside the user namespace
    assert proc.wait(60) == 128 + signal.SIGINT
    # run() waits until the PID namespace is empty before it lets the interrupt through.
    assert host_processes_matching(needle) == []
    assert host_mounts_matching(str(rootfs)) == [] and host_mounts_matching("kiln-sandbox-") == []
    assert _builder_staging_dirs(sandbox.rootless) == staging_before
    assert sorted(os.listdir(rootfs)) == ["bin", "dev", "etc", "proc", "sys", "tmp"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killing_kiln_takes_the_sandbox_with_it(sandbox: Sandbox, marker: str, sig: signal.Signals) -> None:
    staging_before = _builder_staging_dirs(sandbox.rootless)
    proc, needle, rootfs = _start_long_running(sandbox, marker)
    os.kill(proc.pid, sig)
    assert proc.wait(60) in (128 + sig, -sig)
    # Parent-death signals cascade: kiln in the namespace, the supervisor, then PID 1.
    assert wait_until(lambda: host_processes_matching(needle) == [])
    # kiln had no chance to remove its scratch directory; the next sandbox run does.
    leaked = _builder_staging_dirs(sandbox.rootless) - staging_before
    done, _ = sandbox.run({"rootfs": str(rootfs), "argv": ["true"]})
    assert done.returncode == 0, done.stderr
    assert leaked & _builder_staging_dirs(sandbox.rootless) == set()


def test_kiln_sandbox_nests_inside_a_kiln_sandbox(sandbox: Sandbox) -> None:
    """kiln (as uid 0 of a build step, without CAP_SYS_ADMIN) runs its own sandbox inside one."""
    inner = sandbox.rootfs("inner-rootfs")
    outer = make_python_rootfs(sandbox.work / "outer", NESTED_INNER_SPEC, owner=sandbox.owner)
    spec = {
        "rootfs": str(outer),
        "argv": NESTED_ARGV,
        "env": NESTED_ENV,
        "mounts": nested_mounts(sandbox.rootless.code, inner),
    }
    done, _ = sandbox.run(spec)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "nested-ok"
    # The inner namespace maps every id of the outer one to itself ...
    assert [line.split() for line in lines[1:3]] == [["0", "0", "1"], ["1", "1", "65536"]]
    # ... and has a PID namespace of its own.
    assert int(lines[3]) < 6


def test_terminal_ctrl_c_reaches_kiln_once(sandbox: Sandbox, marker: str) -> None:
    """^C on kiln's terminal: the kernel signals the whole foreground group, so the outer kiln
    must not forward a second SIGINT (which could interrupt the inner kiln's cleanup)."""
    arg = unique_sleep(marker)
    rootfs = sandbox.rootfs()
    script = f"trap '' INT; sleep {arg} & echo started; sleep {arg}"
    argv, result_file = sandbox.argv({"rootfs": str(rootfs), "argv": ["sh", "-c", script]})
    # The inner kiln reports every SIGINT it gets on stderr, then behaves as by default.
    probe = (
        "import signal, sys, runpy\n"
        "def count(n, f):\n"
        "    sys.stderr.write('SIGINT\\n'); sys.stderr.flush(); raise KeyboardInterrupt\n"
        "signal.signal(signal.SIGINT, count)\n"
        "sys.argv = ['kiln.sandbox', *sys.argv[1:]]\n"
        "runpy.run_module('kiln.sandbox', run_name='__main__', alter_sys=True)\n"
    )
    argv = [argv[0], "-c", probe, *argv[3:]]
    master, slave = os.openpty()
    proc = subprocess.Popen(
        ["setsid", "--ctty", *sandbox.rootless.setpriv_argv(argv)],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=sandbox.rootless.builder_env(),
        cwd=sandbox.work,
    )
    os.close(slave)
    seen = b""
    try:
        while b"started" not in seen:
            chunk = os.read(master, 4096)
            assert chunk, seen
            seen += chunk
        os.write(master, b"\x03")  # ^C typed at the terminal
        assert proc.wait(60) == 128 + signal.SIGINT
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: every process holding the terminal is gone
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    assert seen.count(b"SIGINT\r\n") == 1, seen
    assert host_processes_matching(f"sleep {arg}") == []
    assert not result_file.exists() or "exit_code" not in result_file.read_text()


def test_run_in_userns_helper_removes_files_of_subordinate_ids(sandbox: Sandbox) -> None:
    rootfs = sandbox.rootfs()
    done, _ = sandbox.run({"rootfs": str(rootfs), "argv": ["sh", "-c", "mkdir -p /t/d && echo x > /t/d/f && chown -R 1000:1000 /t"]})
    assert done.returncode == 0, done.stderr
    plain = sandbox.rootless.run_as_builder(["rm", "-rf", str(rootfs / "t")])
    assert plain.returncode != 0 and (rootfs / "t" / "d" / "f").exists()  # builder alone cannot
    code = "import sys; from kiln.sandbox import run_in_userns; sys.exit(run_in_userns(sys.argv[1:]))"
    helper = sandbox.rootless.run_as_builder(
        sandbox.rootless.python_argv("-c", code, "sh", "-c", f"id -u; rm -rf {rootfs / 't'}; exit 3")
    )
    assert (helper.returncode, helper.stdout) == (3, "0\n"), helper.stderr
    assert not (rootfs / "t").exists()
