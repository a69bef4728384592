"""Manifest annotations naming the base an image was built on, so it can be rebased later.

``org.opencontainers.image.base.name`` / ``.base.digest`` are the OCI image-spec's
pre-defined annotations (annotations.md); ``dev.kiln.image.rebasable`` says the plan's target
read nothing of the base's files (``Plan.rebasable``), which is what makes a rebase give
the image a full rebuild would.
"""

from __future__ import annotations

from collections.abc import Callable

from kiln.build.image import Image
from kiln.build.plan import ImageSource, Plan, StageSource
from kiln.registry.reference import Reference

BASE_NAME = "org.opencontainers.image.base.name"
BASE_DIGEST = "org.opencontainers.image.base.digest"
REBASABLE = "dev.kiln.image.rebasable"


def base_image_ref(plan: Plan) -> str | None:
    """The image the target stage is built on, through FROM-stage chains; None for scratch."""
    base = plan.stages[plan.target].base
    while isinstance(base, StageSource):
        base = plan.stages[base.stage].base
    return base.ref if isinstance(base, ImageSource) else None


def base_annotations(plan: Plan, resolve: Callable[[str], Image]) -> dict[str, str]:
    """The annotations for the plan's image; ``resolve`` gives the base exactly as the build
    used it (its ``manifest_digest`` is the platform manifest, also when the tag names an index)."""
    ref = base_image_ref(plan)
    if ref is None:
        return {}
    digest = resolve(ref).manifest_digest
    if digest is None:
        return {}
    out = {BASE_NAME: str(Reference.parse(ref)), BASE_DIGEST: str(digest)}
    if plan.rebasable:
        out[REBASABLE] = "true"
    return out
