"""Credentials from config.json / auth.json and real docker-credential-* helper programs."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from kiln.errors import AuthError
from kiln.registry.credentials import Credential, lookup, normalize_key
from kiln.registry.options import RegistryOptions


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME with no credentials anywhere, and none of the variables that point elsewhere."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    return home


def write_json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


HELPER = """#!/bin/sh
# A docker credential helper speaking the real protocol: `get`, server URL on stdin, JSON out.
read url
echo "$url" >> "$(dirname "$0")/calls.log"
case "$url" in
  helped.example.com) printf '{"ServerURL":"%s","Username":"helper-user","Secret":"helper-secret"}' "$url" ;;
  https://index.docker.io/v1/) printf '{"ServerURL":"%s","Username":"hub-user","Secret":"hub-secret"}' "$url" ;;
  tokened.example.com) printf '{"ServerURL":"%s","Username":"<token>","Secret":"refresh-abc"}' "$url" ;;
  broken.example.com) echo "internal failure helper-secret-must-not-leak" >&2; exit 3 ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
"""


@pytest.fixture
def helper_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    exe = d / "docker-credential-test"
    exe.write_text(HELPER)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{d}{os.pathsep}{os.environ['PATH']}")
    return d


def test_normalize_key() -> None:
    assert normalize_key("https://index.docker.io/v1/") == "docker.io"
    assert normalize_key("index.docker.io") == "docker.io"
    assert normalize_key("http://localhost:5000/v2/") == "localhost:5000"
    assert normalize_key("quay.io/org/") == "quay.io/org"
    assert normalize_key("registry-1.docker.io") == "docker.io"


def test_nothing_configured(clean_env: Path) -> None:
    assert lookup("quay.io", "a/b", RegistryOptions()) is None


def test_docker_config_auth_field(clean_env: Path) -> None:
    write_json(clean_env / ".docker/config.json", {"auths": {"quay.io": {"auth": b64("u:p:with:colons")}}})
    assert lookup("quay.io", "a/b", RegistryOptions()) == Credential("u", "p:with:colons")


def test_username_password_and_identitytoken(clean_env: Path) -> None:
    write_json(
        clean_env / ".docker/config.json",
        {
            "auths": {
                "https://index.docker.io/v1/": {"username": "hub", "password": "pw"},
                "reg.example.com": {"identitytoken": "idtok"},
            }
        },
    )
    assert lookup("docker.io", "library/x", RegistryOptions()) == Credential("hub", "pw")
    assert lookup("reg.example.com", "x", RegistryOptions()) == Credential(identity_token="idtok")


def test_docker_config_env_and_option(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_json(tmp_path / "env/config.json", {"auths": {"r.io": {"auth": b64("env:1")}}})
    write_json(tmp_path / "opt/config.json", {"auths": {"r.io": {"auth": b64("opt:2")}}})
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "env"))
    assert lookup("r.io", "x", RegistryOptions()) == Credential("env", "1")
    assert lookup("r.io", "x", RegistryOptions(docker_config=tmp_path / "opt")) == Credential("opt", "2")


def test_containers_auth_files_precede_docker_config(
    clean_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_json(clean_env / ".docker/config.json", {"auths": {"r.io": {"auth": b64("docker:0")}}})
    runtime = write_json(
        tmp_path / "run/containers/auth.json", {"auths": {"r.io": {"auth": b64("runtime:1")}}}
    )
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert lookup("r.io", "x", RegistryOptions()) == Credential("runtime", "1")
    env_file = write_json(tmp_path / "auth.json", {"auths": {"r.io": {"auth": b64("envfile:2")}}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(env_file))
    assert lookup("r.io", "x", RegistryOptions()) == Credential("envfile", "2")
    # An explicit auth file is the only source consulted.
    assert lookup("r.io", "x", RegistryOptions(auth_file=tmp_path / "missing.json")) is None
    assert lookup("r.io", "x", RegistryOptions(auth_file=runtime)) == Credential("runtime", "1")


def test_namespaced_keys_longest_prefix_wins(clean_env: Path) -> None:
    write_json(
        clean_env / ".docker/config.json",
        {
            "auths": {
                "quay.io": {"auth": b64("registry:0")},
                "quay.io/org": {"auth": b64("org:1")},
                "quay.io/org/team": {"auth": b64("team:2")},
            }
        },
    )
    assert lookup("quay.io", "org/team/app", RegistryOptions()) == Credential("team", "2")
    assert lookup("quay.io", "org/other", RegistryOptions()) == Credential("org", "1")
    assert lookup("quay.io", "elsewhere/x", RegistryOptions()) == Credential("registry", "0")


def test_cred_helpers_and_creds_store(clean_env: Path, helper_dir: Path) -> None:
    write_json(
        clean_env / ".docker/config.json",
        {
            "auths": {
                "helped.example.com": {"auth": b64("file:ignored")},
                "plain.example.com": {"auth": b64("f:1")},
            },
            "credHelpers": {"helped.example.com": "test"},
        },
    )
    assert lookup("helped.example.com", "x", RegistryOptions()) == Credential("helper-user", "helper-secret")
    assert lookup("plain.example.com", "x", RegistryOptions()) == Credential("f", "1")
    assert (helper_dir / "calls.log").read_text().splitlines() == ["helped.example.com"]

    write_json(clean_env / ".docker/config.json", {"auths": {"docker.io": {}}, "credsStore": "test"})
    assert lookup("docker.io", "library/busybox", RegistryOptions()) == Credential("hub-user", "hub-secret")
    assert lookup("tokened.example.com", "x", RegistryOptions()) == Credential(identity_token="refresh-abc")
    # "credentials not found" is an answer (no credentials), not an error.
    assert lookup("unknown.example.com", "x", RegistryOptions()) is None
    assert "https://index.docker.io/v1/" in (helper_dir / "calls.log").read_text().splitlines()


def test_helper_failures_are_clear_and_leak_nothing(clean_env: Path, helper_dir: Path) -> None:
    write_json(
        clean_env / ".docker/config.json",
        {"credHelpers": {"broken.example.com": "test", "missing.example.com": "nosuchhelper"}},
    )
    with pytest.raises(AuthError) as err:
        lookup("broken.example.com", "x", RegistryOptions())
    assert "docker-credential-test" in str(err.value) and "exit 3" in str(err.value)
    assert "helper-secret" not in str(err.value)
    with pytest.raises(AuthError, match="docker-credential-nosuchhelper not found"):
        lookup("missing.example.com", "x", RegistryOptions())


def test_bad_files_are_clear_errors(clean_env: Path) -> None:
    path = clean_env / ".docker/config.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"auths": {"r.io": {"auth": "c2VjcmV0LXZhbHVl"}')  # truncated JSON
    with pytest.raises(AuthError, match="not valid JSON") as err:
        lookup("r.io", "x", RegistryOptions())
    assert "c2VjcmV0" not in str(err.value)
    write_json(path, {"auths": {"r.io": {"auth": b64("no-colon-secret")}}})
    with pytest.raises(AuthError, match="user:password") as err:
        lookup("r.io", "x", RegistryOptions())
    assert "no-colon-secret" not in str(err.value)


def test_credential_repr_hides_secrets() -> None:
    c = Credential("alice", "s3cret-pw", "s3cret-token")
    for text in (repr(c), str(c), f"{c}", repr([c])):
        assert "s3cret" not in text
        assert "alice" in text
