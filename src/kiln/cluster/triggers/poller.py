"""Image-change detection by polling, for registries that send no notifications.

The controller tells a :class:`DigestPoller` which tags its BuildConfigs build from
(:meth:`~DigestPoller.watch`) and which manifest digests they were last built against
(:meth:`~DigestPoller.seed`); each round HEADs every distinct tag once and reports a
:class:`DigestChange` when the digest behind a known tag moved.

A poller must never stall on one registry: requests are sent without kiln's in-place retries
(the next round is the retry), and a 429/5xx or an unreachable host puts that whole host on hold
— until its Retry-After, else with exponential backoff — while the other hosts go on.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from kiln.errors import AuthError, KilnError
from kiln.registry.client import Session
from kiln.registry.options import RegistryOptions
from kiln.registry.reference import Reference
from kiln.registry.transport import TransientError

log = logging.getLogger(__name__)

#: First hold of a failing host that gave no Retry-After; doubles per consecutive failure.
BACKOFF_BASE = 15.0
#: A long-lived session caches credentials; renewing it picks up rotated pull secrets.
SESSION_MAX_AGE = 600.0


def normalize(ref: str) -> str:
    """The form the poller keys, reports and compares tags by (``busybox`` -> ``docker.io/library/busybox:latest``)."""
    return str(Reference.parse(ref))


@dataclass(frozen=True)
class DigestChange:
    """The manifest digest behind ``ref`` (normalized) moved from ``old`` to ``new``."""

    ref: str
    old: str | None
    new: str


@dataclass
class _Hold:
    """A host on hold: skipped until ``until`` (poller clock); ``failures`` in a row so far."""

    until: float
    failures: int


class DigestPoller:
    """Watches tags and reports when the manifest digest behind one changes.

    ``on_change`` is called for each change, from the polling thread, after the new digest is
    recorded (a callback that fails is logged; the change is not reported again).
    ``clock`` (monotonic seconds) and ``sleep`` (between rounds of :meth:`run`; by default a wait
    on the stop event) exist for tests. ``watch``, ``seed`` and ``digest`` may be called from any
    thread while :meth:`run` polls.
    """

    def __init__(
        self,
        options: RegistryOptions,
        *,
        interval: float = 60.0,
        jitter: float = 0.2,
        on_change: Callable[[DigestChange], None],
        backoff_max: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        if interval <= 0 or not 0 <= jitter < 1:
            raise ValueError("interval must be positive and jitter a fraction in [0, 1)")
        # No in-place retries: transport would otherwise sleep through a Retry-After mid-round.
        self.options = replace(options, max_retries=0)
        self.interval, self.jitter, self.backoff_max = interval, jitter, backoff_max
        self.on_change = on_change
        self._clock, self._sleep = clock, sleep
        self._lock = threading.Lock()  # guards _refs, _known, _holds, _problems
        self._round = threading.Lock()  # one round at a time (it owns _session)
        self._refs: dict[str, Reference] = {}
        self._known: dict[str, str] = {}
        self._holds: dict[str, _Hold] = {}
        self._problems: dict[str, str] = {}  # last per-ref failure, to log each only once
        self._session: Session | None = None
        self._session_born = 0.0

    # -- what to watch ------------------------------------------------------------------------

    def watch(self, refs: Iterable[str]) -> None:
        """Replace the watched set. Invalid and digest-pinned references are skipped (logged)."""
        parsed: dict[str, Reference] = {}
        for text in refs:
            try:
                ref = Reference.parse(text)
            except KilnError as e:
                log.warning("not watching %s", e)
                continue
            if ref.digest is not None:
                log.debug("not watching %s: pinned by digest, it cannot change", text)
                continue
            parsed[str(ref)] = ref
        with self._lock:
            self._refs = parsed
            # Forget what is no longer watched: the controller re-seeds a tag when it returns.
            self._known = {k: v for k, v in self._known.items() if k in parsed}
            self._problems = {k: v for k, v in self._problems.items() if k in parsed}

    def watched(self) -> list[str]:
        """The watched references, normalized."""
        with self._lock:
            return list(self._refs)

    def seed(self, ref: str, digest: str) -> None:
        """Record ``digest`` as already handled for ``ref``; the latest seed or sighting wins."""
        key = normalize(ref)
        with self._lock:
            self._known[key] = digest

    def digest(self, ref: str) -> str | None:
        """The digest last seen (or seeded) for ``ref``."""
        key = normalize(ref)
        with self._lock:
            return self._known.get(key)

    def resolve(self, ref: str) -> str | None:
        """HEAD ``ref`` now, off the schedule (a workload just began to follow it): its digest, or
        None when it cannot be had (the failure is logged once, as a round's would be)."""
        try:
            parsed = Reference.parse(ref)
        except KilnError as e:
            log.warning("not resolving %s", e)
            return None
        key = str(parsed)
        with self._round:
            try:
                found = self._current_session().client(parsed).head_manifest(parsed.identifier, key)
            except KilnError as e:
                self._problem(key, str(e))
                return None
        if found is None:
            self._problem(key, f"{key}: not found")
            return None
        return str(found.digest)

    # -- polling ------------------------------------------------------------------------------

    def poll_once(self) -> list[DigestChange]:
        """One HEAD per distinct watched tag on hosts not on hold; returns (and reports) the changes."""
        with self._round:
            with self._lock:
                refs = list(self._refs.items())
            by_host: dict[str, list[tuple[str, Reference]]] = {}
            for key, ref in refs:
                by_host.setdefault(ref.api_host, []).append((key, ref))
            session = self._current_session()
            changes: list[DigestChange] = []
            renew = False
            for host, group in by_host.items():
                if self._held(host):
                    continue
                for key, ref in group:
                    try:
                        found = session.client(ref).head_manifest(ref.identifier, key)
                    except TransientError as e:
                        self._hold(host, e, len(group))
                        break
                    except KilnError as e:
                        renew |= isinstance(e, AuthError)
                        self._problem(key, str(e))
                        continue
                    if found is None:
                        self._problem(key, f"{key}: not found")
                        continue
                    change = self._record(key, str(found.digest))
                    if change is not None:
                        changes.append(change)
                else:
                    with self._lock:
                        self._holds.pop(host, None)
            if renew:
                self._close_session()
        for change in changes:
            log.info("%s changed: %s -> %s", change.ref, change.old, change.new)
            try:
                self.on_change(change)
            except Exception:
                log.exception("handling the change of %s failed", change.ref)
        return changes

    def run(self, stop: threading.Event) -> None:
        """Poll every ``interval`` ± ``jitter`` until ``stop`` is set. Nothing raised ends the loop."""
        try:
            while not stop.is_set():
                try:
                    self.poll_once()
                except Exception:
                    log.exception("digest poll round failed")
                delay = self.interval * (1 + random.uniform(-self.jitter, self.jitter))
                if self._sleep is None:
                    stop.wait(delay)
                else:
                    self._sleep(delay)
        finally:
            with self._round:
                self._close_session()

    # -- internals ----------------------------------------------------------------------------

    def _record(self, key: str, digest: str) -> DigestChange | None:
        with self._lock:
            if key not in self._refs:
                return None  # unwatched during the round
            self._problems.pop(key, None)
            old = self._known.get(key)
            self._known[key] = digest
        # A first sighting without a seed only sets the baseline.
        return DigestChange(key, old, digest) if old is not None and old != digest else None

    def _problem(self, key: str, message: str) -> None:
        with self._lock:
            repeated = self._problems.get(key) == message
            self._problems[key] = message
        log.log(logging.DEBUG if repeated else logging.WARNING, "digest poll: %s", message)

    def _held(self, host: str) -> bool:
        with self._lock:
            hold = self._holds.get(host)
        return hold is not None and self._clock() < hold.until

    def _hold(self, host: str, error: TransientError, refs: int) -> None:
        with self._lock:
            failures = self._holds[host].failures + 1 if host in self._holds else 1
            if error.retry_after is not None:
                wait = min(error.retry_after, self.backoff_max)
            else:
                wait = min(BACKOFF_BASE * 2 ** (failures - 1), self.backoff_max)
            self._holds[host] = _Hold(self._clock() + wait, failures)
        log.warning("%s; not polling the %d tag(s) on %s for %.0fs", error, refs, host, wait)

    def _current_session(self) -> Session:
        now = self._clock()
        if self._session is not None and now - self._session_born > SESSION_MAX_AGE:
            self._close_session()
        if self._session is None:
            self._session, self._session_born = Session(self.options), now
        return self._session

    def _close_session(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
