"""One build from a Build spec to a BuildOutcome: FetchInputs, Build, PushImage, timed as OpenShift's stages.

This is what runs in a build pod and what `kiln build --config` runs locally: one code path.
Failures become an outcome with OpenShift's reason (FetchSourceFailed, DockerBuildFailed, ...)
and the last lines of the log, never an exception, so the pod can always report back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime

from kiln.cluster.models import BaseImage, BuildSpec, StageInfo, StepInfo, StrategyType
from kiln.cluster.result import (
    BUILD,
    FETCH_INPUTS,
    PUSH_IMAGE,
    REASON_CUSTOM_BUILD,
    REASON_DOCKER_BUILD,
    REASON_FETCH_SOURCE,
    REASON_GENERIC,
    REASON_PUSH,
    REASON_S2I_BUILD,
    BuildOutcome,
    format_time,
)
from kiln.cluster.strategies.environment import BuildEnvironment
from kiln.cluster.strategies.inputs import Inputs, fetch_inputs
from kiln.errors import KilnError
from kiln.oci.models import Descriptor

_BUILD_REASON = {
    StrategyType.DOCKER: REASON_DOCKER_BUILD,
    StrategyType.SOURCE: REASON_S2I_BUILD,
    StrategyType.CUSTOM: REASON_CUSTOM_BUILD,
    StrategyType.PIPELINE: REASON_GENERIC,
}


class StageFailedError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Stages:
    def __init__(self) -> None:
        self.done: list[StageInfo] = []

    @contextlib.contextmanager
    def stage(self, name: str, reason: str) -> Iterator[StageInfo]:
        info = StageInfo(name=name, start_time=format_time(datetime.now(UTC)))
        t0 = time.monotonic()
        try:
            yield info
        except KilnError as e:
            raise StageFailedError(reason, e.message) from e
        except OSError as e:
            raise StageFailedError(reason, f"{e.strerror or e}" + (f": {e.filename}" if e.filename else "")) from e
        finally:
            info.duration_milliseconds = int((time.monotonic() - t0) * 1000)
            self.done.append(info)


REBASE = "Rebase"  # kiln's stage: the base layers swapped instead of a build (docs/rebase.md)


def _try_rebase(spec: BuildSpec, env: BuildEnvironment, stages: Stages) -> BuildOutcome | None:
    """A rebase the controller asked for; None (build in full) when the image refuses it."""
    from kiln.build.rebase import rebase_image

    assert spec.rebase is not None and spec.output.to is not None
    env.say(f"--> Rebase: {spec.rebase.image} onto the new {spec.rebase.base}")
    try:
        with stages.stage(REBASE, REASON_PUSH):
            result = rebase_image(spec.rebase.image, expect_base=spec.rebase.base, dest=spec.output.to.name, options=env.registry, report=env.say)
    except StageFailedError as e:  # refused (RebaseRefused) or failed: a full build is always right
        stages.done.clear()
        env.say(f"--> No rebase, building in full: {e.message}")
        return None
    env.say(f"--> Rebased: {result.reference} ({result.reused_layers} layers of the image kept)")
    return BuildOutcome(ok=True, stages=stages.done, image_digest=result.digest, output_docker_image_reference=result.reference.rsplit("@", 1)[0])


def run_build_spec(spec: BuildSpec, env: BuildEnvironment) -> BuildOutcome:
    stages = Stages()
    if spec.rebase is not None and spec.strategy.type is StrategyType.DOCKER and spec.output.to is not None and env.push:
        rebased = _try_rebase(spec, env, stages)
        if rebased is not None:
            return rebased
    strategy = spec.strategy.type
    image: Descriptor | None = None
    pushed_ref: str | None = None
    bases: list[BaseImage] | None = None
    try:
        inputs: Inputs | None = None
        if strategy is not StrategyType.CUSTOM:  # a custom builder fetches its own source
            with stages.stage(FETCH_INPUTS, REASON_FETCH_SOURCE):
                inputs = fetch_inputs(spec.source, env)
        with stages.stage(BUILD, _BUILD_REASON[strategy]) as build_stage:
            image, bases = _build(spec, inputs, env, build_stage)
        if spec.output.to is not None and env.push:
            with stages.stage(PUSH_IMAGE, REASON_PUSH):
                image, pushed_ref = _deliver(spec.output.to.name, image, env)
        elif spec.output.to is not None and image is not None:
            image, pushed_ref = _deliver(spec.output.to.name, image, env)
    except StageFailedError as e:
        env.say(f"error: {e.message}")
        return BuildOutcome(ok=False, reason=e.reason, message=e.message, stages=stages.done, log_snippet=env.stream.tail())
    return BuildOutcome(
        ok=True,
        stages=stages.done,
        image_digest=image.digest if image is not None else None,
        output_docker_image_reference=pushed_ref,
        base_images=bases,
    )


def _build(spec: BuildSpec, inputs: Inputs | None, env: BuildEnvironment, stage: StageInfo) -> tuple[Descriptor | None, list[BaseImage] | None]:
    """The image, and the images the build started from (None where the strategy's ``from`` says)."""
    strategy = spec.strategy.type
    if strategy is StrategyType.CUSTOM:
        from kiln.cluster.strategies.custom import build_custom

        return build_custom(spec, env), None
    assert inputs is not None
    if strategy is StrategyType.DOCKER:
        from kiln.cluster.strategies.docker import build_docker

        built = build_docker(spec, inputs, env)
        return built.descriptor, [BaseImage(name=name, digest=digest) for name, digest in built.bases.items()]
    if strategy is StrategyType.SOURCE:
        from kiln.cluster.strategies.source import build_source

        return build_source(spec, inputs, env), None
    from kiln.cluster.strategies.pipeline import build_pipeline

    result = build_pipeline(spec, inputs, env)
    stage.steps = [StepInfo.model_validate(s.model_dump()) for s in result.steps]
    return result.image, None


def _deliver(name: str, image: Descriptor | None, env: BuildEnvironment) -> tuple[Descriptor | None, str]:
    """Tag the image as the output name; push it when asked. A builder that pushed itself is looked up."""
    from kiln.registry.reference import Reference

    ref = Reference.parse(name)
    if image is None:
        if not env.push:
            return None, str(ref)
        from kiln.registry.pull import head_manifest

        found = head_manifest(ref, env.registry)
        if found is None:
            raise KilnError(f"the builder neither wrote an image to $KILN_OUTPUT_LAYOUT nor pushed {ref}")
        return found, str(ref)
    env.store.tag(str(ref), image)
    if env.push:
        from kiln.registry.push import push

        env.say(f"--> PushImage: {ref}")
        pushed = push(env.store, image.digest, ref, options=env.registry)
        return pushed, str(ref)
    return image, str(ref)
