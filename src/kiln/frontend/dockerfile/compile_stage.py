"""One stage's instructions to plan steps, in order, each seeing the state the previous left."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from kiln.build.plan import ConfigChange, MetaStep, Step
from kiln.frontend.dockerfile.compile_copy import compile_copy
from kiln.frontend.dockerfile.compile_meta import compile_meta
from kiln.frontend.dockerfile.compile_run import compile_run
from kiln.frontend.dockerfile.compile_state import DEFAULT_PATH, Context, StageState
from kiln.frontend.dockerfile.instructions import AddInstruction, CopyInstruction, Instruction, RunInstruction
from kiln.frontend.dockerfile.parser import LineError


def compile_stage(
    ctx: Context,
    index: int,
    state: StageState,
    instructions: Sequence[Instruction],
    *,
    line: int,
) -> list[Step]:
    """The steps of stage `index` (whose FROM is at `line`), updating `state` to the stage's
    final state. `instructions` start with the base's ONBUILD triggers, if any."""
    base_changes = []
    if state.on_build:  # consumed as triggers: the new image does not inherit them
        base_changes.append(ConfigChange("onbuild_clear"))
        state.on_build = []
    if state.default_path:
        base_changes.append(ConfigChange("env", ["PATH", DEFAULT_PATH]))
    steps: list[Step] = []
    for ins in instructions:
        with ctx.located(ins):
            steps.append(compile_instruction(ctx, index, state, ins))
    return _with_base_changes(steps, base_changes, line) if base_changes else steps


def compile_instruction(ctx: Context, index: int, state: StageState, ins: Instruction) -> Step:
    if isinstance(ins, RunInstruction):
        return compile_run(ctx, state, ins, index)
    if isinstance(ins, CopyInstruction | AddInstruction):
        return compile_copy(ctx, state, ins, index)
    step = compile_meta(ctx, state, ins)
    if step is None:  # FROM inside a stage cannot happen: the parser splits stages at FROM
        raise LineError(f"{ins.keyword} cannot be compiled here")
    return step


def _with_base_changes(steps: list[Step], changes: list[ConfigChange], line: int) -> list[Step]:
    """Config edits BuildKit makes when a stage starts, which it records in no history entry:
    they join the stage's first MetaStep (which comes before any ONBUILD or ENV of the stage).
    A stage without a MetaStep gets one of its own, first."""
    for i, step in enumerate(steps):
        if isinstance(step, MetaStep):
            steps[i] = replace(step, changes=(*changes, *step.changes))
            return steps
    path = [c.value[1] for c in changes if c.op == "env"]
    created_by = f"ENV PATH={path[0]}" if path else "ONBUILD triggers of the base consumed"
    return [MetaStep(tuple(changes), created_by=created_by, line=line), *steps]
