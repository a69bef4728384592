"""How the node agent is started: as the unprivileged user ``builder`` when we are root, so the
containers it runs are in kiln's rootless sandbox (the agent itself is then rootless too).

The agent needs its own directory (store, pod directories, logs) that the user owns, copies of
its credentials it can read, and a Python that can import ``dev``, ``kiln`` and their
dependencies. The checkout's venv is used when that user can read it; otherwise a world-readable
copy of the code and the venv's site-packages is made (as tests/fixtures/rootless.py does).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from dev.pki import Pki

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"
SETPRIV = shutil.which("setpriv") or "/usr/bin/setpriv"


def default_agent_user() -> str:
    """``builder`` when we are root and it exists (KILN_DEV_AGENT_USER overrides), else ourselves."""
    override = os.environ.get("KILN_DEV_AGENT_USER")
    if override:
        return override
    me = pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("builder")
            return "builder"
        except KeyError:
            return me
    return me


@dataclass
class AgentLaunch:
    user: str
    agent_dir: Path
    python: str
    env: dict[str, str] = field(default_factory=dict)

    def argv(self, node_name: str, *, die_with_parent: bool) -> list[str]:
        cmd = [
            self.python, "-m", "dev.node_agent",
            "--kubeconfig", str(self.agent_dir / "kubeconfig"),
            "--state-dir", str(self.agent_dir),
            "--node-name", node_name,
            "--tls-cert", str(self.agent_dir / "tls" / "kubelet.crt"),
            "--tls-key", str(self.agent_dir / "tls" / "kubelet.key"),
            "--client-ca", str(self.agent_dir / "tls" / "ca.crt"),
        ]
        if self.user == pwd.getpwuid(os.geteuid()).pw_name:
            return cmd
        prefix = [SETPRIV, f"--reuid={self.user}", f"--regid={self.user}", "--init-groups"]
        if die_with_parent:
            prefix.append("--pdeathsig=KILL")
        return [*prefix, "--", *cmd]


def _as_user(user: str, argv: list[str], env: dict[str, str]) -> bool:
    if user == pwd.getpwuid(os.geteuid()).pw_name:
        return subprocess.run(argv, env=env, capture_output=True, check=False, cwd="/").returncode == 0
    cmd = [SETPRIV, f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *argv]
    return subprocess.run(cmd, env=env, capture_output=True, check=False, cwd="/", timeout=120).returncode == 0


def _base_env(user: str) -> dict[str, str]:
    entry = pwd.getpwnam(user)
    return {
        "HOME": entry.pw_dir,
        "USER": user,
        "LOGNAME": user,
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "TMPDIR": "/tmp",
    }


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


def _agent_dir(state: Path, user: str) -> Path:
    """STATE/agent if ``user`` can reach it, else a directory under /var/tmp keyed by STATE."""
    candidate = state / "agent"
    if _as_user(user, ["test", "-x", str(state)], _base_env(user)):
        return candidate
    digest = hashlib.sha256(str(state).encode()).hexdigest()[:10]
    return Path("/var/tmp") / f"kiln-dev-agent-{digest}"


def _site_packages() -> Path:
    return REPO / ".venv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


def _python(user: str, agent_dir: Path, env: dict[str, str]) -> tuple[str, str]:
    """(interpreter, PYTHONPATH) with which ``user`` imports the agent."""
    probe = "import dev.node_agent, kiln, httpx, yaml, cryptography"
    direct = f"{REPO}:{REPO / 'src'}"
    if _as_user(user, [sys.executable, "-c", probe], dict(env, PYTHONPATH=direct)):
        return sys.executable, direct
    code = agent_dir / "code"
    shutil.rmtree(code, ignore_errors=True)
    code.mkdir(parents=True)

    def skip(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if n == "__pycache__" or n.startswith("__editable__") or n.endswith(".pth")]

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)  # shares the inode: modes below are only ever widened (read bits)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(REPO / "dev", code / "dev", ignore=skip)
    shutil.copytree(REPO / "src" / "kiln", code / "kiln", ignore=skip)
    shutil.copytree(_site_packages(), code / "site-packages", ignore=skip, copy_function=link_or_copy, symlinks=True)
    for root, _dirs, files in os.walk(code):
        os.chmod(root, 0o755)
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p) and os.stat(p).st_mode & 0o444 != 0o444:
                os.chmod(p, os.stat(p).st_mode | 0o444)
    path = f"{code}:{code / 'site-packages'}"
    if not _as_user(user, [SYSTEM_PYTHON, "-c", probe], dict(env, PYTHONPATH=path)):
        raise RuntimeError(f"user {user} cannot import the node agent even from a copy in {code}")
    return SYSTEM_PYTHON, path


def prepare(state: Path, user: str, pki: Pki, kubeconfig: Path) -> AgentLaunch:
    entry = pwd.getpwnam(user)
    agent_dir = _agent_dir(state, user)
    agent_dir.mkdir(parents=True, exist_ok=True)
    tls = agent_dir / "tls"
    shutil.rmtree(tls, ignore_errors=True)
    tls.mkdir()
    shutil.copyfile(pki.kubelet.cert, tls / "kubelet.crt")
    shutil.copyfile(pki.kubelet.key, tls / "kubelet.key")
    shutil.copyfile(pki.ca.cert, tls / "ca.crt")
    shutil.copyfile(kubeconfig, agent_dir / "kubeconfig")
    os.chmod(agent_dir / "kubeconfig", 0o600)
    os.chmod(tls / "kubelet.key", 0o600)
    os.chmod(agent_dir, 0o700)
    if (state / "agent") != agent_dir:
        (state / "agent-dir").write_text(str(agent_dir) + "\n")
    # Only the top level: the store and pod directories below hold files of the subordinate ids.
    for p in (agent_dir, tls, tls / "kubelet.crt", tls / "kubelet.key", tls / "ca.crt", agent_dir / "kubeconfig"):
        os.chown(p, entry.pw_uid, entry.pw_gid)
    env = _base_env(user)
    python, pythonpath = _python(user, agent_dir, env)
    if (agent_dir / "code").exists():
        _chown_tree(agent_dir / "code", entry.pw_uid, entry.pw_gid)
    env["PYTHONPATH"] = pythonpath
    return AgentLaunch(user=user, agent_dir=agent_dir, python=python, env=env)


def clean_agent_pods(agent_dir: Path) -> None:
    """Remove pod directories left by an earlier agent (root may remove the subordinate ids' files)."""
    for sub in ("pods",):
        shutil.rmtree(agent_dir / sub, ignore_errors=True)
