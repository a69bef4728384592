"""The CNCF distribution registry's notification envelope, reduced to manifest pushes.

A registry configured with `notifications.endpoints` POSTs batches of events:

    Content-Type: application/vnd.docker.distribution.events.v1+json
    {"events": [{"id": "...", "action": "push",
                 "target": {"mediaType": "...manifest.v2+json", "digest": "sha256:...", "size": 708,
                            "repository": "team/app", "url": "http://reg:5000/v2/...", "tag": "1.0"},
                 "request": {"host": "reg:5000", "method": "PUT", ...}, ...}]}

Only pushes of manifests and indexes matter to image-change triggers: each blob of an image is
pushed (and announced) before its manifest, and pulls, mounts and deletes change no tag.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

ENVELOPE_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
MANIFEST_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)


@dataclass(frozen=True)
class PushEvent:
    registry_host: str
    repository: str
    tag: str | None
    digest: str
    media_type: str


def _text(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: {key!r} must be a non-empty string")
    return value


def _object(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"{where}: {key!r} must be an object")
    return value


def _host(event: dict[str, Any], target: dict[str, Any], where: str) -> str:
    host = _object(event, "request", where).get("host")
    if isinstance(host, str) and host:
        return host
    # request.host is the Host header of the push; a registry behind a proxy may omit it.
    url = target.get("url")
    netloc = urlsplit(url).netloc if isinstance(url, str) else ""
    if not netloc:
        raise ValueError(f"{where}: neither request.host nor target.url names the registry")
    return netloc


def _push_event(event: Any, where: str) -> PushEvent | None:
    if not isinstance(event, dict):
        raise ValueError(f"{where} is not an object")
    if event.get("action") != "push":
        return None
    target = _object(event, "target", where)
    media_type = target.get("mediaType")
    if media_type not in MANIFEST_MEDIA_TYPES:
        return None  # a blob (layer or config), announced before its manifest
    tag = target.get("tag")
    return PushEvent(
        registry_host=_host(event, target, where),
        repository=_text(target, "repository", where),
        tag=tag if isinstance(tag, str) and tag else None,
        digest=_text(target, "digest", where),
        media_type=str(media_type),
    )


def push_events(body: bytes) -> list[PushEvent]:
    """The manifest and index pushes in one notification envelope; ValueError if malformed."""
    try:
        envelope = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the notification body is not valid JSON") from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("events"), list):
        raise ValueError("the notification body has no 'events' list")
    pushes = (_push_event(event, f"events[{i}]") for i, event in enumerate(envelope["events"]))
    return [push for push in pushes if push is not None]
