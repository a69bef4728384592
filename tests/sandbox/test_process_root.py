"""The sandbox run in-process by the test suite, which is real root."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

import kiln
from kiln.errors import SandboxError
from kiln.sandbox import ExecFailedError, Mount, OverlayRootfs, ProcessResult, ProcessSpec, run
from kiln.sandbox.caps import CAP_NUMBERS, DEFAULT_CAPABILITIES
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
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="these tests run the sandbox as real root")


def sh(rootfs: str | OverlayRootfs, script: str, **kwargs: object) -> ProcessResult:
    spec = ProcessSpec(rootfs=rootfs, argv=["/bin/sh", "-c", script], env=dict(PATH_ENV))
    for key, value in kwargs.items():
        setattr(spec, key, value)
    return run(spec)


def text(result: ProcessResult) -> str:
    return result.output_tail.decode()


def test_exit_codes(rootfs: Path) -> None:
    assert sh(str(rootfs), "exit 0").exit_code == 0
    result = sh(str(rootfs), "exit 7")
    assert (result.exit_code, result.signal, result.timed_out) == (7, None, False)


def test_killed_by_signal_reports_128_plus_signal(rootfs: Path) -> None:
    result = sh(str(rootfs), "kill -TERM $$")
    assert (result.exit_code, result.signal) == (143, 15)


def test_output_tail_is_bounded(rootfs: Path) -> None:
    result = sh(str(rootfs), "i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done", tail_limit=1000)
    assert len(result.output_tail) == 1000
    assert result.output_tail.endswith(b"line1999\n")


def test_stdin_env_cwd_and_path_lookup(rootfs: Path) -> None:
    (rootfs / "work").mkdir()
    spec = ProcessSpec(
        rootfs=str(rootfs),
        argv=["sh", "-c", 'read x; echo "$x $GREETING $(pwd)"; env | sort'],
        env={"PATH": "/bin", "GREETING": "hi"},
        cwd="/work",
        stdin=b"from-stdin\n",
    )
    result = run(spec)
    lines = text(result).splitlines()
    assert lines[0] == "from-stdin hi /work"
    # Nothing of the host's environment leaks in (sh adds PWD/SHLVL itself).
    assert {line.split("=")[0] for line in lines[1:]} <= {"PATH", "GREETING", "PWD", "SHLVL"}


def test_missing_command_and_missing_cwd_fail_clearly(rootfs: Path) -> None:
    with pytest.raises(ExecFailedError, match=r"no-such-program.*not found") as info:
        run(ProcessSpec(rootfs=str(rootfs), argv=["no-such-program"], env=dict(PATH_ENV)))
    assert info.value.exit_code == 127
    with pytest.raises(ExecFailedError, match="working directory /nope"):
        run(ProcessSpec(rootfs=str(rootfs), argv=["true"], env=dict(PATH_ENV), cwd="/nope"))
    assert not (rootfs / "nope").exists()


def test_uid_gid_and_groups(rootfs: Path) -> None:
    result = sh(str(rootfs), "id -u; id -g; id -G", uid=1000, gid=1000, additional_gids=[1000, 2000])
    assert text(result).split() == ["1000", "1000", "1000", "2000"]


def test_output_streams_line_by_line_before_exit(rootfs: Path, tmp_path: Path) -> None:
    """The command waits for a file that the callback creates on seeing its first line."""
    shared = tmp_path / "shared"
    shared.mkdir()
    lines: list[bytes] = []

    def on_output(line: bytes) -> None:
        lines.append(line)
        if line == b"first\n":
            (shared / "go").touch()

    script = "echo first; while [ ! -e /shared/go ]; do sleep 0.05; done; echo second"
    result = sh(str(rootfs), script, mounts=[Mount("bind", "/shared", str(shared))], on_output=on_output, timeout=120)
    assert not result.timed_out
    assert lines == [b"first\n", b"second\n"]


def test_host_files_outside_mounts_are_invisible(rootfs: Path, marker: str) -> None:
    host_file = Path("/tmp") / marker
    host_file.write_text("secret")
    try:
        result = sh(str(rootfs), f"ls /tmp; cat /tmp/{marker} {host_file}; echo rc=$?")
    finally:
        host_file.unlink()
    assert marker not in text(result).replace(f"/tmp/{marker}", "")
    assert "secret" not in text(result)
    assert "rc=1" in text(result)


def test_host_processes_are_invisible(rootfs: Path) -> None:
    result = sh(str(rootfs), "for p in /proc/[0-9]*; do echo ${p#/proc/} $(cat $p/comm); done")
    pids = {int(line.split()[0]): line.split()[1] for line in text(result).splitlines()}
    # PID 1 is kiln's init, then the shell and the short-lived cat processes of the loop.
    assert 1 in pids
    assert os.getpid() not in pids
    assert all(comm in ("python3", "python", "sh", "cat") for comm in pids.values()), pids
    assert len(pids) < 6


def test_read_only_bind_mount_cannot_be_written(rootfs: Path, tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    (context / "Dockerfile").write_text("FROM scratch\n")
    result = sh(
        str(rootfs),
        "cat /ctx/Dockerfile; touch /ctx/new; echo touch=$?; rm /ctx/Dockerfile; echo rm=$?",
        mounts=[Mount("bind", "/ctx", str(context), readonly=True)],
    )
    out = text(result)
    assert "FROM scratch" in out
    assert "touch=1" in out and "rm=1" in out
    assert sorted(os.listdir(context)) == ["Dockerfile"]


def test_network_none_cannot_reach_host_loopback(rootfs: Path, tcp_server: tuple[int, list[bytes]]) -> None:
    port, received = tcp_server
    script = f"echo hello-from-sandbox | nc 127.0.0.1 {port}; echo nc=$?; ip link show lo"
    isolated = sh(str(rootfs), script, network="none")
    assert "nc=1" in text(isolated)
    assert "UP" in text(isolated)  # the namespace's own loopback was brought up
    assert received == []
    # The same command with the host network does reach the server: the check above is real.
    shared = sh(str(rootfs), script, network="host")
    assert "nc=0" in text(shared)
    assert received == [b"hello-from-sandbox\n"]


def test_timeout_kills_the_whole_tree(rootfs: Path, marker: str) -> None:
    arg = unique_sleep(marker)
    result = sh(str(rootfs), f"sleep {arg} & sleep {arg}", timeout=1)
    assert result.timed_out
    assert (result.exit_code, result.signal) == (137, 9)
    assert host_processes_matching(f"sleep {arg}") == []
    assert host_mounts_matching("kiln-sandbox-") == []


def test_background_processes_die_with_the_command(rootfs: Path, marker: str) -> None:
    arg = unique_sleep(marker)
    result = sh(str(rootfs), f"sleep {arg} & echo started")
    assert result.exit_code == 0 and "started" in text(result)
    assert host_processes_matching(f"sleep {arg}") == []


def test_orphans_are_reaped(rootfs: Path) -> None:
    script = (
        "(sleep 0.1 &) ; "
        "i=0; while [ $i -lt 200 ]; do "
        "  if ! grep -q '^State:.*Z' /proc/[0-9]*/status 2>/dev/null; then echo reaped; exit 0; fi; "
        "  sleep 0.05; i=$((i+1)); "
        "done; exit 1"
    )
    result = sh(str(rootfs), "sleep 0.3; " + script)
    assert result.exit_code == 0, text(result)


def test_keyboard_interrupt_kills_the_sandbox_and_propagates(rootfs: Path, marker: str) -> None:
    arg = unique_sleep(marker)

    def interrupt(line: bytes) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        sh(str(rootfs), f"sleep {arg} & echo started; sleep {arg}", on_output=interrupt)
    assert host_processes_matching(f"sleep {arg}") == []
    assert host_mounts_matching("kiln-sandbox-") == []
    assert own_staging_dirs() == []


def test_missing_mountpoints_are_created_then_removed(tmp_path: Path) -> None:
    bare = make_busybox_rootfs(tmp_path / "bare", mountpoints=False)
    (bare / "etc" / "hosts").unlink(missing_ok=True)
    before = sorted(p.relative_to(bare) for p in bare.rglob("*"))
    result = sh(str(bare), "ls -d /proc/1 /dev/null /etc/hosts /etc/resolv.conf /data", mounts=[Mount("tmpfs", "/data")])
    assert result.exit_code == 0, text(result)
    assert set(result.placeholders) == {"proc", "dev", "sys", "etc/hosts", "etc/resolv.conf", "data"}
    assert sorted(p.relative_to(bare) for p in bare.rglob("*")) == before


def test_a_placeholder_outlives_a_run_while_another_run_shares_the_root(tmp_path: Path) -> None:
    from kiln.sandbox.rootshare import RootShare
    from kiln.sandbox.staging import roots_dir

    bare = make_busybox_rootfs(tmp_path / "bare")
    (bare / "etc" / "resolv.conf").unlink(missing_ok=True)
    other = RootShare(str(bare), roots_dir(str(tmp_path)))  # a run that started first and still runs
    assert sh(str(bare), "test -e /etc/resolv.conf").exit_code == 0
    assert (bare / "etc" / "resolv.conf").exists()  # the other run's bind mount still needs it
    other.leave([])  # the last one out removes what the ledger lists
    assert not (bare / "etc" / "resolv.conf").exists()


def test_symlinked_mount_target_stays_inside_the_root(tmp_path: Path, marker: str) -> None:
    evil = make_busybox_rootfs(tmp_path / "evil")
    outside = Path("/tmp") / marker
    (evil / "etc" / "resolv.conf").unlink(missing_ok=True)
    os.symlink(f"/../../../../{outside}", evil / "etc" / "resolv.conf")
    result = sh(str(evil), "cat /etc/resolv.conf > /dev/null; echo ok")
    assert "ok" in text(result)
    assert not outside.exists()


def test_read_only_rootfs_and_tmpfs_mount(rootfs: Path) -> None:
    result = sh(
        str(rootfs),
        "touch /file; echo root=$?; touch /scratch/file; echo scratch=$?",
        read_only_rootfs=True,
        mounts=[Mount("tmpfs", "/scratch", options=("size=1m",))],
    )
    assert "root=1" in text(result) and "scratch=0" in text(result)
    assert not (rootfs / "file").exists()
    assert not (rootfs / "scratch").exists()  # the mount point was a placeholder, removed again


def test_dev_proc_and_hostname(rootfs: Path) -> None:
    script = (
        "echo x > /dev/null && head -c 5 /dev/urandom | wc -c && head -c 3 /dev/zero | wc -c && "
        "test -c /dev/pts/ptmx && test -L /dev/ptmx && test -d /dev/shm && hostname && cat /proc/1/cmdline | tr '\\0' ' '"
    )
    result = sh(str(rootfs), script, hostname="builder-host")
    lines = text(result).splitlines()
    assert result.exit_code == 0, text(result)
    assert lines[:3] == ["5", "3", "builder-host"]
    assert "kiln.sandbox.init" in lines[3]


def own_staging_dirs() -> list[str]:
    base = Path(tempfile.gettempdir()) / "kiln-sandbox-0"
    return [p.name for p in base.iterdir() if p.name.startswith(f"{os.getpid()}-")]


def _cap_mask(names: tuple[str, ...]) -> int:
    return sum(1 << CAP_NUMBERS[n] for n in names)


def test_real_root_step_keeps_only_default_capabilities(rootfs: Path) -> None:
    result = sh(str(rootfs), "grep CapBnd /proc/self/status; mknod /tmp/disk b 8 0; echo mknod=$?")
    bounding = int(text(result).split()[1], 16)
    assert bounding == _cap_mask(DEFAULT_CAPABILITIES)
    assert "mknod=1" in text(result)
    everything = sh(str(rootfs), "grep CapEff /proc/self/status", capabilities=None)
    assert int(text(everything).split()[1], 16) >> CAP_NUMBERS["CAP_SYS_ADMIN"] & 1


def test_real_root_cannot_write_host_kernel_settings(rootfs: Path) -> None:
    result = sh(str(rootfs), "echo 1 > /proc/sys/kernel/sysrq; echo sysctl=$?; echo > /proc/sysrq-trigger; echo trigger=$?")
    assert "sysctl=1" in text(result) and "trigger=1" in text(result)


def _overlay(tmp_path: Path) -> tuple[Path, Path, Path, OverlayRootfs]:
    base = make_busybox_rootfs(tmp_path / "base", mountpoints=False)
    (base / "old").write_text("old\n")
    top = tmp_path / "top"
    top.mkdir()
    (top / "top-file").write_text("top\n")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    return base, top, upper, OverlayRootfs((str(top), str(base)), str(upper), str(work))


def test_overlay_root_writes_land_in_the_upper_dir_only(tmp_path: Path) -> None:
    base, top, upper, root = _overlay(tmp_path)
    before = sorted(str(p.relative_to(base)) for p in base.rglob("*"))
    result = sh(root, "cat /top-file /old; echo new > /new; rm /old; mkdir -p /usr/local/x; ls /proc/1 > /dev/null")
    assert result.exit_code == 0, text(result)
    assert text(result) == "top\nold\n"
    assert sorted(str(p.relative_to(base)) for p in base.rglob("*")) == before
    assert sorted(p.name for p in top.iterdir()) == ["top-file"]
    assert sorted(os.listdir(upper)) == ["new", "old", "usr"]
    assert (upper / "new").read_text() == "new\n"
    st = os.lstat(upper / "old")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0  # overlayfs whiteout
    # The image had no /proc, /dev, /sys or /etc/hosts: their mount points came from the scratch
    # layer and never reached the upper directory.
    assert result.placeholders == ()


def test_bad_overlay_is_a_sandbox_error(tmp_path: Path) -> None:
    root = OverlayRootfs((str(tmp_path / "missing"),), str(tmp_path / "u"), str(tmp_path / "w"))
    with pytest.raises(SandboxError, match="sandbox setup failed"):
        sh(root, "true")


def _nested_spec(tmp_path: Path, mask_proc: bool) -> ProcessSpec:
    inner = make_busybox_rootfs(tmp_path / "inner-rootfs")
    outer = make_python_rootfs(tmp_path / "outer", NESTED_INNER_SPEC)
    kiln_code = Path(kiln.__file__).resolve().parent.parent
    mounts = [Mount.from_json(m) for m in nested_mounts(kiln_code, inner)]
    return ProcessSpec(rootfs=str(outer), argv=NESTED_ARGV, env=dict(NESTED_ENV), mounts=mounts, mask_proc=mask_proc)


def test_kiln_nests_inside_a_real_root_sandbox_with_unmasked_proc(tmp_path: Path) -> None:
    result = run(_nested_spec(tmp_path, mask_proc=False))
    lines = text(result).splitlines()
    assert result.exit_code == 0, text(result)
    assert lines[0] == "nested-ok"
    assert lines[1].split() == ["0", "0", "4294967295"]  # identity map of the host's ids
    assert int(lines[2]) < 6


def test_masked_proc_prevents_nesting_with_a_clear_error(tmp_path: Path) -> None:
    result = run(_nested_spec(tmp_path, mask_proc=True))
    assert result.exit_code == 125
    assert "sandbox setup failed" in text(result) and "proc" in text(result)


def test_overlay_with_many_deep_layers_and_awkward_names(tmp_path: Path) -> None:
    base = make_busybox_rootfs(tmp_path / "base")
    layers = []
    for i in range(120):
        layer = tmp_path / ("layer:with,odd-name-" + "x" * 80) / f"{i:03d}"
        layer.mkdir(parents=True)
        (layer / f"file{i:03d}").write_text(f"{i}\n")
        layers.append(str(layer))
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    # 120 paths of ~150 characters would overflow the one-page option string if passed as is.
    root = OverlayRootfs((*reversed(layers), str(base)), str(upper), str(work))
    result = sh(root, "ls / | grep -c '^file'; cat /file000 /file119")
    assert text(result).split() == ["120", "0", "119"]


def test_large_stdin_and_a_command_that_ignores_it(rootfs: Path) -> None:
    data = b"x" * (3 << 20)  # larger than any pipe buffer
    counted = run(ProcessSpec(rootfs=str(rootfs), argv=["wc", "-c"], env=dict(PATH_ENV), stdin=data))
    assert text(counted).strip() == str(len(data))
    ignored = run(ProcessSpec(rootfs=str(rootfs), argv=["true"], env=dict(PATH_ENV), stdin=data))
    assert ignored.exit_code == 0


def test_concurrent_runs_from_worker_threads(rootfs: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> str:
        return text(sh(str(rootfs), f"echo run-{i}; hostname", hostname=f"h{i}"))

    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(one, range(8)))
    assert outputs == [f"run-{i}\nh{i}\n" for i in range(8)]
