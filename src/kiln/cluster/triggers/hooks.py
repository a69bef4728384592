"""A webhook delivery for a BuildConfig: check it against the BuildConfig's trigger and Secret, then start a build.

OpenShift's answers where they fit: no such BuildConfig, or no trigger of that kind on it, is a
404 (it does not tell a prober which one); a bad signature is a 401 and a Warning Event on the
BuildConfig, and starts nothing; a push of another branch or a ping is a 200 that says why
nothing started.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from kiln.cluster.instantiate import Trigger, start_triggered
from kiln.cluster.kube import Kube, KubeError, NotFoundError
from kiln.cluster.models import (
    WEBHOOK_SECRET_KEY,
    BuildConfig,
    BuildTriggerCause,
    TriggerType,
    WebHookCause,
    WebHookTrigger,
)
from kiln.cluster.triggers.webhooks import (
    WebhookEvent,
    WebhookKind,
    WebhookRejected,
    branch_allowed,
    parse,
    verify,
)

log = logging.getLogger("kiln.triggers")

_TYPES = {
    WebhookKind.GENERIC: TriggerType.GENERIC,
    WebhookKind.GITHUB: TriggerType.GITHUB,
    WebhookKind.GITLAB: TriggerType.GITLAB,
    WebhookKind.BITBUCKET: TriggerType.BITBUCKET,
}


def _reply(status: int, message: str, **extra: Any) -> tuple[int, dict[str, Any]]:
    return status, {"status": status, "message": message, **extra}


def _branch_filter(config: BuildConfig, trigger: WebHookTrigger) -> list[str]:
    """The trigger's branches, else the branch the BuildConfig builds (if its ref names one)."""
    if trigger.branches:
        return list(trigger.branches)
    git = config.spec.source.git
    ref = git.ref if git is not None else None
    if git is None or not ref or ref.startswith("refs/tags/") or git.ref_is_commit(abbreviated=True):
        return []  # the remote HEAD, a tag or a commit: any branch push may build
    return [ref.removeprefix("refs/heads/")]


class WebhookHandler:
    def __init__(self, kube: Kube) -> None:
        self.kube = kube

    def __call__(
        self, namespace: str, name: str, kind: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        try:
            return self._handle(namespace, name, WebhookKind(kind), headers, body)
        except KubeError as e:
            log.warning("webhook %s for %s/%s: %s", kind, namespace, name, e)
            return _reply(503, "the controller cannot reach the API server; deliver again later")

    def _handle(
        self, namespace: str, name: str, kind: WebhookKind, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, dict[str, Any]]:
        config = self.kube.get_config(namespace, name)
        trigger_type = _TYPES[kind]
        triggers = (
            [t.webhook for t in config.spec.triggers if t.type is trigger_type] if config is not None else []
        )
        if config is None or not triggers:
            return _reply(
                404, f"no buildconfig {namespace}/{name} with a {trigger_type.value} webhook trigger"
            )
        rejected: WebhookRejected | None = None
        for trigger in triggers:  # several triggers of one kind (secret rotation): any may match
            secret = self._secret(namespace, trigger)
            try:
                verify(kind, headers, body, secret)
            except WebhookRejected as e:
                rejected = e
                continue
            return self._verified(config, kind, trigger or WebHookTrigger(), headers, body)
        assert rejected is not None
        self._warn(config, f"{trigger_type.value} webhook rejected: {rejected.message}")
        return _reply(rejected.status, rejected.message)

    def _secret(self, namespace: str, trigger: WebHookTrigger | None) -> bytes:
        if trigger is None or trigger.secret_reference is None:
            return b""  # verify() refuses an empty secret: an unsecured trigger accepts nothing
        data = self.kube.get_secret_data(namespace, trigger.secret_reference.name) or {}
        return data.get(WEBHOOK_SECRET_KEY, b"").strip()

    def _verified(
        self,
        config: BuildConfig,
        kind: WebhookKind,
        trigger: WebHookTrigger,
        headers: Mapping[str, str],
        body: bytes,
    ) -> tuple[int, dict[str, Any]]:
        try:
            event = parse(kind, headers, body)
        except WebhookRejected as e:
            return _reply(e.status, e.message)
        if event.skip_reason is not None:
            return _reply(200, f"no build: {event.skip_reason}")
        patterns = _branch_filter(config, trigger)
        if not branch_allowed(event, patterns):
            return _reply(
                200, f"no build: {event.branch or event.ref} does not match the branch filter {patterns}"
            )
        ns = str(config.metadata.get("namespace", ""))
        try:
            build = start_triggered(self.kube, ns, config.name, lambda _c: _trigger(_TYPES[kind], event))
        except NotFoundError:
            return _reply(404, f"no buildconfig {ns}/{config.name}")
        assert build is not None
        log.info("buildconfig %s/%s: %s webhook started build %s", ns, config.name, kind.value, build.name)
        return _reply(201, f"started build {build.name}", build=build.name)

    def _warn(self, config: BuildConfig, message: str) -> None:
        involved = {"apiVersion": config.api_version, "kind": "BuildConfig", "metadata": config.metadata}
        self.kube.record_event(involved, "WebhookRejected", message, warning=True)


def _trigger(trigger_type: TriggerType, event: WebhookEvent) -> Trigger:
    what = (
        f"{trigger_type.value} webhook"
        + (f": {event.ref}" if event.ref else "")
        + (f" at {event.commit[:12]}" if event.commit else "")
    )
    cause = BuildTriggerCause(
        message=what, web_hook=WebHookCause(type=trigger_type, ref=event.ref, commit=event.commit)
    )
    return Trigger(trigger_type.value, [cause], git_ref=event.commit or event.ref)
