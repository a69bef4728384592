"""Image pulls for the node agent: kiln's registry client into the agent's own kiln store."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path

from dev.node.podspec import Obj
from kiln.errors import KilnError
from kiln.oci.models import Platform
from kiln.oci.store import Store
from kiln.registry.options import RegistryOptions
from kiln.registry.pull import pull
from kiln.registry.reference import Reference


class PullError(Exception):
    def __init__(self, reason: str, message: str, *, retry: bool = True) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry = retry


def write_pull_auth(directory: Path, secrets: list[Obj]) -> Path | None:
    """A Docker config.json merged from the pod's imagePullSecrets (None if there are none)."""
    auths: dict[str, Obj] = {}
    for secret in secrets:
        data = secret.get("data") or {}
        if ".dockerconfigjson" in data:
            parsed = json.loads(base64.b64decode(data[".dockerconfigjson"]))
            auths.update(parsed.get("auths") or {})
        elif ".dockercfg" in data:
            auths.update(json.loads(base64.b64decode(data[".dockercfg"])))
    if not auths:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps({"auths": auths}))
    (directory / "config.json").chmod(0o600)
    return directory


class ImagePuller:
    """Pulls with the pod's policy; one pull of a given reference at a time."""

    def __init__(self, store_dir: Path) -> None:
        self.store_dir = store_dir
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock(self, ref: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(ref, threading.Lock())

    def ensure(self, image: str, policy: str, auth_dir: Path | None) -> tuple[str, str]:
        """(manifest digest in the store, imageID as the kubelet reports it: name@digest)."""
        try:
            ref = Reference.parse(image)
        except KilnError as exc:
            raise PullError("InvalidImageName", f'Failed to apply default image tag "{image}": {exc}', retry=False) from exc
        store = Store(self.store_dir)
        with self._lock(str(ref)):
            desc = None
            if policy != "Always":
                try:
                    desc = store.resolve(str(ref))
                except KilnError:
                    desc = None
            if desc is None:
                if policy == "Never":
                    raise PullError("ErrImageNeverPull",
                                    f'Container image "{image}" is not present with pull policy of Never', retry=False)
                try:
                    desc = pull(ref, store, platform=Platform(os="linux", architecture="amd64"),
                                options=RegistryOptions(docker_config=auth_dir, max_retries=1))
                except KilnError as exc:
                    raise PullError("ErrImagePull", f"failed to pull image {image}: {exc}") from exc
        return str(desc.digest), f"{ref.name}@{desc.digest}"
