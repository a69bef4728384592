"""Incoming build webhooks: verify who sent them, then read which commit they are about.

Pure functions over (headers, body); the HTTP server and the Kubernetes side live elsewhere.

    verify(WebhookKind.GITHUB, headers, body, secret)   # raises WebhookRejected(status=401, ...)
    event = parse(WebhookKind.GITHUB, headers, body)    # raises WebhookRejected(400/415)
    if event.skip_reason is None and branch_allowed(event, ["main", "release/*"]): ...

Provider tag pushes, pings, deleted branches and unrelated events parse to an event with a
`skip_reason`: they are valid deliveries (the sender must see a 2xx or it retries) that start no
build. A generic webhook is an explicit "build this" from a script, so its ref is never skipped.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fnmatch import fnmatchcase
from typing import Any

HEADS = "refs/heads/"
TAGS = "refs/tags/"
ZERO_SHA = "0" * 40
MAX_TEXT = 200  # author and message are for Build annotations and logs, not the full commit


class WebhookKind(StrEnum):
    GENERIC = "generic"
    GITHUB = "github"
    GITLAB = "gitlab"
    BITBUCKET = "bitbucket"


@dataclass(frozen=True)
class WebhookEvent:
    kind: WebhookKind
    ref: str | None = None
    branch: str | None = None
    commit: str | None = None
    author: str | None = None
    message: str | None = None
    skip_reason: str | None = None


class WebhookRejected(Exception):
    """A delivery refused with an HTTP status; the message is safe to return to the sender."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ---- verification ---------------------------------------------------------------------------


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {key.lower(): value for key, value in headers.items()}


def _raw(value: str) -> list[bytes]:
    # http.server decodes header bytes as latin-1, so encoding back recovers the bytes sent;
    # a header value handed over as real text is also tried as UTF-8 (the same for ASCII).
    value = value.strip()
    encodings = [value.encode("utf-8")]
    try:
        encodings.append(value.encode("latin-1"))
    except UnicodeEncodeError:
        pass
    return encodings


def _signature_ok(header: str | None, body: bytes, secret: bytes) -> bool:
    if header is None:
        return False
    # A list, not a generator: every encoding is compared, whichever one matches.
    expected = b"sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest().encode()
    return any([hmac.compare_digest(expected, offered.lower()) for offered in _raw(header)])


def _token_ok(header: str | None, secret: bytes) -> bool:
    return header is not None and any([hmac.compare_digest(offered, secret) for offered in _raw(header)])


def verify(kind: WebhookKind | str, headers: Mapping[str, str], body: bytes, secret: bytes) -> None:
    """Raise WebhookRejected(401) unless the delivery carries proof of `secret` for its kind."""
    kind = WebhookKind(kind)
    if not secret:
        # An empty secret would make every HMAC forgeable and every token trivially equal.
        raise WebhookRejected(401, "no webhook secret is configured; every delivery is refused")
    h = _lower(headers)
    if kind is WebhookKind.GITHUB:
        name, ok = "X-Hub-Signature-256", _signature_ok(h.get("x-hub-signature-256"), body, secret)
    elif kind is WebhookKind.GITLAB:
        name, ok = "X-Gitlab-Token", _token_ok(h.get("x-gitlab-token"), secret)
    elif kind is WebhookKind.BITBUCKET:
        name, ok = "X-Hub-Signature", _signature_ok(h.get("x-hub-signature"), body, secret)
    else:
        # Evaluate both so the time taken does not reveal which header was checked.
        by_signature = _signature_ok(h.get("x-hub-signature-256"), body, secret)
        by_token = _token_ok(h.get("x-kiln-webhook-secret"), secret)
        name, ok = "X-Hub-Signature-256 or X-Kiln-Webhook-Secret", by_signature or by_token
    if not ok:
        raise WebhookRejected(401, f"missing or invalid {name}")


# ---- parsing --------------------------------------------------------------------------------


def _short(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    first_line = value.strip().splitlines()[0]
    return first_line[:MAX_TEXT]


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _json_object(h: Mapping[str, str], body: bytes) -> dict[str, Any]:
    if not _is_json(h.get("content-type")):
        raise WebhookRejected(415, "the body must be JSON (Content-Type: application/json)")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise WebhookRejected(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise WebhookRejected(400, "the body must be a JSON object")
    return data


def _str(data: Mapping[str, Any], key: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise WebhookRejected(400, f"{key!r} must be a non-empty string")
    return value


def _obj(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise WebhookRejected(400, f"{key!r} must be an object")
    return value


def _event(kind: WebhookKind, ref: str | None, commit: str | None, **extra: str | None) -> WebhookEvent:
    branch = ref[len(HEADS) :] if ref is not None and ref.startswith(HEADS) else None
    return WebhookEvent(kind=kind, ref=ref, branch=branch or None, commit=commit, **extra)


def _ref_skip(ref: str, deleted: bool) -> str | None:
    if deleted:
        return "tag deleted" if ref.startswith(TAGS) else "branch deleted"
    if ref.startswith(TAGS):
        return "tag push"
    if not ref.startswith(HEADS):
        return f"push to {ref}, which is not a branch"
    return None


def _event_header(h: Mapping[str, str], name: str) -> str:
    value = h.get(name.lower())
    if not value:
        raise WebhookRejected(400, f"missing {name} header")
    return value.strip()


def _github(h: Mapping[str, str], body: bytes) -> WebhookEvent:
    kind = WebhookKind.GITHUB
    event = _event_header(h, "X-GitHub-Event")
    data = _json_object(h, body)
    if event == "ping":
        return WebhookEvent(kind=kind, skip_reason="GitHub ping")
    if event != "push":
        return WebhookEvent(kind=kind, skip_reason=f"GitHub event {event[:40]!r} starts no build")
    ref = _str(data, "ref", required=True)
    assert ref is not None
    after = _str(data, "after")
    head = _obj(data, "head_commit")
    author = _obj(head, "author").get("name") or _obj(data, "pusher").get("name")
    deleted = data.get("deleted") is True or after == ZERO_SHA
    return _event(
        kind,
        ref,
        None if deleted else after,
        author=_short(author),
        message=_short(head.get("message")),
        skip_reason=_ref_skip(ref, deleted),
    )


def _gitlab(h: Mapping[str, str], body: bytes) -> WebhookEvent:
    kind = WebhookKind.GITLAB
    event = _event_header(h, "X-Gitlab-Event")
    data = _json_object(h, body)
    if event not in ("Push Hook", "Tag Push Hook"):
        return WebhookEvent(kind=kind, skip_reason=f"GitLab event {event[:40]!r} starts no build")
    ref = _str(data, "ref", required=True)
    assert ref is not None
    commit = _str(data, "checkout_sha") or _str(data, "after")
    deleted = commit is None or commit == ZERO_SHA
    # `commits` lists up to 20 pushed commits; the message shown is the one that gets built.
    commits = data.get("commits")
    commits = commits if isinstance(commits, list) else []
    built = next((c for c in commits if isinstance(c, dict) and c.get("id") == commit), {})
    return _event(
        kind,
        ref,
        None if deleted else commit,
        author=_short(data.get("user_name")),
        message=_short(built.get("message")),
        skip_reason=_ref_skip(ref, deleted),
    )


def _bitbucket_cloud(data: dict[str, Any]) -> WebhookEvent:
    kind = WebhookKind.BITBUCKET
    changes = _obj(data, "push").get("changes")
    if not isinstance(changes, list) or not all(isinstance(c, dict) for c in changes):
        raise WebhookRejected(400, "'push.changes' must be a list of objects")
    if not changes:
        return WebhookEvent(kind=kind, skip_reason="push without changes")
    change = changes[-1]
    new, old = _obj(change, "new"), _obj(change, "old")
    state = new or old
    name = _str(state, "name", required=True)
    prefix = HEADS if state.get("type") in ("branch", "named_branch") else TAGS
    ref = f"{prefix}{name}"
    target = _obj(new, "target")
    author = _obj(target, "author")
    return _event(
        kind,
        ref,
        _str(target, "hash"),
        author=_short(_obj(author, "user").get("display_name") or author.get("raw")),
        message=_short(target.get("message")),
        skip_reason=_ref_skip(ref, deleted=not new),
    )


def _bitbucket_datacenter(data: dict[str, Any]) -> WebhookEvent:
    kind = WebhookKind.BITBUCKET
    changes = data.get("changes")
    if not isinstance(changes, list) or not all(isinstance(c, dict) for c in changes):
        raise WebhookRejected(400, "'changes' must be a list of objects")
    if not changes:
        return WebhookEvent(kind=kind, skip_reason="push without changes")
    change = changes[-1]
    ref = _str(change, "refId") or _str(_obj(change, "ref"), "id", required=True)
    assert ref is not None
    deleted = change.get("type") == "DELETE"
    return _event(
        kind,
        ref,
        None if deleted else _str(change, "toHash"),
        author=_short(_obj(data, "actor").get("displayName")),
        skip_reason=_ref_skip(ref, deleted),
    )


def _bitbucket(h: Mapping[str, str], body: bytes) -> WebhookEvent:
    event = _event_header(h, "X-Event-Key")
    data = _json_object(h, body)
    if event == "repo:push":  # Bitbucket Cloud
        return _bitbucket_cloud(data)
    if event == "repo:refs_changed":  # Bitbucket Data Center
        return _bitbucket_datacenter(data)
    reason = (
        "Bitbucket ping" if event == "diagnostics:ping" else f"Bitbucket event {event[:40]!r} starts no build"
    )
    return WebhookEvent(kind=WebhookKind.BITBUCKET, skip_reason=reason)


def _generic(h: Mapping[str, str], body: bytes) -> WebhookEvent:
    kind = WebhookKind.GENERIC
    if not body.strip():
        # OpenShift's generic webhook: no body means "build the BuildConfig's own source ref".
        return WebhookEvent(kind=kind)
    git = _obj(_json_object(h, body), "git")
    ref = _str(git, "ref")
    if ref is not None and not ref.startswith("refs/"):
        ref = HEADS + ref  # OpenShift's examples send a bare branch name ("master")
    return _event(
        kind,
        ref,
        _str(git, "commit"),
        author=_short(_obj(git, "author").get("name")),
        message=_short(git.get("message")),
    )


def parse(kind: WebhookKind | str, headers: Mapping[str, str], body: bytes) -> WebhookEvent:
    """The event a (verified) delivery describes; WebhookRejected(400/415) if it is malformed."""
    kind = WebhookKind(kind)
    h = _lower(headers)
    if kind is WebhookKind.GITHUB:
        return _github(h, body)
    if kind is WebhookKind.GITLAB:
        return _gitlab(h, body)
    if kind is WebhookKind.BITBUCKET:
        return _bitbucket(h, body)
    return _generic(h, body)


def branch_allowed(event: WebhookEvent, patterns: Sequence[str]) -> bool:
    """Whether `patterns` (fnmatch globs, case-sensitive like git refs) let `event` build.

    No patterns allow everything. A branch is matched by name ("main", "release/*"); an event
    with a ref but no branch (a tag) only by its full ref ("refs/tags/v*"). An event without any
    ref asks for the BuildConfig's own source ref, which the filter cannot veto.
    """
    if not patterns:
        return True
    if event.branch is not None:
        return any(fnmatchcase(event.branch, pattern) for pattern in patterns)
    if event.ref is not None:
        return any(fnmatchcase(event.ref, pattern) for pattern in patterns)
    return True
