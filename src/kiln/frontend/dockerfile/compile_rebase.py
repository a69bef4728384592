"""Whether a compiled target stage may be rebased: moved onto another base without rebuilding.

A rebase (``kiln rebase``) swaps the base's layers under the image's own layers and keeps those
layers byte for byte. That is only the image a full rebuild would give when no step of the
target (nor of the stages it is built FROM) read the base's files. Decided here, from the
compiled steps, so the executor only records it:

- RUN reads the base (and its output depends on it): no.
- ONBUILD triggers of the base ran first: no (they are the base's steps, chosen by the base).
- COPY/ADD without ``--link`` looks into the base: it follows the base's symlinks on the
  destination path, asks whether the destination is a directory there, and repeats existing
  parent directories with the base's mode, owner and mtime. With ``--link`` (BuildKit's
  definition of a layer that can be rebased) nothing of the base is consulted.
- ``--chown`` by name reads the base's /etc/passwd and /etc/group; numeric ids do not.
- WORKDIR creates its directory in a layer when the base lacks it, copying the metadata of
  the parents the base has: no.
- Other metadata (ENV, LABEL, CMD, USER, ...) is config only: yes. What the image inherited
  from the base's config is checked again by the rebase itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from kiln.build.plan import CopyStep, ImageSource, MetaStep, RunStep, Stage, StageSource, Step


def target_rebasable(stages: Sequence[Stage], target: int) -> bool:
    """True when the target stage (through its FROM-stage chain) starts from an image and every
    step after that image is independent of the image's filesystem."""
    chain: list[Stage] = []
    stage = stages[target]
    while True:
        chain.append(stage)
        if isinstance(stage.base, StageSource):
            stage = stages[stage.base.stage]
            continue
        if not isinstance(stage.base, ImageSource):
            return False  # scratch: there is no base to swap
        break
    return all(_independent(step) for st in chain for step in st.steps)


def _independent(step: Step) -> bool:
    if isinstance(step, RunStep):
        return False
    if isinstance(step, CopyStep):
        return step.link and (step.chown is None or _numeric_owner(step.chown))
    if isinstance(step, MetaStep):
        return not any(c.op in ("workdir", "onbuild_clear") for c in step.changes)
    return False


def _numeric_owner(chown: str) -> bool:
    user, _, group = chown.partition(":")
    return all(part.isascii() and part.isdigit() for part in (user, group) if part) and bool(user)
