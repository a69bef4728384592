"""The config and layer list of a rebased image: pure functions, no I/O (see rebase.py).

An image built FROM a base inherited two things from it: the lower layers (with their history
entries) and the runtime config (Env, Labels, Cmd, ...). A rebase replaces the first outright.
The second is merged three ways, per field (and per key of Env, Labels, ExposedPorts and
Volumes): what the image left as the old base had it takes the new base's value, what the
image changed stays; when the image changed it *and* the new base changed it too, a rebuild
might give either, so that is a conflict the caller refuses.
"""

from __future__ import annotations

from typing import Any

from kiln.errors import KilnError
from kiln.oci.models import ContainerConfig, History, ImageConfig

_ABSENT = object()
_KEYED = ("Labels", "ExposedPorts", "Volumes")


class RebaseRefused(KilnError):
    """A rebase that would not give the image a rebuild gives; nothing was written. A caller
    (the cluster) falls back to a full build."""


def app_history(image: ImageConfig, old_base: ImageConfig) -> list[History]:
    """The image's own history entries: those after the old base's."""
    ours = image.history or []
    n = len(old_base.history or [])
    if len(ours) < n:
        raise RebaseRefused(f"the image has {len(ours)} history entries, fewer than the old base's {n}")
    return [h.clone() for h in ours[n:]]


def rebased_config(
    image: ImageConfig, old_base: ImageConfig, new_base: ImageConfig, app_diff_ids: list[str], *, force: bool = False
) -> ImageConfig:
    """``image``'s config moved from ``old_base`` onto ``new_base``: new base's layers and history
    first, then the image's own; the runtime config merged three ways (``force``: a conflicting
    field keeps the image's value). ``created`` is kept: the image's own content was made then."""
    out = image.clone()
    out.rootfs.diff_ids = [*new_base.rootfs.diff_ids, *app_diff_ids]
    history = [*(h.clone() for h in new_base.history or []), *app_history(image, old_base)]
    out.history = history or None
    out.config = merge_runtime_config(image.config, old_base.config, new_base.config, force=force)
    return out


def merge_runtime_config(image: ContainerConfig, old: ContainerConfig, new: ContainerConfig, *, force: bool = False) -> ContainerConfig:
    """Three-way merge of the runtime config; raises RebaseRefused naming the fields in conflict
    (with ``force`` they keep the image's values)."""
    mine, theirs_old, theirs_new = image.to_dict(), old.to_dict(), new.to_dict()
    conflicts: list[str] = []
    merged: dict[str, Any] = {}
    for field in sorted(set(mine) | set(theirs_old) | set(theirs_new)):
        a, o, n = (d.get(field, _ABSENT) for d in (mine, theirs_old, theirs_new))
        if field == "Env":
            value: Any = _merge_env(a, o, n, conflicts)
        elif field in _KEYED:
            value = _merge_keyed(field, a, o, n, conflicts)
        else:
            value = _pick(field, a, o, n, conflicts)
        if value is not _ABSENT and value is not None:
            merged[field] = value
    if conflicts and not force:
        raise RebaseRefused(f"the new base changed {', '.join(conflicts)}, which the image also sets")
    return ContainerConfig.from_dict(merged)


def _pick(name: str, mine: Any, old: Any, new: Any, conflicts: list[str]) -> Any:
    if mine == old:
        return new  # inherited: follow the base
    if old != new:
        conflicts.append(name)
    return mine


def _as_dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


def _merge_keyed(field: str, mine: Any, old: Any, new: Any, conflicts: list[str]) -> Any:
    a, o, n = _as_dict(mine), _as_dict(old), _as_dict(new)
    out: dict[str, Any] = {}
    for key in [*a, *(k for k in n if k not in a), *(k for k in o if k not in a and k not in n)]:
        value = _pick(f"{field}[{key}]", a.get(key, _ABSENT), o.get(key, _ABSENT), n.get(key, _ABSENT), conflicts)
        if value is not _ABSENT:
            out[key] = value
    return out or _ABSENT


def _merge_env(mine: Any, old: Any, new: Any, conflicts: list[str]) -> Any:
    def split(value: Any) -> dict[str, str]:
        return dict(item.partition("=")[::2] for item in value) if isinstance(value, list) else {}

    merged = _merge_keyed("Env", split(mine), split(old), split(new), conflicts)
    return _ABSENT if merged is _ABSENT else [f"{k}={v}" for k, v in merged.items()]
