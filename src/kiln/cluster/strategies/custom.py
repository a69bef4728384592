"""The Custom strategy: the builder image runs in the sandbox with OpenShift's custom-build environment.

The builder either pushes OUTPUT_IMAGE itself (with the Docker config in PUSH_DOCKERCFG_PATH), or,
the kiln way, writes an OCI image layout to ``$KILN_OUTPUT_LAYOUT`` and kiln pushes that.
"""

from __future__ import annotations

from kiln.cluster.models import BuildSpec
from kiln.cluster.strategies.environment import BuildEnvironment
from kiln.cluster.strategies.images import import_layout, run_image
from kiln.errors import BuildError
from kiln.oci.models import Descriptor
from kiln.registry.reference import Reference
from kiln.sandbox.spec import Mount

PUSH_MOUNT = "/var/run/secrets/openshift.io/push"
OUTPUT_MOUNT = "/kiln/output"


class CustomBuildError(BuildError):
    pass


def custom_environment(spec: BuildSpec, env: BuildEnvironment) -> dict[str, str]:
    strategy = spec.strategy.custom_strategy
    assert strategy is not None
    out: dict[str, str] = {"BUILD": env.build_json, "KILN_OUTPUT_LAYOUT": OUTPUT_MOUNT}
    git = spec.source.git
    if git is not None:
        out.update(SOURCE_REPOSITORY=git.uri, SOURCE_URI=git.uri)
        if git.ref:
            out["SOURCE_REF"] = git.ref
    if spec.source.context_dir:
        out["SOURCE_CONTEXT_DIR"] = spec.source.context_dir
    if spec.output.to is not None:
        out["OUTPUT_IMAGE"] = spec.output.to.name
        out["OUTPUT_REGISTRY"] = Reference.parse(spec.output.to.name).registry
    if env.push_config_dir is not None:
        out["PUSH_DOCKERCFG_PATH"] = PUSH_MOUNT
    out.update({e.name: e.value for e in strategy.env})
    return out


def build_custom(spec: BuildSpec, env: BuildEnvironment) -> Descriptor | None:
    """The image the builder left in its output layout, or None when it pushed (or built) nothing itself."""
    strategy = spec.strategy.custom_strategy
    assert strategy is not None
    output = env.workspace / "output"
    output.mkdir(parents=True, exist_ok=True)
    mounts = [Mount("bind", OUTPUT_MOUNT, str(output))]
    if env.push_config_dir is not None:
        mounts.append(Mount("bind", PUSH_MOUNT, str(env.push_config_dir), readonly=True))
    done = run_image(env, strategy.from_.name, command=[], entrypoint=None, variables=custom_environment(spec, env), mounts=mounts)
    if not done.result.ok:
        raise CustomBuildError(f"custom builder {strategy.from_.name} exited with code {done.result.exit_code}")
    return import_layout(env.store, output)
