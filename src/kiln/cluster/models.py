"""BuildConfig and Build (kiln.dev/v1alpha1): typed models, the single source of the CRD schemas.

The shapes follow OpenShift's build.openshift.io/v1 BuildConfig and Build (field names, phases,
stage names), trimmed to what kiln implements; docs/crds.md lists the deviations. The CRD YAML in
deploy/crds/ is generated from these models by ``python -m kiln.cluster.crdgen``. Cross-field rules
are written twice, on purpose: as a pydantic validator (``kiln build --config`` without a cluster)
and as a CEL rule in the schema (the API server refuses the object), with the same message.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

GROUP = "kiln.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Labels and annotations kiln puts on the objects it makes.
LABEL_BUILDCONFIG = "kiln.dev/buildconfig"
LABEL_BUILD = "kiln.dev/build"
ANNOTATION_NUMBER = "kiln.dev/build-number"
# Set on Builds a trigger started (ImageChange, ConfigChange, GitHub...): they queue for the fleet's
# triggered-build slots; a build a user started does not.
ANNOTATION_TRIGGER = "kiln.dev/trigger"


def _cel(rule: str, message: str) -> dict[str, Any]:
    return {"rule": rule, "message": message}


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StrategyType(StrEnum):
    DOCKER = "Docker"
    SOURCE = "Source"
    CUSTOM = "Custom"
    PIPELINE = "Pipeline"


class RunPolicy(StrEnum):
    SERIAL = "Serial"
    PARALLEL = "Parallel"
    SERIAL_LATEST_ONLY = "SerialLatestOnly"


class BuildPhase(StrEnum):
    NEW = "New"
    PENDING = "Pending"
    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"
    ERROR = "Error"
    CANCELLED = "Cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_PHASES


TERMINAL_PHASES = frozenset({BuildPhase.COMPLETE, BuildPhase.FAILED, BuildPhase.ERROR, BuildPhase.CANCELLED})


class TriggerType(StrEnum):
    GITHUB = "GitHub"
    GENERIC = "Generic"
    GITLAB = "GitLab"
    BITBUCKET = "Bitbucket"
    IMAGE_CHANGE = "ImageChange"
    CONFIG_CHANGE = "ConfigChange"


# -- source ------------------------------------------------------------------------------


class LocalObjectReference(_Model):
    name: str = Field(min_length=1)


class GitBuildSource(_Model):
    uri: str = Field(min_length=1, description="Repository URL git can clone (https://, http://, git://, ssh, file://).")
    ref: str | None = Field(default=None, description="Branch, tag or commit to check out (default: the remote HEAD).")

    def ref_is_commit(self, *, abbreviated: bool = False) -> bool:
        """Whether ``ref`` names a commit (40 hex digits; 7 or more with ``abbreviated``): a ref that cannot move."""
        ref = self.ref or ""
        return len(ref) >= (7 if abbreviated else 40) and len(ref) <= 40 and all(c in "0123456789abcdef" for c in ref)


class BinaryBuildSource(_Model):
    as_file: str | None = Field(default=None, description="Place the uploaded file under this name instead of unpacking a directory.")
    artifact: str | None = Field(
        default=None,
        description="kiln: digest-pinned OCI artifact holding the uploaded source, set by `kiln start-build --from-dir/--from-file` on the Build.",
    )


class SecretBuildSource(_Model):
    secret: LocalObjectReference
    destination_dir: str = Field(default="", description="Directory, relative to the context, the secret's files are copied to.")


class ConfigMapBuildSource(_Model):
    config_map: LocalObjectReference
    destination_dir: str = Field(default="", description="Directory, relative to the context, the config map's files are copied to.")


class BuildSource(_Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_cel("!has(self.git) || !has(self.binary)", "source.git and source.binary are mutually exclusive")]})

    git: GitBuildSource | None = None
    context_dir: str | None = Field(default=None, description="Subdirectory of the source used as the build context.")
    dockerfile: str | None = Field(default=None, description="Inline Dockerfile; replaces the context's Dockerfile.")
    binary: BinaryBuildSource | None = None
    source_secret: LocalObjectReference | None = Field(default=None, description="Secret with git credentials (basic-auth username/password, or ssh-privatekey).")
    secrets: list[SecretBuildSource] = Field(default_factory=list)
    config_maps: list[ConfigMapBuildSource] = Field(default_factory=list)

    @model_validator(mode="after")
    def _exclusive(self) -> BuildSource:
        if self.git is not None and self.binary is not None:
            raise ValueError("source.git and source.binary are mutually exclusive")
        return self


# -- strategy ----------------------------------------------------------------------------


class EnvVar(_Model):
    name: str = Field(min_length=1)
    value: str = ""


class ImageReference(_Model):
    kind: str = Field(default="DockerImage", json_schema_extra={"enum": ["DockerImage"]})
    name: str = Field(min_length=1, description="Image reference, e.g. registry.example/app:latest.")


class DockerBuildStrategy(_Model):
    from_: ImageReference | None = Field(default=None, alias="from", description="Replaces the image of the last FROM.")
    dockerfile_path: str | None = Field(default=None, description="Dockerfile path relative to the context (default Dockerfile).")
    build_args: list[EnvVar] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list, description="Set as ENV after every FROM, as OpenShift does.")
    no_cache: bool = False
    target: str | None = Field(default=None, description="kiln: build this stage only.")
    pull_secret: LocalObjectReference | None = None
    rebase: bool = Field(
        default=True,
        description="kiln: when an image change touches only the final stage's base and that stage runs nothing on it, swap the base layers instead of rebuilding.",
    )


class SourceBuildStrategy(_Model):
    from_: ImageReference = Field(alias="from", description="The S2I builder image.")
    env: list[EnvVar] = Field(default_factory=list)
    scripts: str | None = Field(default=None, description="URL or image path of the S2I scripts, overriding the builder's.")
    incremental: bool = False
    pull_secret: LocalObjectReference | None = None


class CustomBuildStrategy(_Model):
    from_: ImageReference = Field(alias="from", description="The custom builder image.")
    env: list[EnvVar] = Field(default_factory=list)
    pull_secret: LocalObjectReference | None = None


class PipelineStep(_Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_cel("has(self.script) != has(self.command)", "a pipeline step needs exactly one of script or command")]})

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    image: str = Field(min_length=1)
    script: str | None = Field(default=None, description="Run with /bin/sh -c.")
    command: list[str] | None = Field(default=None, min_length=1, description="argv, run as is.")
    env: list[EnvVar] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_of(self) -> PipelineStep:
        if (self.script is None) == (self.command is None):
            raise ValueError("a pipeline step needs exactly one of script or command")
        return self


class PipelineBuildStrategy(_Model):
    steps: list[PipelineStep] = Field(min_length=1, max_length=64)
    dockerfile_path: str | None = Field(
        default=None,
        description="kiln: after the steps, build this Dockerfile (relative to the workspace) as the output image. Default: Dockerfile, when the workspace has one.",
    )
    build_args: list[EnvVar] = Field(default_factory=list)


_STRATEGY_RULES = [
    ("Source", "sourceStrategy"),
    ("Custom", "customStrategy"),
    ("Pipeline", "pipelineStrategy"),
]


class BuildStrategy(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [_cel(f"self.type != '{t}' || has(self.{f})", f"strategy.{f} is required when strategy.type is {t}") for t, f in _STRATEGY_RULES]
        }
    )

    type: StrategyType
    docker_strategy: DockerBuildStrategy | None = None
    source_strategy: SourceBuildStrategy | None = None
    custom_strategy: CustomBuildStrategy | None = None
    pipeline_strategy: PipelineBuildStrategy | None = None

    @model_validator(mode="after")
    def _present(self) -> BuildStrategy:
        for t, f in _STRATEGY_RULES:
            attr = {"sourceStrategy": "source_strategy", "customStrategy": "custom_strategy", "pipelineStrategy": "pipeline_strategy"}[f]
            if self.type == t and getattr(self, attr) is None:
                raise ValueError(f"strategy.{f} is required when strategy.type is {t}")
        return self

    @property
    def env(self) -> list[EnvVar]:
        s = self.docker_strategy or self.source_strategy or self.custom_strategy
        return list(s.env) if s is not None else []


# -- output, triggers, resources ---------------------------------------------------------


class ImageLabel(_Model):
    name: str = Field(min_length=1)
    value: str = ""


class BuildOutput(_Model):
    to: ImageReference | None = Field(default=None, description="Where the image is pushed; none: build only.")
    push_secret: LocalObjectReference | None = Field(default=None, description="Secret of type kubernetes.io/dockerconfigjson used to push.")
    image_labels: list[ImageLabel] = Field(default_factory=list)


WEBHOOK_SECRET_KEY = "WebHookSecretKey"  # the key of a webhook trigger's Secret, as in OpenShift


class WebHookTrigger(_Model):
    secret_reference: LocalObjectReference | None = Field(
        default=None, description=f"Secret whose key {WEBHOOK_SECRET_KEY} holds the webhook secret (the HMAC key or token)."
    )
    branches: list[str] = Field(
        default_factory=list,
        description="kiln: glob patterns of the branches whose pushes start a build (default: the branch of source.git.ref, or any when it names none).",
    )


class ImageChangeTrigger(_Model):
    from_: ImageReference | None = Field(
        default=None, alias="from", description="The image to watch (default: the strategy's from, or every FROM image of an inline Dockerfile)."
    )
    paused: bool = False


class BuildTriggerPolicy(_Model):
    type: TriggerType
    github: WebHookTrigger | None = None
    generic: WebHookTrigger | None = None
    gitlab: WebHookTrigger | None = None
    bitbucket: WebHookTrigger | None = None
    image_change: ImageChangeTrigger | None = None

    @property
    def webhook(self) -> WebHookTrigger | None:
        return {
            TriggerType.GITHUB: self.github,
            TriggerType.GENERIC: self.generic,
            TriggerType.GITLAB: self.gitlab,
            TriggerType.BITBUCKET: self.bitbucket,
        }.get(self.type)


class ResourceRequirements(_Model):
    limits: dict[str, int | str] = Field(default_factory=dict)
    requests: dict[str, int | str] = Field(default_factory=dict)


class CommonSpec(_Model):
    """What a BuildConfig and its Builds share (OpenShift's CommonSpec)."""

    service_account_name: str | None = Field(default=None, description="Service account of the build pod (default: the namespace's default).")
    source: BuildSource = Field(default_factory=BuildSource)
    strategy: BuildStrategy
    output: BuildOutput = Field(default_factory=BuildOutput)
    resources: ResourceRequirements | None = None
    completion_deadline_seconds: int | None = Field(default=None, ge=1, description="Fail the build (DeadlineExceeded) when its pod runs longer.")
    node_selector: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _needs_source(self) -> CommonSpec:
        if self.strategy.type in (StrategyType.DOCKER, StrategyType.SOURCE):
            src = self.source
            if src.git is None and src.dockerfile is None and src.binary is None:
                raise ValueError(SOURCE_NEEDED)
        return self


SOURCE_NEEDED = "a Docker or Source build needs source.git, source.dockerfile or source.binary"
_SOURCE_RULE = _cel(
    "(self.strategy.type != 'Docker' && self.strategy.type != 'Source') || (has(self.source) && (has(self.source.git) || has(self.source.dockerfile) || has(self.source.binary)))",
    SOURCE_NEEDED,
)


class BuildConfigSpec(CommonSpec):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_SOURCE_RULE]})

    triggers: list[BuildTriggerPolicy] = Field(default_factory=list)
    run_policy: RunPolicy = RunPolicy.SERIAL
    successful_builds_history_limit: int = Field(default=5, ge=0)
    failed_builds_history_limit: int = Field(default=5, ge=0)


class ImageChangeTriggerStatus(_Model):
    from_: ImageReference = Field(alias="from")
    last_triggered_image_id: str | None = Field(default=None, alias="lastTriggeredImageID", description="Manifest digest of the image the last build (or the first sight) was for.")
    last_trigger_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})


class BuildConfigStatus(_Model):
    last_version: int = Field(default=0, ge=0, description="Number of the last Build started from this BuildConfig.")
    image_change_triggers: list[ImageChangeTriggerStatus] = Field(default_factory=list, description="The last digest seen of every watched image.")
    observed_generation: int | None = Field(default=None, description="kiln: the metadata.generation the ConfigChange trigger has acted on.")

    def last_image_id(self, ref: str) -> str | None:
        for t in self.image_change_triggers:
            if t.from_.name == ref:
                return t.last_triggered_image_id
        return None


class ImageChangeCause(_Model):
    from_: ImageReference = Field(alias="from")
    old_image_id: str | None = Field(default=None, alias="oldImageID", description="kiln: the digest the last build used (none: not seen before).")
    image_id: str = Field(alias="imageID", description="The new manifest digest that started the build.")


class WebHookCause(_Model):
    type: TriggerType
    ref: str | None = None
    commit: str | None = None


class BuildTriggerCause(_Model):
    message: str = ""
    image_change_build: ImageChangeCause | None = None
    web_hook: WebHookCause | None = None


class RebaseRequest(_Model):
    image: str = Field(description="The last image built (digest-pinned) whose base changed.")
    base: str = Field(description="The changed base: the image is rebased only if this is its final stage's base.")


class BuildSpec(CommonSpec):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [_SOURCE_RULE]})

    triggered_by: list[BuildTriggerCause] = Field(default_factory=list)
    rebase: RebaseRequest | None = Field(default=None, description="kiln: try a rebase of this image first; a full build if it cannot be rebased.")


class StepInfo(_Model):
    name: str
    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    duration_milliseconds: int = 0


class StageInfo(_Model):
    name: str = Field(description="FetchInputs, Build or PushImage (OpenShift's stage names).")
    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    duration_milliseconds: int = 0
    steps: list[StepInfo] = Field(default_factory=list, description="Pipeline steps, in order.")


class BaseImage(_Model):
    name: str = Field(description="An image a stage of the build started from, as its FROM named it (normalized).")
    digest: str = Field(description="The manifest digest the name pointed at when the build resolved it.")


class OutputTo(_Model):
    image_digest: str | None = None


class BuildStatusOutput(_Model):
    to: OutputTo | None = None


class ConfigReference(_Model):
    kind: str = "BuildConfig"
    namespace: str | None = None
    name: str


class BuildStatus(_Model):
    phase: BuildPhase = BuildPhase.NEW
    cancelled: bool = Field(default=False, description="Set by `kiln cancel-build`; the controller moves the build to Cancelled.")
    reason: str | None = None
    message: str | None = None
    start_timestamp: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    completion_timestamp: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    duration: int | None = Field(default=None, description="Nanoseconds from start to completion, as OpenShift's time.Duration.")
    output_docker_image_reference: str | None = None
    config: ConfigReference | None = None
    output: BuildStatusOutput | None = None
    stages: list[StageInfo] = Field(default_factory=list)
    base_images: list[BaseImage] | None = Field(default=None, description="kiln: the images the build started from (Docker strategy); an ImageChange trigger of a Dockerfile in git watches them.")
    log_snippet: str | None = None
    pod_name: str | None = None

    @property
    def image_digest(self) -> str | None:
        return self.output.to.image_digest if self.output and self.output.to else None


# -- whole objects -----------------------------------------------------------------------


class BuildConfig(_Model):
    model_config = ConfigDict(extra="ignore")

    api_version: str = API_VERSION
    kind: str = "BuildConfig"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: BuildConfigSpec
    status: BuildConfigStatus = Field(default_factory=BuildConfigStatus)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))


class Build(_Model):
    model_config = ConfigDict(extra="ignore")

    api_version: str = API_VERSION
    kind: str = "Build"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: BuildSpec
    status: BuildStatus = Field(default_factory=BuildStatus)

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace", ""))

    @property
    def number(self) -> int:
        raw = (self.metadata.get("annotations") or {}).get(ANNOTATION_NUMBER, "0")
        return int(raw) if str(raw).isdigit() else 0

    @property
    def config_name(self) -> str | None:
        return (self.metadata.get("labels") or {}).get(LABEL_BUILDCONFIG)

    @property
    def trigger(self) -> str | None:
        """The trigger type that started this build (None: a user did)."""
        return (self.metadata.get("annotations") or {}).get(ANNOTATION_TRIGGER)


def build_spec_from(config: CommonSpec, cause: str | list[BuildTriggerCause], env: dict[str, str] | None = None) -> BuildSpec:
    """A Build's spec: the BuildConfig's spec copied at start, plus why it started.

    ``env`` (``kiln start-build --env``) is merged into the strategy's environment, as
    ``oc start-build --env`` does.
    """
    common = {k: v for k, v in config.model_dump(by_alias=False).items() if k in CommonSpec.model_fields}
    causes = [BuildTriggerCause(message=cause)] if isinstance(cause, str) else cause
    spec = BuildSpec.model_validate({**common, "triggered_by": [c.model_dump(by_alias=False) for c in causes]})
    if env:
        merge_env(spec.strategy, env)
    return spec


def merge_env(strategy: BuildStrategy, env: dict[str, str]) -> None:
    target: DockerBuildStrategy | SourceBuildStrategy | CustomBuildStrategy | None
    if strategy.type == StrategyType.DOCKER:
        strategy.docker_strategy = target = strategy.docker_strategy or DockerBuildStrategy()
    else:
        target = strategy.source_strategy or strategy.custom_strategy
    if target is not None:
        kept = [e for e in target.env if e.name not in env]
        target.env = kept + [EnvVar(name=k, value=v) for k, v in env.items()]
    elif strategy.pipeline_strategy is not None:
        for step in strategy.pipeline_strategy.steps:
            step.env = [e for e in step.env if e.name not in env] + [EnvVar(name=k, value=v) for k, v in env.items()]
