"""Webhook verification and parsing, on payloads shaped like the providers' documented samples,
and the registry notification envelope (pure parsing; the HTTP side is test_trigger_server.py).

Signatures are computed here with hmac/hashlib, the way GitHub and Bitbucket compute them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest

from kiln.cluster.triggers.notifications import PushEvent, push_events
from kiln.cluster.triggers.webhooks import (
    WebhookEvent,
    WebhookKind,
    WebhookRejected,
    branch_allowed,
    parse,
    verify,
)

SECRET = b"It's a Secret to Everybody"
SHA = "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"
OLD_SHA = "4544b3798ac1fe75e0f9d5e1f1ce2b4e7cc4c5d1"
ZERO = "0" * 40
JSON = {"Content-Type": "application/json"}


def sign(body: bytes, secret: bytes = SECRET) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


# ---- payloads (trimmed from the providers' documentation samples) ---------------------------


def github_push(ref: str = "refs/heads/main", *, deleted: bool = False) -> dict[str, Any]:
    return {
        "ref": ref,
        "before": OLD_SHA,
        "after": ZERO if deleted else SHA,
        "created": False,
        "deleted": deleted,
        "forced": False,
        "base_ref": None,
        "compare": "https://github.com/octo-org/octo-repo/compare/4544b3798ac1...0d1a26e67d8f",
        "commits": [] if deleted else [{"id": SHA, "message": "Update README.md\n\nlonger text"}],
        "head_commit": None
        if deleted
        else {
            "id": SHA,
            "tree_id": "f9d2a07e9488b91af2641b26b9407fe22a451433",
            "distinct": True,
            "message": "Update README.md\n\nlonger text",
            "timestamp": "2024-06-05T12:32:16-07:00",
            "author": {"name": "Monalisa Octocat", "email": "mona@github.com", "username": "octocat"},
            "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
        },
        "repository": {"id": 186853002, "name": "octo-repo", "full_name": "octo-org/octo-repo"},
        "pusher": {"name": "octocat", "email": "mona@github.com"},
        "sender": {"login": "octocat", "id": 21031067, "type": "User"},
    }


GITHUB_PING = {
    "zen": "Responsive is better than fast.",
    "hook_id": 109948940,
    "hook": {"type": "Repository", "id": 109948940, "active": True, "events": ["push"]},
    "repository": {"id": 186853002, "full_name": "octo-org/octo-repo"},
    "sender": {"login": "octocat"},
}


def gitlab_push(ref: str = "refs/heads/master", *, deleted: bool = False) -> dict[str, Any]:
    return {
        "object_kind": "tag_push" if ref.startswith("refs/tags/") else "push",
        "event_name": "tag_push" if ref.startswith("refs/tags/") else "push",
        "before": OLD_SHA,
        "after": ZERO if deleted else SHA,
        "ref": ref,
        "ref_protected": True,
        "checkout_sha": None if deleted else SHA,
        "user_id": 4,
        "user_name": "John Smith",
        "user_username": "jsmith",
        "user_email": "john@example.com",
        "project_id": 15,
        "project": {"id": 15, "name": "Diaspora", "path_with_namespace": "mike/diaspora"},
        "commits": []
        if deleted
        else [
            {"id": OLD_SHA, "message": "Update Catalan translation to e38cb41.", "author": {"name": "Jordi"}},
            {"id": SHA, "message": "fixed readme", "author": {"name": "GitLab dev user"}},
        ],
        "total_commits_count": 0 if deleted else 2,
        "repository": {"name": "Diaspora", "homepage": "http://example.com/mike/diaspora"},
    }


def bitbucket_cloud_push(
    kind: str = "branch", name: str = "master", *, deleted: bool = False
) -> dict[str, Any]:
    state = {
        "type": kind,
        "name": name,
        "target": {
            "type": "commit",
            "hash": SHA,
            "message": "Add a feature\n",
            "author": {"raw": "Emma <emma@example.com>", "user": {"display_name": "Emma"}},
            "date": "2024-01-01T00:00:00+00:00",
        },
    }
    return {
        "actor": {"display_name": "Emma", "type": "user"},
        "repository": {"full_name": "team/repo", "type": "repository"},
        "push": {
            "changes": [
                {
                    "new": None if deleted else state,
                    "old": {**state, "target": {"type": "commit", "hash": OLD_SHA}},
                    "created": False,
                    "forced": False,
                    "closed": deleted,
                    "truncated": False,
                }
            ]
        },
    }


BITBUCKET_DC_PUSH = {
    "eventKey": "repo:refs_changed",
    "date": "2017-09-19T09:58:11+1000",
    "actor": {"name": "admin", "displayName": "Administrator", "type": "NORMAL"},
    "repository": {"slug": "repository", "name": "repository", "project": {"key": "PROJ"}},
    "changes": [
        {
            "ref": {"id": "refs/heads/master", "displayId": "master", "type": "BRANCH"},
            "refId": "refs/heads/master",
            "fromHash": OLD_SHA,
            "toHash": SHA,
            "type": "UPDATE",
        }
    ],
}


# ---- verify ---------------------------------------------------------------------------------


def signed_headers(kind: WebhookKind, body: bytes, secret: bytes = SECRET) -> dict[str, str]:
    if kind is WebhookKind.GITHUB:
        return {"X-Hub-Signature-256": sign(body, secret)}
    if kind is WebhookKind.GITLAB:
        return {"X-Gitlab-Token": secret.decode()}
    if kind is WebhookKind.BITBUCKET:
        return {"X-Hub-Signature": sign(body, secret)}
    return {"X-Kiln-Webhook-Secret": secret.decode()}


@pytest.mark.parametrize("kind", list(WebhookKind))
def test_verify_accepts_the_right_secret(kind: WebhookKind) -> None:
    body = dumps(github_push())
    verify(kind, signed_headers(kind, body), body, SECRET)
    verify(kind.value, signed_headers(kind, body), body, SECRET)  # the URL segment works too


@pytest.mark.parametrize("kind", list(WebhookKind))
def test_verify_rejects_a_wrong_secret_of_the_same_length(kind: WebhookKind) -> None:
    body = dumps(github_push())
    wrong = bytes(b ^ 1 for b in SECRET)
    assert len(wrong) == len(SECRET)
    with pytest.raises(WebhookRejected) as info:
        verify(kind, signed_headers(kind, body, wrong), body, SECRET)
    assert info.value.status == 401
    assert SECRET.decode() not in str(info.value)


@pytest.mark.parametrize("kind", list(WebhookKind))
def test_verify_rejects_a_secret_of_another_length(kind: WebhookKind) -> None:
    body = dumps(github_push())
    for wrong in (SECRET[:-1], SECRET + b"x", b"x"):
        with pytest.raises(WebhookRejected) as info:
            verify(kind, signed_headers(kind, body, wrong), body, SECRET)
        assert info.value.status == 401


@pytest.mark.parametrize("kind", list(WebhookKind))
def test_verify_rejects_missing_proof(kind: WebhookKind) -> None:
    body = dumps(github_push())
    with pytest.raises(WebhookRejected) as info:
        verify(kind, JSON, body, SECRET)
    assert info.value.status == 401


@pytest.mark.parametrize("kind", list(WebhookKind))
def test_an_empty_configured_secret_rejects_everything(kind: WebhookKind) -> None:
    body = dumps(github_push())
    # Even a delivery "signed" with the empty key, or carrying an empty token, is refused.
    with pytest.raises(WebhookRejected) as info:
        verify(kind, signed_headers(kind, body, b""), body, b"")
    assert info.value.status == 401


def test_signatures_cover_the_body() -> None:
    body = dumps(github_push())
    tampered = body.replace(b"refs/heads/main", b"refs/heads/evil")
    for kind, header in (
        (WebhookKind.GITHUB, "X-Hub-Signature-256"),
        (WebhookKind.BITBUCKET, "X-Hub-Signature"),
    ):
        with pytest.raises(WebhookRejected):
            verify(kind, {header: sign(body)}, tampered, SECRET)


def test_header_names_are_case_insensitive_and_hex_case_is_ignored() -> None:
    body = b'{"a": 1}'
    verify(
        WebhookKind.GITHUB,
        {"x-hub-signature-256": sign(body).upper().replace("SHA256=", "sha256=")},
        body,
        SECRET,
    )
    verify(WebhookKind.GITLAB, {"X-GITLAB-TOKEN": SECRET.decode()}, body, SECRET)


def test_signature_scheme_is_checked() -> None:
    body = b"{}"
    digest = hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    sha1 = "sha1=" + hmac.new(SECRET, body, hashlib.sha1).hexdigest()
    for header in (digest, sha1, "sha256=", ""):
        with pytest.raises(WebhookRejected):
            verify(WebhookKind.GITHUB, {"X-Hub-Signature-256": header}, body, SECRET)


def test_generic_accepts_a_signature_or_the_secret_header() -> None:
    body = b'{"git": {"ref": "main"}}'
    verify(WebhookKind.GENERIC, {"X-Hub-Signature-256": sign(body)}, body, SECRET)
    verify(WebhookKind.GENERIC, {"X-Kiln-Webhook-Secret": SECRET.decode()}, body, SECRET)
    # GitHub's and GitLab's headers are not generic proof.
    with pytest.raises(WebhookRejected):
        verify(WebhookKind.GENERIC, {"X-Gitlab-Token": SECRET.decode()}, body, SECRET)
    with pytest.raises(WebhookRejected):
        verify(WebhookKind.GENERIC, {"X-Hub-Signature": sign(body)}, body, SECRET)


def test_non_ascii_secrets_match_bytes_as_received() -> None:
    secret = "pässwörd".encode()
    # What http.server hands over: the header's bytes decoded as latin-1.
    received = secret.decode("latin-1")
    verify(WebhookKind.GITLAB, {"X-Gitlab-Token": received}, b"{}", secret)
    verify(WebhookKind.GITLAB, {"X-Gitlab-Token": "pässwörd"}, b"{}", secret)


def test_unknown_kind_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        verify("gitea", {}, b"", SECRET)


# ---- parse: GitHub --------------------------------------------------------------------------


def github(event: str, payload: dict[str, Any]) -> WebhookEvent:
    return parse(WebhookKind.GITHUB, {**JSON, "X-GitHub-Event": event}, dumps(payload))


def test_github_push_to_a_branch() -> None:
    event = github("push", github_push("refs/heads/feature/x"))
    assert event == WebhookEvent(
        kind=WebhookKind.GITHUB,
        ref="refs/heads/feature/x",
        branch="feature/x",
        commit=SHA,
        author="Monalisa Octocat",
        message="Update README.md",
    )


def test_github_ping_tag_delete_and_other_events_are_skipped() -> None:
    assert github("ping", GITHUB_PING).skip_reason == "GitHub ping"
    tag = github("push", github_push("refs/tags/v1.0"))
    assert (tag.skip_reason, tag.ref, tag.branch) == ("tag push", "refs/tags/v1.0", None)
    deleted = github("push", github_push(deleted=True))
    assert (deleted.skip_reason, deleted.branch, deleted.commit) == ("branch deleted", "main", None)
    issues = github("issues", {"action": "opened"})
    assert issues.skip_reason is not None and "issues" in issues.skip_reason


def test_github_requires_the_event_header_and_json() -> None:
    body = dumps(github_push())
    with pytest.raises(WebhookRejected) as info:
        parse(WebhookKind.GITHUB, JSON, body)
    assert info.value.status == 400
    form = {"Content-Type": "application/x-www-form-urlencoded", "X-GitHub-Event": "push"}
    with pytest.raises(WebhookRejected) as info:
        parse(WebhookKind.GITHUB, form, b"payload=" + body)
    assert info.value.status == 415


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b'"push"',
        b"\xff\xfe",
        b'{"after": "x"}',
        b'{"ref": 5}',
        b'{"ref": "refs/heads/a", "head_commit": []}',
    ],
)
def test_github_malformed_bodies_are_400(body: bytes) -> None:
    with pytest.raises(WebhookRejected) as info:
        parse(WebhookKind.GITHUB, {**JSON, "X-GitHub-Event": "push"}, body)
    assert info.value.status == 400


# ---- parse: GitLab --------------------------------------------------------------------------


def gitlab(event: str, payload: dict[str, Any]) -> WebhookEvent:
    return parse(WebhookKind.GITLAB, {**JSON, "X-Gitlab-Event": event}, dumps(payload))


def test_gitlab_push_hook() -> None:
    event = gitlab("Push Hook", gitlab_push())
    assert event == WebhookEvent(
        kind=WebhookKind.GITLAB,
        ref="refs/heads/master",
        branch="master",
        commit=SHA,
        author="John Smith",
        message="fixed readme",
    )


def test_gitlab_tag_push_and_deleted_branch_are_skipped() -> None:
    tag = gitlab("Tag Push Hook", gitlab_push("refs/tags/v1.0.0"))
    assert (tag.skip_reason, tag.ref, tag.branch, tag.commit) == ("tag push", "refs/tags/v1.0.0", None, SHA)
    deleted = gitlab("Push Hook", gitlab_push(deleted=True))
    assert (deleted.skip_reason, deleted.commit) == ("branch deleted", None)
    mr = gitlab("Merge Request Hook", {"object_kind": "merge_request"})
    assert mr.skip_reason is not None and "Merge Request Hook" in mr.skip_reason


def test_gitlab_malformed() -> None:
    with pytest.raises(WebhookRejected) as info:
        parse(WebhookKind.GITLAB, {**JSON, "X-Gitlab-Event": "Push Hook"}, b"{")
    assert info.value.status == 400
    with pytest.raises(WebhookRejected) as info:
        parse(WebhookKind.GITLAB, {"X-Gitlab-Event": "Push Hook"}, dumps(gitlab_push()))
    assert info.value.status == 415


# ---- parse: Bitbucket -----------------------------------------------------------------------


def bitbucket(event: str, payload: dict[str, Any]) -> WebhookEvent:
    return parse(WebhookKind.BITBUCKET, {**JSON, "X-Event-Key": event}, dumps(payload))


def test_bitbucket_cloud_push() -> None:
    event = bitbucket("repo:push", bitbucket_cloud_push(name="develop"))
    assert event == WebhookEvent(
        kind=WebhookKind.BITBUCKET,
        ref="refs/heads/develop",
        branch="develop",
        commit=SHA,
        author="Emma",
        message="Add a feature",
    )


def test_bitbucket_cloud_tag_and_deleted_branch_are_skipped() -> None:
    tag = bitbucket("repo:push", bitbucket_cloud_push("tag", "v2"))
    assert (tag.skip_reason, tag.ref, tag.branch) == ("tag push", "refs/tags/v2", None)
    deleted = bitbucket("repo:push", bitbucket_cloud_push(deleted=True))
    assert (deleted.skip_reason, deleted.ref, deleted.commit) == ("branch deleted", "refs/heads/master", None)
    assert bitbucket("repo:push", {"push": {"changes": []}}).skip_reason == "push without changes"
    assert bitbucket("pullrequest:created", {}).skip_reason is not None


def test_bitbucket_datacenter_refs_changed_and_ping() -> None:
    event = bitbucket("repo:refs_changed", BITBUCKET_DC_PUSH)
    assert (event.ref, event.branch, event.commit, event.author, event.skip_reason) == (
        "refs/heads/master",
        "master",
        SHA,
        "Administrator",
        None,
    )
    assert bitbucket("diagnostics:ping", {"test": True}).skip_reason == "Bitbucket ping"


def test_bitbucket_malformed() -> None:
    payloads: list[dict[str, Any]] = [
        {"push": {"changes": "x"}},
        {"push": {"changes": [{"new": {"type": "branch"}}]}},
        {"push": []},
    ]
    for payload in payloads:
        with pytest.raises(WebhookRejected) as info:
            bitbucket("repo:push", payload)
        assert info.value.status == 400
    with pytest.raises(WebhookRejected) as info:
        parse(WebhookKind.BITBUCKET, JSON, dumps(bitbucket_cloud_push()))
    assert info.value.status == 400


# ---- parse: generic -------------------------------------------------------------------------


def test_generic_empty_body_builds_the_configured_ref() -> None:
    assert parse(WebhookKind.GENERIC, {}, b"") == WebhookEvent(kind=WebhookKind.GENERIC)


def test_generic_openshift_shaped_body() -> None:
    body = dumps(
        {
            "type": "git",
            "git": {
                "uri": "https://github.com/openshift/ruby-hello-world.git",
                "ref": "master",
                "commit": SHA,
                "author": {"name": "John Doe", "email": "john.doe@example.com"},
                "committer": {"name": "John Doe", "email": "john.doe@example.com"},
                "message": "A random act of kindness",
            },
        }
    )
    event = parse(WebhookKind.GENERIC, {"Content-Type": "application/json; charset=utf-8"}, body)
    assert event == WebhookEvent(
        kind=WebhookKind.GENERIC,
        ref="refs/heads/master",
        branch="master",
        commit=SHA,
        author="John Doe",
        message="A random act of kindness",
    )


def test_generic_tag_ref_is_not_skipped() -> None:
    event = parse(WebhookKind.GENERIC, JSON, dumps({"git": {"ref": "refs/tags/v3", "commit": SHA}}))
    assert (event.ref, event.branch, event.commit, event.skip_reason) == ("refs/tags/v3", None, SHA, None)


def test_generic_malformed() -> None:
    with pytest.raises(WebhookRejected) as info:
        parse(WebhookKind.GENERIC, {"Content-Type": "text/plain"}, b"build please")
    assert info.value.status == 415
    for body in (b"{", b'{"git": "main"}', b'{"git": {"ref": 1}}', b'{"git": {"commit": ""}}'):
        with pytest.raises(WebhookRejected) as info:
            parse(WebhookKind.GENERIC, JSON, body)
        assert info.value.status == 400


def test_long_messages_are_cut_to_one_short_line() -> None:
    payload = github_push()
    payload["head_commit"]["message"] = "x" * 5000 + "\nsecond line"
    event = github("push", payload)
    assert event.message == "x" * 200


# ---- branch filters -------------------------------------------------------------------------


def test_branch_allowed() -> None:
    main = WebhookEvent(kind=WebhookKind.GITHUB, ref="refs/heads/main", branch="main", commit=SHA)
    release = WebhookEvent(kind=WebhookKind.GITHUB, ref="refs/heads/release/1.2", branch="release/1.2")
    tag = WebhookEvent(kind=WebhookKind.GENERIC, ref="refs/tags/v1.2", commit=SHA)
    bare = WebhookEvent(kind=WebhookKind.GENERIC)

    assert all(branch_allowed(e, []) for e in (main, release, tag, bare))
    assert branch_allowed(main, ["main"]) and not branch_allowed(main, ["Main", "master", "mai"])
    assert branch_allowed(release, ["release/*"]) and not branch_allowed(main, ["release/*"])
    assert branch_allowed(release, ["main", "release/1.?"])
    # Branches match by name, not by full ref; tags only by full ref.
    assert not branch_allowed(main, ["refs/heads/main"])
    assert not branch_allowed(tag, ["v1.2"]) and branch_allowed(tag, ["refs/tags/v*"])
    assert not branch_allowed(tag, ["main"])
    # No ref at all: the BuildConfig's own ref gets built, which a filter does not veto.
    assert branch_allowed(bare, ["main"])


# ---- registry notification envelope ---------------------------------------------------------

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def envelope_event(action: str, media_type: str, **target: Any) -> dict[str, Any]:
    return {
        "id": "320678d8-ca14-430f-8bb6-4ca139cd83f7",
        "timestamp": "2016-03-09T14:44:26.402973972-08:00",
        "action": action,
        "target": {
            "mediaType": media_type,
            "size": 708,
            "digest": "sha256:fea8895f450959fa676bcc1df0611ea93823a735a01205fd8622846041d0c7cf",
            "length": 708,
            "repository": "hello-world",
            "url": "http://192.168.100.227:5000/v2/hello-world/manifests/sha256:fea8895f4509",
            **target,
        },
        "request": {
            "id": "6df24a34-0959-4923-81ca-14f09767db19",
            "addr": "192.168.64.11:42961",
            "host": "192.168.100.227:5000",
            "method": "PUT",
            "useragent": "curl/7.38.0",
        },
        "actor": {},
        "source": {"addr": "xtal.local:5000", "instanceID": "a53db899-3b4b-4a62-a067-8dd013beaca4"},
    }


def test_push_events_keep_manifest_pushes_only() -> None:
    body = dumps(
        {
            "events": [
                envelope_event("push", "application/octet-stream"),
                envelope_event("push", "application/vnd.docker.image.rootfs.diff.tar.gzip"),
                envelope_event("pull", OCI_MANIFEST, tag="latest"),
                envelope_event("mount", OCI_MANIFEST),
                envelope_event("push", OCI_MANIFEST, tag="latest"),
                envelope_event("push", "application/vnd.docker.distribution.manifest.list.v2+json"),
            ]
        }
    )
    digest = "sha256:fea8895f450959fa676bcc1df0611ea93823a735a01205fd8622846041d0c7cf"
    assert push_events(body) == [
        PushEvent("192.168.100.227:5000", "hello-world", "latest", digest, OCI_MANIFEST),
        PushEvent(
            "192.168.100.227:5000",
            "hello-world",
            None,
            digest,
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ),
    ]


def test_push_events_host_falls_back_to_the_target_url() -> None:
    event = envelope_event("push", OCI_MANIFEST)
    del event["request"]
    assert push_events(dumps({"events": [event]}))[0].registry_host == "192.168.100.227:5000"
    del event["target"]["url"]
    with pytest.raises(ValueError):
        push_events(dumps({"events": [event]}))


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[]",
        b'{"events": {}}',
        b'{"events": [1]}',
        b'{"events": [{"action": "push", "target": []}]}',
    ],
)
def test_push_events_malformed(body: bytes) -> None:
    with pytest.raises(ValueError):
        push_events(body)


def test_push_events_missing_digest_is_malformed() -> None:
    event = envelope_event("push", OCI_MANIFEST)
    del event["target"]["digest"]
    with pytest.raises(ValueError, match="digest"):
        push_events(dumps({"events": [event]}))
    assert push_events(b'{"events": []}') == []
