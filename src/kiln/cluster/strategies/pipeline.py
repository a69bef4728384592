"""The Pipeline strategy: steps in their own images, one shared /workspace, then the output image.

Each step runs in the sandbox with the fetched source bind-mounted at /workspace (read-write, so
a step hands files to the next). The output is the OCI layout a step wrote to
``$KILN_OUTPUT_LAYOUT``, else the workspace's Dockerfile (``dockerfilePath``) built by the engine;
a pipeline with neither and no ``output.to`` is a plain CI run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from kiln.cluster.models import BuildSpec, StepInfo
from kiln.cluster.result import format_time
from kiln.cluster.strategies.docker import docker_request, run_request
from kiln.cluster.strategies.environment import BuildEnvironment
from kiln.cluster.strategies.images import import_layout, run_image
from kiln.cluster.strategies.inputs import Inputs
from kiln.errors import BuildError
from kiln.oci.models import Descriptor
from kiln.sandbox.spec import Mount

WORKSPACE = "/workspace"
OUTPUT_MOUNT = "/kiln/output"


class PipelineStepError(BuildError):
    pass


@dataclass
class PipelineResult:
    image: Descriptor | None
    steps: list[StepInfo] = field(default_factory=list)


def build_pipeline(spec: BuildSpec, inputs: Inputs, env: BuildEnvironment) -> PipelineResult:
    strategy = spec.strategy.pipeline_strategy
    assert strategy is not None
    output = env.workspace / "output"
    output.mkdir(parents=True, exist_ok=True)
    mounts = [Mount("bind", WORKSPACE, str(inputs.context)), Mount("bind", OUTPUT_MOUNT, str(output))]
    result = PipelineResult(None)
    for n, step in enumerate(strategy.steps, 1):
        env.say(f"--> step {n}/{len(strategy.steps)} {step.name} ({step.image})")
        started, t0 = format_time_now(), time.monotonic()
        command = ["/bin/sh", "-c", step.script] if step.script is not None else list(step.command or [])
        variables = {"KILN_OUTPUT_LAYOUT": OUTPUT_MOUNT, "WORKSPACE": WORKSPACE, **{e.name: e.value for e in step.env}}
        done = run_image(env, step.image, command=command, entrypoint=[], variables=variables, mounts=mounts, workdir=WORKSPACE)
        result.steps.append(StepInfo(name=step.name, start_time=started, duration_milliseconds=int((time.monotonic() - t0) * 1000)))
        if not done.result.ok:
            raise PipelineStepError(f"pipeline step {step.name!r} exited with code {done.result.exit_code}")
    result.image = import_layout(env.store, output)
    if result.image is None:
        dockerfile = strategy.dockerfile_path or "Dockerfile"
        if strategy.dockerfile_path is not None or (inputs.context / dockerfile).is_file():
            env.say(f"--> building {dockerfile} from the workspace")
            request = docker_request(spec, inputs.context, env, dockerfile_path=dockerfile, build_args=strategy.build_args)
            result.image = run_request(request, env).descriptor
    if result.image is None and spec.output.to is not None:
        raise PipelineStepError(f"the pipeline produced no image for {spec.output.to.name}: write an OCI layout to $KILN_OUTPUT_LAYOUT or add a Dockerfile to the workspace")
    return result


def format_time_now() -> str:
    from datetime import UTC, datetime

    return format_time(datetime.now(UTC))
