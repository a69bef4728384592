"""BuildConfig/Build models: parsing, cross-field rules, copying a BuildConfig's spec into a Build."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from kiln.cluster.models import BuildConfig, BuildPhase, RunPolicy, StrategyType, build_spec_from


def bc(spec: dict[str, Any]) -> BuildConfig:
    return BuildConfig.model_validate({"metadata": {"name": "app"}, "spec": spec})


DOCKER = {"source": {"dockerfile": "FROM scratch\n"}, "strategy": {"type": "Docker"}, "output": {"to": {"kind": "DockerImage", "name": "localhost:5000/app:latest"}}}


def test_defaults_follow_openshift() -> None:
    config = bc(DOCKER)
    assert config.spec.run_policy is RunPolicy.SERIAL
    assert config.spec.successful_builds_history_limit == 5
    assert config.spec.failed_builds_history_limit == 5
    assert config.status.last_version == 0
    assert config.spec.strategy.type is StrategyType.DOCKER


def test_camel_case_round_trip() -> None:
    spec = {
        **DOCKER,
        "strategy": {"type": "Docker", "dockerStrategy": {"from": {"name": "busybox"}, "buildArgs": [{"name": "A", "value": "1"}], "noCache": True}},
        "completionDeadlineSeconds": 30,
        "nodeSelector": {"disk": "ssd"},
        "resources": {"limits": {"cpu": 1, "memory": "1Gi"}},
    }
    config = bc(spec)
    assert config.spec.strategy.docker_strategy is not None
    assert config.spec.strategy.docker_strategy.from_ is not None
    out = config.spec.to_json_dict()
    assert out["strategy"]["dockerStrategy"]["from"] == {"kind": "DockerImage", "name": "busybox"}
    assert out["completionDeadlineSeconds"] == 30
    assert out["resources"]["limits"] == {"cpu": 1, "memory": "1Gi"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"strategy": {"type": "Docker"}}, "needs source.git, source.dockerfile or source.binary"),
        ({"strategy": {"type": "Source"}, "source": {"git": {"uri": "x"}}}, "strategy.sourceStrategy is required when strategy.type is Source"),
        ({"strategy": {"type": "Custom"}}, "strategy.customStrategy is required"),
        ({"strategy": {"type": "Pipeline"}}, "strategy.pipelineStrategy is required"),
        ({"strategy": {"type": "Jenkins"}}, "Input should be 'Docker', 'Source', 'Custom' or 'Pipeline'"),
        ({"strategy": {"type": "Docker"}, "source": {"git": {"uri": "x"}, "binary": {}}}, "mutually exclusive"),
        ({"strategy": {"type": "Pipeline", "pipelineStrategy": {"steps": [{"name": "a", "image": "b"}]}}}, "exactly one of script or command"),
        ({"strategy": {"type": "Pipeline", "pipelineStrategy": {"steps": [{"name": "A_", "image": "b", "script": "x"}]}}}, "String should match pattern"),
        ({**DOCKER, "runPolicy": "Sometimes"}, "'Serial', 'Parallel' or 'SerialLatestOnly'"),
        ({**DOCKER, "completionDeadlineSeconds": 0}, "greater than or equal to 1"),
        ({**DOCKER, "sourceUri": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_specs_are_refused_with_a_clear_message(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        bc(spec)


def test_build_spec_copies_the_config_and_merges_env() -> None:
    config = bc({**DOCKER, "strategy": {"type": "Docker", "dockerStrategy": {"env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}}, "runPolicy": "Parallel"})
    spec = build_spec_from(config.spec, "Manually triggered", {"B": "3", "C": "4"})
    assert spec.triggered_by[0].message == "Manually triggered"
    assert spec.strategy.docker_strategy is not None
    assert [(e.name, e.value) for e in spec.strategy.docker_strategy.env] == [("A", "1"), ("B", "3"), ("C", "4")]
    assert "runPolicy" not in spec.to_json_dict()
    assert spec.output.to is not None and spec.output.to.name == "localhost:5000/app:latest"
    # the config itself is untouched
    assert config.spec.strategy.docker_strategy is not None
    assert [e.value for e in config.spec.strategy.docker_strategy.env] == ["1", "2"]


def test_pipeline_env_goes_to_every_step() -> None:
    config = bc({"strategy": {"type": "Pipeline", "pipelineStrategy": {"steps": [{"name": "a", "image": "x", "script": "true"}, {"name": "b", "image": "x", "command": ["true"]}]}}})
    spec = build_spec_from(config.spec, "m", {"K": "V"})
    assert spec.strategy.pipeline_strategy is not None
    assert all(s.env[-1].name == "K" for s in spec.strategy.pipeline_strategy.steps)


def test_terminal_phases() -> None:
    assert {p for p in BuildPhase if p.terminal} == {BuildPhase.COMPLETE, BuildPhase.FAILED, BuildPhase.ERROR, BuildPhase.CANCELLED}
