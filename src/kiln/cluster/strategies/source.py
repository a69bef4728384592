"""The Source (S2I) strategy: hands the fetched source to kiln's S2I frontend."""

from __future__ import annotations

import importlib

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
        frontend = importlib.import_module("kiln.frontend.s2i")
    except ImportError:
        frontend = None
    build_entry = getattr(frontend, "build_entry", None)
    if build_entry is None:
        raise StrategyUnavailableError("the Source (S2I) strategy is not available yet: kiln's S2I frontend (kiln.frontend.s2i) is not part of this kiln")
    result: Descriptor = build_entry(
        source=inputs.context,
        builder_image=strategy.from_.name,
        env={e.name: e.value for e in strategy.env},
        incremental=strategy.incremental,
        scripts_url=strategy.scripts,
        output=spec.output.to.name if spec.output.to else None,
        store=env.store,
        registry=env.registry,
        log=env.log,
        labels={label.name: label.value for label in spec.output.image_labels},
    )
    return result
