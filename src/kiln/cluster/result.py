"""What a build pod reports back: one JSON object, written as the container's termination message.

``kiln build --config ... --result-file /dev/termination-log`` writes it; the controller reads it
from ``status.containerStatuses[].state.terminated.message`` (the kubelet keeps at most 4 KiB, so
``to_message`` trims the free text to fit) and copies stages, digest, base images and failure
reason into the Build's status.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pydantic import Field, ValidationError

from kiln.cluster.models import BaseImage, StageInfo, _Model

TERMINATION_LIMIT = 4096
MARKER = "kiln-build-result: "  # a log line carrying the same JSON, for kubelets without termination messages

# OpenShift's stage names (build.openshift.io StageName)
FETCH_INPUTS = "FetchInputs"
PULL_IMAGES = "PullImages"
BUILD = "Build"
PUSH_IMAGE = "PushImage"

# OpenShift's failure reasons (StatusReason), as far as kiln produces them
REASON_FETCH_SOURCE = "FetchSourceFailed"
REASON_DOCKER_BUILD = "DockerBuildFailed"
REASON_S2I_BUILD = "GenericS2IBuildFailed"
REASON_CUSTOM_BUILD = "GenericBuildFailed"
REASON_PUSH = "PushImageToRegistryFailed"
REASON_INVALID = "InvalidBuildConfig"
REASON_GENERIC = "GenericBuildFailed"


class BuildOutcome(_Model):
    ok: bool
    reason: str | None = None
    message: str | None = None
    stages: list[StageInfo] = Field(default_factory=list)
    image_digest: str | None = None
    output_docker_image_reference: str | None = None
    log_snippet: str | None = None
    base_images: list[BaseImage] | None = None  # None: not known (a list cut short would unwatch images)

    def to_message(self, limit: int = TERMINATION_LIMIT) -> str:
        """Compact JSON of at most ``limit`` bytes: the log snippet, then the message, the stages
        and the base images give way, in that order (the bases feed triggers, stages only show)."""
        outcome = self.model_copy()
        text = _dumps(outcome)
        for field in ("log_snippet", "message"):
            value = getattr(outcome, field)
            while len(text.encode()) > limit and value:
                value = value[len(value) // 4 + 1 :] if field == "log_snippet" else value[: len(value) * 3 // 4]
                setattr(outcome, field, value or None)
                text = _dumps(outcome)
        if len(text.encode()) > limit:
            outcome.stages = []
            text = _dumps(outcome)
        if len(text.encode()) > limit:
            outcome.base_images = None
            text = _dumps(outcome)
        return text


def _dumps(outcome: BuildOutcome) -> str:
    return json.dumps(outcome.to_json_dict(), separators=(",", ":"), ensure_ascii=False)


def parse_outcome(text: str | None) -> BuildOutcome | None:
    """The outcome in a termination message or in a log line; None when there is none."""
    if not text:
        return None
    candidates = [text.strip()]
    candidates += [line.split(MARKER, 1)[1] for line in reversed(text.splitlines()) if MARKER in line]
    for candidate in candidates:
        try:
            return BuildOutcome.model_validate_json(candidate)
        except ValidationError:
            continue
    return None


def now_rfc3339() -> str:
    return format_time(datetime.now(UTC))


def format_time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
