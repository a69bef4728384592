"""Registry credentials from the files Docker and podman write.

Search order, first hit wins:

1. ``RegistryOptions.auth_file`` if given (and nothing else), otherwise
2. ``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
   ``$XDG_CONFIG_HOME/containers/auth.json`` (containers-auth.json format), then
3. ``RegistryOptions.docker_config`` or ``$DOCKER_CONFIG`` or ``~/.docker``, file ``config.json``.

In each file: ``credHelpers[registry]`` names a ``docker-credential-<name>`` program for that
registry; else ``credsStore`` names one for all; else ``auths`` holds ``auth`` (base64
``user:password``), ``username``/``password`` or ``identitytoken``. ``auths`` keys may be a
host, a URL (``https://index.docker.io/v1/``) or, as containers-auth.json allows, a
``host/namespace`` prefix; the longest matching prefix wins.

Secrets never leave this module in a message or a repr.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kiln.errors import AuthError
from kiln.registry.options import RegistryOptions
from kiln.registry.reference import DOCKER_HUB

#: The server URL Docker uses as the key for Docker Hub in config.json and credential helpers.
HUB_SERVER_URL = "https://index.docker.io/v1/"
_HUB_KEYS = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})
#: Username a credential helper returns when ``Secret`` is an identity (refresh) token.
_TOKEN_USER = "<token>"
_HELPER_TIMEOUT = 30.0


@dataclass(frozen=True)
class Credential:
    """Username and password, or an identity token for the OAuth2 refresh-token grant."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    def __repr__(self) -> str:
        secret = "<redacted>" if (self.password or self.identity_token) else "<none>"
        return f"Credential(username={self.username!r}, secret={secret})"

    __str__ = __repr__

    @property
    def has_basic(self) -> bool:
        return bool(self.username or self.password)


def normalize_key(key: str) -> str:
    """An ``auths``/``credHelpers`` key as ``host[/path]``; Docker Hub spellings become docker.io."""
    k = key.strip()
    had_scheme = "://" in k
    if had_scheme:
        k = k.split("://", 1)[1]
    k = k.rstrip("/")
    host, sep, path = k.partition("/")
    if had_scheme:
        # Docker's legacy keys are URLs whose path (/v1/, /v2/) is not a namespace.
        sep, path = "", ""
    if host.lower() in _HUB_KEYS:
        host = DOCKER_HUB
    return host + sep + path


def candidate_files(options: RegistryOptions) -> list[Path]:
    if options.auth_file is not None:
        return [options.auth_file]
    env = os.environ
    files: list[Path] = []
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    config_home = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    files.append(config_home / "containers" / "auth.json")
    if options.docker_config is not None:
        files.append(options.docker_config / "config.json")
    elif env.get("DOCKER_CONFIG"):
        files.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    else:
        files.append(Path.home() / ".docker" / "config.json")
    return files


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AuthError(f"{path}: cannot read credentials file: {e.strerror}") from None
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        # The position is safe to show; the offending text might be a secret.
        raise AuthError(f"{path}: not valid JSON (line {getattr(e, 'lineno', '?')})") from None
    if not isinstance(obj, dict):
        raise AuthError(f"{path}: expected a JSON object")
    return obj


def _from_entry(entry: Any, where: str) -> Credential | None:
    if not isinstance(entry, dict):
        raise AuthError(f"{where}: expected an object")
    username = entry.get("username") or ""
    password = entry.get("password") or ""
    token = entry.get("identitytoken") or ""
    encoded = entry.get("auth") or ""
    if encoded:
        try:
            decoded = base64.b64decode(encoded, validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise AuthError(f"{where}: field 'auth' is not base64 of user:password") from None
        user, sep, pw = decoded.partition(":")
        if not sep:
            raise AuthError(f"{where}: field 'auth' is not base64 of user:password")
        username, password = user, pw
    if not (username or password or token):
        return None
    return Credential(username=str(username), password=str(password), identity_token=str(token))


def run_helper(helper: str, server_url: str) -> Credential | None:
    """Ask ``docker-credential-<helper> get`` for ``server_url``; None when it has nothing."""
    program = f"docker-credential-{helper}"
    try:
        proc = subprocess.run(
            [program, "get"],
            input=server_url.encode(),
            capture_output=True,
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise AuthError(f"credential helper {program} not found on PATH (for {server_url})") from None
    except subprocess.TimeoutExpired:
        raise AuthError(f"credential helper {program} timed out (for {server_url})") from None
    if proc.returncode != 0:
        said = (proc.stdout or proc.stderr).decode("utf-8", "replace").strip()
        if "credentials not found" in said.lower():
            return None
        raise AuthError(f"credential helper {program} failed for {server_url} (exit {proc.returncode})")
    try:
        obj = json.loads(proc.stdout)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AuthError(f"credential helper {program} printed something that is not JSON") from None
    if not isinstance(obj, dict):
        raise AuthError(f"credential helper {program} printed something that is not a JSON object")
    user = str(obj.get("Username") or "")
    secret = str(obj.get("Secret") or "")
    if not secret and not user:
        return None
    if user == _TOKEN_USER:
        return Credential(identity_token=secret)
    return Credential(username=user, password=secret)


def _helper_server_urls(registry: str) -> list[str]:
    if registry == DOCKER_HUB:
        return [HUB_SERVER_URL, DOCKER_HUB]
    return [registry, f"https://{registry}"]


def _lookup_in(cfg: dict[str, Any], path: Path, registry: str, repository: str) -> Credential | None:
    helpers = cfg.get("credHelpers") or {}
    if isinstance(helpers, dict):
        for key, helper in helpers.items():
            if normalize_key(key) == registry and isinstance(helper, str) and helper:
                return _ask_helper(helper, registry)
    auths = cfg.get("auths") or {}
    if not isinstance(auths, dict):
        raise AuthError(f"{path}: field 'auths' must be an object")
    # Longest namespace prefix first: "host/org/team", "host/org", "host".
    wanted = [
        registry + "/" + "/".join(repository.split("/")[:n]) for n in range(repository.count("/") + 1, 0, -1)
    ]
    wanted.append(registry)
    normalized = {normalize_key(k): (k, v) for k, v in auths.items()}
    for key in wanted:
        if key in normalized:
            raw_key, entry = normalized[key]
            found = _from_entry(entry, f"{path}: auths[{raw_key!r}]")
            if found is not None:
                return found
    store = cfg.get("credsStore")
    if isinstance(store, str) and store:
        return _ask_helper(store, registry)
    return None


def _ask_helper(helper: str, registry: str) -> Credential | None:
    for url in _helper_server_urls(registry):
        found = run_helper(helper, url)
        if found is not None:
            return found
    return None


def lookup(registry: str, repository: str, options: RegistryOptions) -> Credential | None:
    """Credentials for ``registry`` (its name as in a reference, e.g. ``docker.io``), or None."""
    registry = normalize_key(registry)
    for path in candidate_files(options):
        cfg = _load(path)
        if cfg is None:
            continue
        found = _lookup_in(cfg, path, registry, repository)
        if found is not None:
            return found
    return None
