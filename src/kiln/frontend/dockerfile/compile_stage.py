"""One stage's instructions to plan steps, in order, each seeing the state the previous left."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from kiln.build.plan import ConfigChange, MetaStep, Step
from kiln.frontend.dockerfile.compile_copy import compile_copy
from kiln.frontend.dockerfile.compile_meta import compile_meta
from kiln.frontend.dockerfile.compile_run import compile_run
from kiln.frontend.dockerfile.compile_state import Context, StageState
from kiln.frontend.dockerfile.instructions import AddInstruction, CopyInstruction, Instruction, RunInstruction
from kiln.frontend.dockerfile.parser import LineError


def compile_stage(
    ctx: Context,
    index: int,
    state: StageState,
    instructions: Sequence[Instruction],
    *,
    clear_onbuild: bool,
    line: int,
) -> list[Step]:
    """The steps of stage `index`, updating `state` to the stage's final state.

    `instructions` start with the base's ONBUILD triggers, if any; `clear_onbuild` says the
    base config's OnBuild list was consumed and must not be inherited; `line` is the FROM's.
    """
    if clear_onbuild:
        state.on_build = []
    steps: list[Step] = []
    for ins in instructions:
        with ctx.located(ins):
            steps.append(compile_instruction(ctx, index, state, ins))
    if clear_onbuild:
        steps = _with_onbuild_cleared(steps, line)
    return steps


def compile_instruction(ctx: Context, index: int, state: StageState, ins: Instruction) -> Step:
    if isinstance(ins, RunInstruction):
        return compile_run(ctx, state, ins, index)
    if isinstance(ins, CopyInstruction | AddInstruction):
        return compile_copy(ctx, state, ins, index)
    step = compile_meta(ctx, state, ins)
    if step is None:  # FROM inside a stage cannot happen: the parser splits stages at FROM
        raise LineError(f"{ins.keyword} cannot be compiled here")
    return step


def _with_onbuild_cleared(steps: list[Step], line: int) -> list[Step]:
    """Clear the inherited OnBuild list without a history entry of its own (BuildKit writes
    none): the op joins the stage's first MetaStep, which comes before any ONBUILD of the
    stage. A stage without one gets a MetaStep of its own."""
    clear = ConfigChange("onbuild_clear")
    for i, step in enumerate(steps):
        if isinstance(step, MetaStep):
            steps[i] = replace(step, changes=(clear, *step.changes))
            return steps
    return [*steps, MetaStep((clear,), created_by="ONBUILD triggers of the base consumed", line=line)]
