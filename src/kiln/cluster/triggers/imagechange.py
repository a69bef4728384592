"""ImageChange triggers, decided in one pure function: BuildConfigs and the digests seen now in, builds to start out.

Every decision is made from stored state (each BuildConfig's ``status.imageChangeTriggers``,
the phases of its Builds) and the digests the controller sees now, never from what the
controller remembers. So a restarted controller decides exactly what the stopped one would have:
a change recorded in a status has been built for, one not recorded has not.

Chains: when a BuildConfig's base is another BuildConfig's output (a builder image and the apps
built with it), the downstream one waits while anything upstream has a build queued or running,
or a change of its own still to build. It then builds once, for all its changed bases together,
after the upstream image has been pushed. That is what makes an update cascade through a chain
once and in order, even when an app uses both the base and the builder built on it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from kiln.cluster.models import (
    BaseImage,
    BuildConfig,
    BuildTriggerCause,
    ImageChangeCause,
    ImageReference,
    RebaseRequest,
    StrategyType,
    TriggerType,
)
from kiln.cluster.triggers.poller import normalize as poller_normalize
from kiln.errors import KilnError

Key = tuple[str, str]  # (namespace, name) of a BuildConfig


def normalize(ref: str) -> str:
    """One spelling per image (the poller's): ``busybox`` is ``docker.io/library/busybox:latest``."""
    try:
        return poller_normalize(ref)
    except KilnError:
        return ref


def key(config: BuildConfig) -> Key:
    return (str(config.metadata.get("namespace", "")), config.name)


def _stage_bases(text: str, build_args: Mapping[str, str] | None) -> list[str | None]:
    """Per stage of an inline Dockerfile, the image its FROM names (None: a stage, scratch, or unknown)."""
    from kiln.frontend.dockerfile.instructions import parse_dockerfile
    from kiln.frontend.dockerfile.shell import expand
    from kiln.frontend.dockerfile.stages import resolve_global_args

    try:
        df = parse_dockerfile(text)
    except KilnError:
        return []  # the build itself reports a broken Dockerfile, with its line
    scope = resolve_global_args(df.meta_args, build_args or {}, escape=df.escape)
    seen_stages: set[str] = set()
    out: list[str | None] = []
    for stage in df.stages:
        base = expand(stage.base, scope, df.escape)
        image = base.lower() not in seen_stages and base != "scratch" and base != "" and "$" not in base
        out.append(normalize(base) if image else None)
        if stage.name:
            seen_stages.add(stage.name)
    return out


def dockerfile_bases(text: str, build_args: Mapping[str, str] | None = None) -> list[str]:
    """The images an inline Dockerfile's FROM lines name (not stages, not scratch), in order."""
    return list(dict.fromkeys(b for b in _stage_bases(text, build_args) if b is not None))


def final_base(config: BuildConfig) -> str | None:
    """The image the output's last stage starts from, if a Docker BuildConfig says so without its source."""
    strategy = config.spec.strategy
    if strategy.type is not StrategyType.DOCKER:
        return None
    docker = strategy.docker_strategy
    if docker is not None and docker.from_ is not None:
        return normalize(docker.from_.name)
    if (docker is not None and docker.target) or not config.spec.source.dockerfile:
        return None
    stages = _stage_bases(config.spec.source.dockerfile, {a.name: a.value for a in (docker.build_args if docker else [])})
    return stages[-1] if stages else None


def rebase_candidate(config: BuildConfig, changes: Sequence[Change], last_image: str | None) -> tuple[RebaseRequest | None, str]:
    """Ask the build pod to try a rebase of ``last_image`` when the one change is the final stage's base.

    Only for sources that cannot have moved since the last build (an inline Dockerfile, or git
    pinned to a commit); the pod still refuses, and builds in full, unless the image itself says
    its last stage ran nothing on the base (docs/rebase.md). Returns the request, or why not.
    """
    docker = config.spec.strategy.docker_strategy
    if config.spec.strategy.type is not StrategyType.DOCKER or (docker is not None and not docker.rebase):
        return None, "not a Docker build that allows rebases"
    if last_image is None:
        return None, "no complete build to rebase"
    if len(changes) != 1:
        return None, "more than one image changed"
    source = config.spec.source
    if source.binary is not None or (source.git is not None and not source.git.ref_is_commit()):
        return None, "the source may have changed since the last build"
    base = final_base(config)
    if base is None or base != changes[0].ref:
        return None, f"{changes[0].ref} is not the final stage's base ({base or 'unknown'})"
    return RebaseRequest(image=last_image, base=base), "only the final stage's base changed"


def strategy_base(config: BuildConfig) -> list[str]:
    """What a BuildConfig builds on, when its triggers do not name an image."""
    strategy = config.spec.strategy
    named: ImageReference | None = None
    if strategy.type is StrategyType.DOCKER and strategy.docker_strategy is not None:
        named = strategy.docker_strategy.from_
    elif strategy.source_strategy is not None:
        named = strategy.source_strategy.from_
    elif strategy.custom_strategy is not None:
        named = strategy.custom_strategy.from_
    if named is not None:
        return [normalize(named.name)]
    if strategy.type is StrategyType.DOCKER and config.spec.source.dockerfile:
        args = {
            a.name: a.value for a in (strategy.docker_strategy.build_args if strategy.docker_strategy else [])
        }
        return dockerfile_bases(config.spec.source.dockerfile, args)
    return []


def _named_by_triggers(config: BuildConfig) -> set[str]:
    """The images ImageChange triggers name in ``from`` (paused ones too: those images are theirs)."""
    return {
        normalize(t.image_change.from_.name)
        for t in config.spec.triggers
        if t.type is TriggerType.IMAGE_CHANGE and t.image_change is not None and t.image_change.from_ is not None
    }


def learns_bases(config: BuildConfig) -> bool:
    """True when an unpaused ImageChange trigger without ``from`` watches images the spec cannot
    tell (a Dockerfile in git): what its builds started from is recorded in the status instead."""
    fromless = any(
        t.type is TriggerType.IMAGE_CHANGE
        and (t.image_change is None or (t.image_change.from_ is None and not t.image_change.paused))
        for t in config.spec.triggers
    )
    return fromless and not strategy_base(config)


def recorded_bases(config: BuildConfig) -> list[str]:
    """The images the last build started from, as recorded in the status (see ``status_with_bases``)."""
    named = _named_by_triggers(config)
    return [t.from_.name for t in config.status.image_change_triggers if t.from_.name not in named]


def watched_images(config: BuildConfig) -> list[str]:
    """The images whose new digests rebuild ``config`` (its unpaused ImageChange triggers)."""
    out: list[str] = []
    for t in config.spec.triggers:
        if t.type is not TriggerType.IMAGE_CHANGE or (t.image_change is not None and t.image_change.paused):
            continue
        refs = (
            [normalize(t.image_change.from_.name)]
            if t.image_change is not None and t.image_change.from_ is not None
            else strategy_base(config) or recorded_bases(config)
        )
        out += [r for r in refs if r not in out]
    return out


def output_image(config: BuildConfig) -> str | None:
    to = config.spec.output.to
    return normalize(to.name) if to is not None else None


@dataclass(frozen=True)
class Change:
    ref: str
    old: str | None
    new: str


@dataclass(frozen=True)
class Decision:
    """For one BuildConfig: changes to build for now, or first sights only to record."""

    key: Key
    changes: tuple[Change, ...] = ()  # non-empty: start a build
    first_seen: tuple[Change, ...] = ()  # recorded without a build (nothing to compare with yet)
    waiting_for: tuple[Key, ...] = ()  # upstream BuildConfigs this one waits for
    unknown: tuple[str, ...] = ()  # watched images whose digest is not known yet: wait to build all at once

    @property
    def build(self) -> bool:
        return bool(self.changes) and not self.waiting_for and not self.unknown


@dataclass
class _Graph:
    configs: dict[Key, BuildConfig]
    digests: Mapping[str, str]
    busy: frozenset[Key]
    known: frozenset[str] | None
    producers: dict[str, list[Key]] = field(default_factory=dict)
    watched: dict[Key, list[str]] = field(default_factory=dict)  # once per evaluation: it parses Dockerfiles
    _dirty: dict[Key, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for k, c in self.configs.items():
            self.watched[k] = watched_images(c)
            out = output_image(c)
            if out is not None:
                self.producers.setdefault(out, []).append(k)

    def changes(self, k: Key) -> tuple[list[Change], list[Change]]:
        config = self.configs[k]
        changed: list[Change] = []
        first: list[Change] = []
        for ref in self.watched[k]:
            now = self.digests.get(ref)
            if now is None:
                continue
            last = config.status.last_image_id(ref)
            if last is None:
                first.append(Change(ref, None, now))
            elif last != now:
                changed.append(Change(ref, last, now))
        return changed, first

    def unknown(self, k: Key) -> list[str]:
        """Images ``k`` has built with whose current digest nobody has told us yet (after a restart,
        until the first poll): building before would build twice, once per image as it arrives."""
        if self.known is None:
            return []
        config = self.configs[k]
        return [r for r in self.watched[k] if r not in self.known and r not in self.digests and config.status.last_image_id(r) is not None]

    def upstream(self, k: Key) -> list[Key]:
        ups = [p for ref in self.watched[k] for p in self.producers.get(ref, []) if p != k]
        return list(dict.fromkeys(ups))

    def dirty(self, k: Key, path: frozenset[Key] = frozenset()) -> bool:
        """True while ``k`` will still produce a new image: it builds, waits to build, or an
        upstream of it will. A cycle in the graph counts as not dirty (it would never settle)."""
        if k in path:
            return False
        if k not in self._dirty:
            own = k in self.busy or bool(self.changes(k)[0]) or bool(self.unknown(k))
            self._dirty[k] = own or any(self.dirty(u, path | {k}) for u in self.upstream(k))
        return self._dirty[k]


def decide(
    configs: Iterable[BuildConfig], digests: Mapping[str, str], busy: Iterable[Key] = (), known: Iterable[str] | None = None
) -> list[Decision]:
    """What to do for every BuildConfig with ImageChange triggers.

    ``digests``: the current manifest digest of every image seen (normalized refs);
    ``busy``: BuildConfigs with a build New, Pending or Running;
    ``known``: images whose state has been asked for (polled), found or not; None: all of them.
    """
    graph = _Graph({key(c): c for c in configs}, digests, frozenset(busy), None if known is None else frozenset(known))
    out: list[Decision] = []
    for k in graph.configs:
        changed, first = graph.changes(k)
        if not changed and not first:
            continue
        waiting = tuple(u for u in graph.upstream(k) if graph.dirty(u, frozenset({k})))
        out.append(Decision(k, tuple(changed), tuple(first), waiting, tuple(graph.unknown(k))))
    return out


def status_after(config: BuildConfig, seen: Sequence[Change], now: str) -> list[dict[str, object]]:
    """``status.imageChangeTriggers`` with ``seen`` recorded (a merge patch replaces the list whole)."""
    merged = {t.from_.name: t.to_json_dict() for t in config.status.image_change_triggers}
    for c in seen:
        merged[c.ref] = _trigger_status(c.ref, c.new, now)
    return list(merged.values())


def status_with_bases(config: BuildConfig, bases: Sequence[BaseImage], now: str) -> list[dict[str, object]] | None:
    """``status.imageChangeTriggers`` once a build of ``config`` started from ``bases``: the images
    triggers name are kept as they are, the recorded bases become exactly ``bases`` (an image the
    Dockerfile no longer uses is no longer watched). None: nothing to change, or ``config`` knows
    its bases from its spec."""
    if not learns_bases(config):
        return None
    named = _named_by_triggers(config)
    before = {t.from_.name: t for t in config.status.image_change_triggers}
    out = [t.to_json_dict() for t in config.status.image_change_triggers if t.from_.name in named]
    for b in bases:
        if b.name in named:
            continue
        old = before.get(b.name)
        if old is not None and old.last_triggered_image_id == b.digest:
            out.append(old.to_json_dict())  # keeps the time it was last triggered
        else:
            out.append(_trigger_status(b.name, b.digest, now))
    return None if out == [t.to_json_dict() for t in config.status.image_change_triggers] else out


def _trigger_status(ref: str, digest: str, now: str) -> dict[str, object]:
    return {"from": {"kind": "DockerImage", "name": ref}, "lastTriggeredImageID": digest, "lastTriggerTime": now}


def causes(changes: Sequence[Change]) -> list[BuildTriggerCause]:
    return [
        BuildTriggerCause(
            message=f"Image change: {c.ref} is now {c.new[:19]}",
            image_change_build=ImageChangeCause.model_validate(
                {"from": {"name": c.ref}, "oldImageID": c.old, "imageID": c.new}
            ),
        )
        for c in changes
    ]
