"""The controller's trigger loop: what the registry, the poller, webhooks and finished builds say, turned into builds and redeploys.

Inputs, each from its own thread:
* registry push notifications and the poller: a tag now points at a new digest;
* a Build of kiln's reached Complete: its output tag points at the pushed digest (known before
  any notification arrives, which is what makes a cascade quick), and its workloads redeploy;
* a BuildConfig's spec changed (ConfigChange);
* a webhook delivery (see hooks.py).

The digests seen are kept in memory only; what has been acted on lives in each BuildConfig's
status (see imagechange.py), so a restart loses nothing: the poller's first round, or the next
notification, tells the new controller the current digests again and it compares them with the
statuses.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any

from kiln.cluster.instantiate import Trigger, start_triggered
from kiln.cluster.kube import ConflictError, Kube, KubeError, NotFoundError
from kiln.cluster.models import Build, BuildConfig, BuildPhase, BuildTriggerCause, TriggerType
from kiln.cluster.result import format_time
from kiln.cluster.triggers import imagechange
from kiln.cluster.triggers.notifications import PushEvent
from kiln.cluster.triggers.poller import DigestPoller

log = logging.getLogger("kiln.triggers")
BUSY = (BuildPhase.NEW, BuildPhase.PENDING, BuildPhase.RUNNING)
RECORD_ATTEMPTS = 5


def _pushed(build: Build) -> tuple[str, str] | None:
    """(output tag, digest) of a Complete build that pushed an image; None otherwise."""
    ref = build.status.output_docker_image_reference or (build.spec.output.to.name if build.spec.output.to else None)
    digest = build.status.image_digest
    if build.status.phase is not BuildPhase.COMPLETE or not ref or not digest:
        return None
    return ref.split("@")[0], digest


def _newest_pushed(builds: Iterable[Build], group: Callable[[Build, str], Hashable | None], order: Callable[[Build], Any]) -> list[tuple[Build, str, str]]:
    """Per group (None: left out), the newest by ``order`` of the builds that pushed: (build, tag, digest)."""
    newest: dict[Hashable, tuple[Build, str, str]] = {}
    for b in builds:
        pushed = _pushed(b)
        k = group(b, pushed[0]) if pushed is not None else None
        if pushed is not None and k is not None and (k not in newest or order(b) > order(newest[k][0])):
            newest[k] = (b, *pushed)
    return list(newest.values())


class TriggerLoop:
    """Inputs arrive on many threads and return at once; decisions are made on the loop's own
    thread (:meth:`run`), one evaluation at a time, as often as something new came in."""

    def __init__(self, kube: Kube, poller: DigestPoller | None = None, redeploy: Callable[[str, str, str], object] | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 track: Callable[[str], AbstractContextManager[None]] = lambda _what: nullcontext()) -> None:  # fmt: skip
        self.kube = kube
        self.track = track  # each step of run() is one unit of work for the controller's watchdog
        self.poller = poller
        self.redeploy = redeploy  # (image, digest, cause) -> anything
        self.clock = clock
        self._digests: dict[str, str] = {}
        self._polled: set[str] = set()  # asked for at least once since the start, found or not
        self._digests_lock = threading.Lock()
        self._evaluating = threading.Lock()  # one evaluation at a time: decisions read then write statuses
        self._kicked = threading.Event()
        self._waiting_logged: set[tuple[imagechange.Key, tuple[imagechange.Key, ...]]] = set()
        # Tags annotated workloads follow (by workload uid), and the digest each was last set to;
        # kept in memory: the workloads' own events fill it again after a restart.
        self._follows: dict[str, frozenset[str]] = {}
        self._set_to: dict[str, str] = {}
        self._follows_lock = threading.Lock()

    def kick(self) -> None:
        """Ask for an evaluation soon (many kicks while one runs make one more)."""
        self._kicked.set()

    def run(self, stop: threading.Event, poll_interval: float | None = None) -> None:
        """Evaluate whenever kicked; with a poller, poll every ``poll_interval`` seconds (± its jitter) too."""
        import random

        next_poll = 0.0
        self._guarded(self.catch_up)
        while not stop.is_set():
            now = time.monotonic()
            if self.poller is not None and poll_interval and now >= next_poll:
                jitter = self.poller.jitter * poll_interval
                next_poll = now + poll_interval + random.uniform(-jitter, jitter)
                self._guarded(self.after_poll)
            elif self._kicked.is_set():
                self._kicked.clear()
                self._guarded(self.evaluate)
            wait = (
                max(0.05, next_poll - time.monotonic())
                if self.poller is not None and poll_interval
                else 3600.0
            )
            self._kicked.wait(min(wait, 1.0))

    def _guarded(self, step: Callable[[], None]) -> None:
        try:
            with self.track(f"trigger loop: {step.__name__}"):
                step()
        except Exception:  # the loop must outlive any one bad object or registry
            log.exception("trigger loop")

    # -- inputs ---------------------------------------------------------------------------------
    def saw(self, ref: str, digest: str) -> None:
        """``ref`` (any spelling) points at ``digest`` now."""
        ref = imagechange.normalize(ref)
        with self._digests_lock:
            self._digests[ref] = digest
        if self.poller is not None:
            self.poller.seed(ref, digest)  # so its next round reports no stale "change"

    def on_push(self, events: Sequence[PushEvent]) -> None:
        for e in events:
            if e.tag:
                self.saw(f"{e.registry_host}/{e.repository}:{e.tag}", e.digest)
        if any(e.tag for e in events):
            self.kick()

    def after_poll(self) -> None:
        """Fold one poller round into the digests seen, then decide."""
        assert self.poller is not None
        self._watch(self.kube.list_configs())
        for change in self.poller.poll_once():
            with self._digests_lock:
                self._digests[change.ref] = change.new
        with self._digests_lock:
            for ref in self.poller.watched():
                now = self.poller.digest(ref)
                if now is not None and ref not in self._digests:
                    self._digests[ref] = now  # first sight after a restart: compared with the statuses
                self._polled.add(ref)
        self.evaluate()
        self._kicked.clear()

    def on_complete(self, build: Build) -> None:
        """A build finished: the images it started from are watched where only a build can tell
        them; its output tag has a new digest; workloads on it redeploy; chains move on."""
        try:
            self._record_bases(build)
        except KubeError as e:  # the redeploy and the chain after this build do not wait for it
            log.warning("build %s/%s: recording the images it started from: %s", build.namespace, build.name, e)
        pushed = _pushed(build)
        if pushed is None:
            return
        ref, digest = pushed
        self.saw(ref, digest)
        self.kick()
        if self.redeploy is not None:
            self._redeploy(ref, digest, f"build {build.namespace}/{build.name}")

    def catch_up(self) -> None:
        """After a start: record the bases of, and redeploy, each BuildConfig's newest complete
        build (a no-op where done).

        A controller that died between a build's Complete status and its completion hook would
        otherwise leave those workloads behind, and a Dockerfile in git unwatched. The output
        digests are not fed to the triggers: a tag may have moved on since, and the registry, not
        an old build, says where it points now.
        """
        per_config = _newest_pushed(self.kube.list_builds(None), lambda b, _ref: (b.namespace, b.config_name) if b.config_name else None, lambda b: b.number)
        for b, ref, digest in per_config:
            try:
                self._record_bases(b)
                if self.redeploy is not None:
                    self._redeploy(ref, digest, f"build {b.namespace}/{b.name}")
            except Exception:  # one BuildConfig's or workload's trouble does not stop the others' catch-up
                log.exception("catching up with build %s/%s", b.namespace, b.name)

    def on_workload(self, namespace: str, name: str, annotation: str, uid: str | None = None) -> None:
        """A workload with kiln.dev/triggers appeared or changed its triggers: give it the image each
        trigger follows now (OpenShift sets it at once too), and follow those tags from here on.

        A tag a kiln build pushes gets that build's image; any other tag gets what the registry says
        it points at (known from notifications or polls, else asked now), so a workload can follow an
        image that something outside kiln pushes.
        """
        from kiln.cluster.redeploy import parse_triggers

        try:
            follows = frozenset(imagechange.normalize(t.from_) for t in parse_triggers(annotation) if not t.paused)
        except ValueError:
            return  # the redeployer reports a broken annotation with an Event when it meets it
        if uid is not None:
            with self._follows_lock:
                self._follows[uid] = follows
            self.kick()  # the poller watches the new tags from the next evaluation on
        if not follows or self.redeploy is None:
            return

        def following(_b: Build, ref: str) -> str | None:
            tag = imagechange.normalize(ref)
            return tag if tag in follows else None

        built: set[str] = set()
        for b, ref, digest in _newest_pushed(self.kube.list_builds(None), following, lambda b: str(b.status.completion_timestamp)):
            built.add(imagechange.normalize(ref))
            self._redeploy(ref, digest, f"{namespace}/{name} follows {imagechange.normalize(ref)}; newest build {b.namespace}/{b.name}")
        for tag in sorted(follows - built):
            with self._digests_lock:
                points_at = self._digests.get(tag)
            if points_at is None and self.poller is not None:
                points_at = self.poller.resolve(tag)
                if points_at is not None:
                    self.saw(tag, points_at)
            if points_at is not None:
                self._redeploy(tag, points_at, f"{namespace}/{name} follows {tag}, which points at {points_at[:19]}")

    def forget_workload(self, uid: str) -> None:
        """The workload is gone: its tags are no longer followed on its account."""
        with self._follows_lock:
            self._follows.pop(uid, None)

    def followed(self) -> set[str]:
        """Every tag some annotated workload follows (normalized)."""
        with self._follows_lock:
            return set().union(*self._follows.values())

    def _follow_moved_tags(self, digests: dict[str, str]) -> None:
        """Redeploy the workloads on each followed tag that now points at a digest not yet set.

        Tags kiln builds were set when their build completed (on_complete), so this is about pushes
        from outside kiln, and about the first sighting after a restart (a no-op where pinned)."""
        if self.redeploy is None:
            return
        for tag in sorted(self.followed()):
            digest = digests.get(tag)
            with self._follows_lock:
                done = self._set_to.get(tag) == digest
            if digest is not None and not done:
                self._redeploy(tag, digest, f"{tag} now points at {digest[:19]}")

    def _redeploy(self, ref: str, digest: str, cause: str) -> None:
        assert self.redeploy is not None
        tag = imagechange.normalize(ref)
        self.redeploy(tag, digest, cause)
        with self._follows_lock:
            self._set_to[tag] = digest

    # -- decisions --------------------------------------------------------------------------------
    def evaluate(self) -> None:
        """Start every ImageChange build that is due; record first sights."""
        with self._evaluating:
            try:
                configs = self.kube.list_configs()
                busy = {
                    (b.namespace, b.config_name)
                    for b in self.kube.list_builds(None)
                    if b.config_name and b.status.phase in BUSY
                }
            except KubeError as e:
                log.warning("image triggers: %s", e)
                return
            for c in configs:
                try:
                    self._config_change(c)
                except KubeError as e:
                    log.warning("buildconfig %s: config change: %s", c.name, e)
            if self.poller is not None:
                self._watch(configs)
            with self._digests_lock:
                digests = dict(self._digests)
                known = set(self._polled) if self.poller is not None else None
            for d in imagechange.decide(configs, digests, busy, known):
                try:
                    self._carry_out(d, digests, busy)
                except KubeError as e:
                    log.warning("buildconfig %s/%s: image trigger: %s", *d.key, e)
            try:
                self._follow_moved_tags(digests)
            except KubeError as e:
                log.warning("redeploying workloads whose image moved: %s", e)

    def _watch(self, configs: Sequence[BuildConfig]) -> None:
        """Poll what BuildConfigs build on and what annotated workloads follow."""
        assert self.poller is not None
        self.poller.watch({ref for c in configs for ref in imagechange.watched_images(c)} | self.followed())

    def _carry_out(
        self, d: imagechange.Decision, digests: dict[str, str], busy: set[tuple[str, str]]
    ) -> None:
        ns, name = d.key
        if d.changes and d.waiting_for:
            mark = (d.key, d.waiting_for)
            if mark not in self._waiting_logged:
                self._waiting_logged.add(mark)
                ups = ", ".join(f"{n}/{u}" for n, u in d.waiting_for)
                log.info(
                    "buildconfig %s/%s: base changed; waiting for upstream %s to build first", ns, name, ups
                )
            if not d.first_seen:
                return

        def fire(config: BuildConfig) -> Trigger | None:
            # asked again on the BuildConfig as read now: a change recorded meanwhile is not built twice
            fresh = imagechange.decide([config], digests, busy & {d.key})
            if not fresh or not fresh[0].build:
                return None
            now = format_time(self.clock())
            changes = fresh[0].changes
            seen = [*changes, *fresh[0].first_seen]
            rebase, why = imagechange.rebase_candidate(config, changes, self._last_image(ns, name))
            log.info("buildconfig %s/%s: %s (%s)", ns, name, "rebase first" if rebase else "full build", why)
            return Trigger(
                TriggerType.IMAGE_CHANGE.value,
                imagechange.causes(changes),
                status={"imageChangeTriggers": imagechange.status_after(config, seen, now)},
                rebase=rebase,
            )

        if d.build:
            build = start_triggered(self.kube, ns, name, fire)
            if build is not None:
                log.info("buildconfig %s/%s: image change started build %s (%s)", ns, name, build.name,
                         ", ".join(f"{c.ref} {(c.old or '')[:19]} -> {c.new[:19]}" for c in d.changes))  # fmt: skip
            return
        self._record_first_sight(ns, name, d.first_seen)

    def _last_image(self, ns: str, name: str) -> str | None:
        """The digest-pinned image of the BuildConfig's newest complete build."""
        from kiln.cluster.redeploy import pinned

        newest = _newest_pushed(self.kube.list_builds(ns, name), lambda _b, _ref: name, lambda b: b.number)
        return pinned(newest[0][1], newest[0][2]) if newest else None

    def _record_first_sight(self, ns: str, name: str, seen: Sequence[imagechange.Change]) -> None:
        config = self.kube.get_config(ns, name)
        if config is None:
            return
        fresh = [c for c in seen if config.status.last_image_id(c.ref) is None]
        if not fresh:
            return
        status = {"imageChangeTriggers": imagechange.status_after(config, fresh, format_time(self.clock()))}
        try:
            self.kube.patch_status(
                "BuildConfig", ns, name, str(config.metadata.get("resourceVersion")), status
            )
        except (ConflictError, NotFoundError):
            return  # read again at the next evaluation
        log.info(
            "buildconfig %s/%s: watching %s", ns, name, ", ".join(f"{c.ref} at {c.new[:19]}" for c in fresh)
        )

    def _record_bases(self, build: Build) -> None:
        """Record what ``build`` started from in its BuildConfig's status, when that is how the
        BuildConfig's ImageChange trigger learns its images (imagechange.status_with_bases)."""
        bases = build.status.base_images
        if bases is None or not build.config_name or build.status.phase is not BuildPhase.COMPLETE:
            return
        ns, name = build.namespace, build.config_name
        for _ in range(RECORD_ATTEMPTS):
            config = self.kube.get_config(ns, name)
            if config is None or config.status.last_version != build.number:
                return  # a newer build was started: its bases, and its trigger's digests, are the ones to keep
            status = imagechange.status_with_bases(config, bases, format_time(self.clock()))
            if status is None:
                return
            try:
                self.kube.patch_status("BuildConfig", ns, name, str(config.metadata.get("resourceVersion")), {"imageChangeTriggers": status})
            except ConflictError:
                continue  # written meanwhile (a build number taken, a digest recorded): decide on what is there now
            except NotFoundError:
                return
            log.info("buildconfig %s/%s: watching the images build %s started from: %s", ns, name, build.name,
                     ", ".join(f"{b.name} at {b.digest[:19]}" for b in bases) or "none")  # fmt: skip
            return
        log.warning("buildconfig %s/%s: could not record the images build %s started from after %d conflicting writes", ns, name, build.name, RECORD_ATTEMPTS)

    # -- ConfigChange -----------------------------------------------------------------------------
    def on_config(self, ns: str, name: str) -> None:
        """A BuildConfig was created or changed: evaluate soon (ConfigChange, and the images it watches)."""
        self.kick()

    def _config_change(self, config: BuildConfig) -> None:
        """A ConfigChange trigger builds once per spec generation (decided on the loop's thread,
        so it never races an image trigger of the same BuildConfig)."""

        def fire(current: BuildConfig) -> Trigger | None:
            if not any(t.type is TriggerType.CONFIG_CHANGE for t in current.spec.triggers):
                return None
            generation = current.metadata.get("generation")
            if generation is None or generation == current.status.observed_generation:
                return None
            cause = BuildTriggerCause(message=f"Build configuration change (generation {generation})")
            return Trigger(TriggerType.CONFIG_CHANGE.value, [cause], status={"observedGeneration": generation})

        if fire(config) is None:
            return  # the listing says there is nothing to do: no API call
        ns = str(config.metadata.get("namespace", ""))
        try:
            build = start_triggered(self.kube, ns, config.name, fire)
        except NotFoundError:
            return
        if build is not None:
            log.info("buildconfig %s/%s: config change started build %s", ns, config.name, build.name)
