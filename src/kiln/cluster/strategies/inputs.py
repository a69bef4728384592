"""FetchInputs: the source a build starts from (git, an uploaded binary, or a given directory),
its contextDir, and the build secrets and config maps copied into it (OpenShift semantics)."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kiln.cluster.models import BuildSource, GitBuildSource
from kiln.cluster.strategies.environment import BuildEnvironment
from kiln.errors import KilnError


class FetchSourceError(KilnError):
    pass


@dataclass(frozen=True)
class Inputs:
    root: Path  # the whole fetched source
    context: Path  # root / contextDir
    commit: str | None = None


def fetch_inputs(source: BuildSource, env: BuildEnvironment) -> Inputs:
    root = env.workspace / "source"
    root.mkdir(parents=True, exist_ok=True)
    commit = None
    if env.source_dir is not None:
        _copy_tree(env.source_dir, root)
    elif source.git is not None:
        commit = clone(source.git, root, env)
    elif source.binary is not None:
        if not source.binary.artifact:
            raise FetchSourceError("binary build without input: start it with `kiln start-build --from-dir DIR` or `--from-file FILE`")
        from kiln.cluster.binary import download

        env.say(f"--> FetchInputs: binary input {source.binary.artifact}")
        download(source.binary.artifact, env.store, root, env.registry)
    context = _inside(root, source.context_dir or "", "contextDir")
    if not context.is_dir():
        raise FetchSourceError(f"contextDir {source.context_dir!r}: no such directory in the source")
    for item in source.secrets:
        _copy_input(env, "secrets", item.secret.name, context, item.destination_dir)
    for cm in source.config_maps:
        _copy_input(env, "configmaps", cm.config_map.name, context, cm.destination_dir)
    return Inputs(root, context, commit)


def _inside(root: Path, rel: str, what: str) -> Path:
    path = (root / rel.lstrip("/")).resolve()
    if path != root.resolve() and root.resolve() not in path.parents:
        raise FetchSourceError(f"{what} {rel!r} leaves the source directory")
    return path


def _copy_tree(src: Path, dest: Path) -> None:
    if not src.is_dir():
        raise FetchSourceError(f"{src}: not a directory")
    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)


def _copy_input(env: BuildEnvironment, kind: str, name: str, context: Path, destination: str) -> None:
    mounted = env.input_dir(kind, name)
    what = "secret" if kind == "secrets" else "config map"
    if mounted is None:
        raise FetchSourceError(f"build {what} {name!r} is not mounted (expected under {env.inputs_dir}/{kind}/{name})")
    target = _inside(context, destination, f"{what} {name} destinationDir")
    target.mkdir(parents=True, exist_ok=True)
    # Kubernetes projects keys as symlinks into a ..data directory: copy the files they point at
    for entry in sorted(mounted.iterdir()):
        if entry.name.startswith("..") or not entry.is_file():
            continue
        shutil.copyfile(entry, target / entry.name)


def clone(git: GitBuildSource, dest: Path, env: BuildEnvironment) -> str:
    """Check out ``git.ref`` (or the remote HEAD) into ``dest`` with depth 1; returns the commit."""
    env.say(f"--> FetchInputs: cloning {git.uri}" + (f" at {git.ref}" if git.ref else ""))
    run_env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", **_credentials(env)}
    _git(["init", "-q", str(dest)], run_env)
    _git(["-C", str(dest), "remote", "add", "origin", git.uri], run_env)
    want = git.ref or "HEAD"
    try:
        _git(["-C", str(dest), "fetch", "-q", "--depth", "1", "origin", want], run_env)
    except FetchSourceError:
        # a commit the server will not serve shallowly: fetch everything, then check it out
        _git(["-C", str(dest), "fetch", "-q", "origin"], run_env)
        _git(["-C", str(dest), "checkout", "-q", want], run_env)
    else:
        _git(["-C", str(dest), "checkout", "-q", "FETCH_HEAD"], run_env)
    _git(["-C", str(dest), "submodule", "update", "-q", "--init", "--recursive", "--depth", "1"], run_env)
    return _git(["-C", str(dest), "rev-parse", "HEAD"], run_env).strip()


def _credentials(env: BuildEnvironment) -> dict[str, str]:
    """The sourceSecret as git configuration in the environment (never on a command line)."""
    secret = env.input_dir("source-secret")
    if secret is None:
        return {}
    user, password, key = (secret / "username", secret / "password", secret / "ssh-privatekey")
    if key.is_file():
        return {"GIT_SSH_COMMAND": f"ssh -i {key} -o IdentitiesOnly=yes -o StrictHostKeyChecking=accept-new"}
    if password.is_file():
        name = user.read_text().strip() if user.is_file() else ""
        token = base64.b64encode(f"{name}:{password.read_text().strip()}".encode()).decode()
        return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader", "GIT_CONFIG_VALUE_0": f"Authorization: Basic {token}"}
    return {}


def _git(args: list[str], env: dict[str, str]) -> str:
    try:
        done = subprocess.run(["git", *args], env=env, capture_output=True, text=True, timeout=600, check=False)
    except FileNotFoundError as e:
        raise FetchSourceError("git is not installed") from e
    if done.returncode != 0:
        sub = args[2] if args[0] == "-C" else args[0]
        raise FetchSourceError(f"git {sub} failed: {done.stderr.strip()[-500:]}")
    return done.stdout
