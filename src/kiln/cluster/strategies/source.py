"""The Source (S2I) strategy: the fetched source handed to kiln's S2I frontend (``kiln s2i build``'s engine)."""

from __future__ import annotations

from kiln.build.options import BuildOptions
from kiln.cluster.models import BuildSpec
from kiln.cluster.strategies.environment import BuildEnvironment
from kiln.cluster.strategies.inputs import Inputs
from kiln.errors import KilnError
from kiln.oci.models import Descriptor


class StrategyUnavailableError(KilnError):
    exit_code = 3


def build_source(spec: BuildSpec, inputs: Inputs, env: BuildEnvironment) -> Descriptor:
    strategy = spec.strategy.source_strategy
    assert strategy is not None
    try:
        from kiln.frontend.s2i.build import build
        from kiln.frontend.s2i.config import S2IRequest
    except ImportError as e:
        raise StrategyUnavailableError(f"the Source (S2I) strategy is not available: kiln's S2I frontend cannot be loaded ({e})") from None
    request = S2IRequest(
        source=str(inputs.context),
        builder=strategy.from_.name,
        tag=spec.output.to.name if spec.output.to is not None else None,
        env=tuple((e.name, e.value) for e in strategy.env),
        scripts_url=strategy.scripts,
        incremental=strategy.incremental,
    )
    options = BuildOptions(registry=env.registry, labels={label.name: label.value for label in spec.output.image_labels})
    result = build(request, env.store, options, quiet=env.quiet, note=env.say)
    return result.descriptor
