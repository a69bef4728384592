"""DigestPoller against real registries (docker-registry), with the fault proxy for rate limits.

Digests are judged by skopeo (``skopeo inspect --raw`` hashed), never by kiln itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from kiln.cluster.triggers.poller import BACKOFF_BASE, DigestChange, DigestPoller, normalize
from kiln.registry.options import RegistryOptions
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.images import REF_NAME, build_layer_tar, push_with_skopeo, write_image
from tests.fixtures.registry import Registry, RepoNamer

HEADS = r"/manifests/"


class FakeClock:
    """The poller's monotonic clock, moved by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def opts(tmp_path: Path) -> RegistryOptions:
    """An empty auth file, so a developer's own credentials never leak in."""
    empty = tmp_path / "empty-auth.json"
    empty.write_text("{}")
    return RegistryOptions(auth_file=empty, timeout=30)


def push_unique(
    tmp_path: Path, registry: Registry | FaultProxy | str, repo_tag: str, creds: tuple[str, str] | None = None
) -> None:
    """Push a one-file image no other push has (so every call moves the tag)."""
    layout = tmp_path / f"layout-{uuid.uuid4().hex[:8]}"
    write_image(layout, [build_layer_tar({"stamp": uuid.uuid4().bytes})], tag="latest")
    push_with_skopeo(layout, registry, repo_tag, creds, src_tag="latest")


def skopeo_digest(host: str, repo_tag: str, creds: tuple[str, str] | None = None) -> str:
    """The judge: sha256 of the manifest bytes skopeo reads for the tag."""
    auth = [f"--creds={creds[0]}:{creds[1]}"] if creds else ["--no-creds"]
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", *auth, f"docker://{host}/{repo_tag}"],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def make_poller(
    options: RegistryOptions,
    clock: Callable[[], float] = time.monotonic,
    *,
    interval: float = 60.0,
    jitter: float = 0.2,
) -> tuple[DigestPoller, list[DigestChange]]:
    """A poller whose changes are collected in the returned list."""
    seen: list[DigestChange] = []
    poller = DigestPoller(options, interval=interval, jitter=jitter, on_change=seen.append, clock=clock)
    return poller, seen


def test_first_sight_records_without_change(
    tmp_path: Path, registry: Registry, fresh_repo: RepoNamer, opts: RegistryOptions
) -> None:
    repo = fresh_repo()
    push_unique(tmp_path, registry, f"{repo}:v1")
    ref = f"{registry.host}/{repo}:v1"
    poller, seen = make_poller(opts)
    poller.watch([ref])
    assert poller.poll_once() == []
    assert seen == []
    assert poller.digest(ref) == skopeo_digest(registry.host, f"{repo}:v1")


def test_seeded_digest_and_new_push_fire_exactly_one_change(
    tmp_path: Path, registry: Registry, fresh_repo: RepoNamer, opts: RegistryOptions
) -> None:
    repo = fresh_repo()
    push_unique(tmp_path, registry, f"{repo}:v1")
    first = skopeo_digest(registry.host, f"{repo}:v1")
    ref = f"{registry.host}/{repo}:v1"

    # A restarted controller seeds what its BuildConfig already handled: nothing fires.
    poller, seen = make_poller(opts)
    poller.watch([ref])
    poller.seed(ref, first)
    assert poller.poll_once() == []

    push_unique(tmp_path, registry, f"{repo}:v1")
    second = skopeo_digest(registry.host, f"{repo}:v1")
    assert second != first
    expected = DigestChange(normalize(ref), first, second)
    assert poller.poll_once() == [expected]
    assert seen == [expected]
    assert poller.digest(ref) == second
    assert poller.poll_once() == []
    assert seen == [expected]


def test_stale_seed_fires_on_first_poll(
    tmp_path: Path, registry: Registry, fresh_repo: RepoNamer, opts: RegistryOptions
) -> None:
    """A tag that moved while the controller was down is a change, even on the first round."""
    repo = fresh_repo()
    push_unique(tmp_path, registry, f"{repo}:v1")
    stale = skopeo_digest(registry.host, f"{repo}:v1")
    push_unique(tmp_path, registry, f"{repo}:v1")
    current = skopeo_digest(registry.host, f"{repo}:v1")
    ref = f"{registry.host}/{repo}:v1"
    poller, seen = make_poller(opts)
    poller.seed(ref, stale)  # seeding before watch() is fine
    poller.watch([ref])
    assert poller.poll_once() == [DigestChange(normalize(ref), stale, current)]
    assert len(seen) == 1


def test_fifty_refs_to_one_tag_cost_one_head_per_round(
    tmp_path: Path, fault_proxy: FaultProxy, fresh_repo: RepoNamer, opts: RegistryOptions
) -> None:
    repo = fresh_repo()
    push_unique(tmp_path, fault_proxy, f"{repo}:latest")
    # Fifty BuildConfigs on one base, some spelling it without the tag.
    refs = [f"{fault_proxy.host}/{repo}:latest"] * 40 + [f"{fault_proxy.host}/{repo}"] * 10
    poller, _ = make_poller(opts)
    poller.watch(refs)
    fault_proxy.clear_log()
    for round_no in (1, 2, 3):
        assert poller.poll_once() == []
        assert len(fault_proxy.requests("HEAD", HEADS)) == round_no
    assert len(fault_proxy.requests("GET", HEADS)) == 0  # the HEAD was complete: no body fetched


def test_rate_limited_host_is_skipped_until_retry_after(
    tmp_path: Path,
    registry: Registry,
    fault_proxy_factory: Callable[[Registry], FaultProxy],
    fresh_repo: RepoNamer,
    opts: RegistryOptions,
) -> None:
    limited, healthy = fault_proxy_factory(registry), fault_proxy_factory(registry)
    repo_a, repo_b = fresh_repo("a"), fresh_repo("b")
    push_unique(tmp_path, registry, f"{repo_a}:v1")
    push_unique(tmp_path, registry, f"{repo_b}:v1")
    limited_refs = [f"{limited.host}/{repo_a}:v1", f"{limited.host}/{repo_b}:v1"]
    healthy_ref = f"{healthy.host}/{repo_a}:v1"
    clock = FakeClock()
    poller, seen = make_poller(opts, clock)
    poller.watch([*limited_refs, healthy_ref])

    limited.fail(HEADS, method="HEAD", status=429, retry_after=30, times=1000)
    started = time.monotonic()
    assert poller.poll_once() == []
    # kiln's transport would sleep through Retry-After (30 s, several times); the poller must not.
    assert time.monotonic() - started < 5
    assert [r.status for r in limited.requests("HEAD", HEADS)] == [429]  # the 2nd tag was not tried
    assert poller.digest(limited_refs[0]) is None and poller.digest(limited_refs[1]) is None
    assert len(healthy.requests("HEAD", HEADS)) == 1
    before = poller.digest(healthy_ref)
    assert before is not None

    # Just before the Retry-After runs out: the limited host is left alone, the other one is polled.
    push_unique(tmp_path, registry, f"{repo_a}:v1")
    clock.now += 29.5
    sent_to_limited = len(limited.requests())
    changes = poller.poll_once()
    assert len(limited.requests()) == sent_to_limited
    after = skopeo_digest(registry.host, f"{repo_a}:v1")
    assert changes == [DigestChange(normalize(healthy_ref), before, after)] == seen
    assert len(healthy.requests("HEAD", HEADS)) == 2

    # Past it: the host is polled again, every one of its tags.
    limited.clear_faults()
    clock.now += 1.0
    assert poller.poll_once() == []
    assert len(limited.requests("HEAD", HEADS)) == 3
    assert poller.digest(limited_refs[0]) == after
    assert poller.digest(limited_refs[1]) == skopeo_digest(registry.host, f"{repo_b}:v1")


def test_backoff_without_retry_after_doubles_and_resets(
    tmp_path: Path, fault_proxy: FaultProxy, fresh_repo: RepoNamer, opts: RegistryOptions
) -> None:
    repo = fresh_repo()
    push_unique(tmp_path, fault_proxy, f"{repo}:v1")
    ref = f"{fault_proxy.host}/{repo}:v1"
    clock = FakeClock(0.0)
    poller, _ = make_poller(opts, clock)
    poller.watch([ref])

    def heads_at(now: float) -> int:
        clock.now = now
        before = len(fault_proxy.requests("HEAD", HEADS))
        poller.poll_once()
        return len(fault_proxy.requests("HEAD", HEADS)) - before

    fault_proxy.fail(HEADS, method="HEAD", status=503, times=2)
    assert heads_at(0.0) == 1  # 503: on hold for BACKOFF_BASE
    assert heads_at(BACKOFF_BASE - 1) == 0
    assert heads_at(BACKOFF_BASE + 1) == 1  # 503 again: twice as long
    assert heads_at(BACKOFF_BASE + 1 + 2 * BACKOFF_BASE - 1) == 0
    assert heads_at(BACKOFF_BASE + 1 + 2 * BACKOFF_BASE + 1) == 1  # recovered
    assert poller.digest(ref) is not None
    fault_proxy.fail(HEADS, method="HEAD", status=503, times=1)
    assert heads_at(100.0) == 1  # a success reset the count: back to the base hold
    assert heads_at(100.0 + BACKOFF_BASE + 1) == 1


def test_htpasswd_registry_with_and_without_credentials(
    tmp_path: Path, auth_registry: Registry, fresh_repo: RepoNamer, opts: RegistryOptions
) -> None:
    repo = fresh_repo()
    creds = auth_registry.credentials
    push_unique(tmp_path, auth_registry, f"{repo}:v1", creds)
    ref = f"{auth_registry.host}/{repo}:v1"

    anonymous, seen = make_poller(opts)
    anonymous.watch([ref])
    assert anonymous.poll_once() == []  # refused: logged, no exception, nothing recorded
    assert anonymous.digest(ref) is None and seen == []

    auth_file = auth_registry.write_docker_config(tmp_path / "auth")
    poller, seen = make_poller(RegistryOptions(auth_file=auth_file, timeout=30))
    poller.watch([ref])
    assert poller.poll_once() == []
    first = skopeo_digest(auth_registry.host, f"{repo}:v1", creds)
    assert poller.digest(ref) == first
    push_unique(tmp_path, auth_registry, f"{repo}:v1", creds)
    second = skopeo_digest(auth_registry.host, f"{repo}:v1", creds)
    assert poller.poll_once() == [DigestChange(normalize(ref), first, second)] == seen


def test_missing_tag_is_no_change(
    tmp_path: Path,
    registry: Registry,
    fresh_repo: RepoNamer,
    opts: RegistryOptions,
    caplog: pytest.LogCaptureFixture,
) -> None:
    repo = fresh_repo()
    ref = f"{registry.host}/{repo}:absent"
    poller, seen = make_poller(opts)
    poller.watch([ref])
    with caplog.at_level(logging.WARNING, logger="kiln.cluster.triggers.poller"):
        assert poller.poll_once() == []
        assert poller.poll_once() == []
    assert poller.digest(ref) is None and seen == []
    assert len([r for r in caplog.records if "not found" in r.getMessage()]) == 1  # logged once

    # The tag appearing later is a first sighting, not a change.
    push_unique(tmp_path, registry, f"{repo}:absent")
    assert poller.poll_once() == []
    assert poller.digest(ref) == skopeo_digest(registry.host, f"{repo}:absent")


def test_multi_arch_tag_reports_the_index_digest(
    tmp_path: Path, registry: Registry, fresh_repo: RepoNamer, opts: RegistryOptions
) -> None:
    layout = tmp_path / "multi"
    manifests = []
    for arch in ("amd64", "arm64"):
        img = write_image(layout, [build_layer_tar({"arch": arch.encode()})], tag=arch)
        manifests.append({**img.manifest.to_json(), "platform": {"architecture": arch, "os": "linux"}})
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests}
    ).encode()
    index_digest = "sha256:" + hashlib.sha256(index).hexdigest()
    (layout / "blobs" / "sha256" / index_digest.split(":")[1]).write_bytes(index)
    top = json.loads((layout / "index.json").read_text())
    top["manifests"] = [
        {
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": index_digest,
            "size": len(index),
            "annotations": {REF_NAME: "multi"},
        }
    ]
    (layout / "index.json").write_text(json.dumps(top))
    repo = fresh_repo()
    subprocess.run(
        [
            "skopeo", "--insecure-policy", "copy", "--all", "--dest-tls-verify=false",
            f"oci:{layout}:multi", f"docker://{registry.host}/{repo}:multi",
        ],
        capture_output=True,
        check=True,
        timeout=120,
    )  # fmt: skip
    ref = f"{registry.host}/{repo}:multi"
    poller, _ = make_poller(opts)
    poller.watch([ref])
    poller.poll_once()
    assert poller.digest(ref) == skopeo_digest(registry.host, f"{repo}:multi") == index_digest


def test_watch_normalizes_and_skips_pinned_and_invalid(opts: RegistryOptions) -> None:
    poller, _ = make_poller(opts)
    poller.seed("busybox", "sha256:" + "a" * 64)
    poller.watch(["busybox", "docker.io/library/busybox:latest", "Not A Ref", "busybox@sha256:" + "b" * 64])
    assert poller.digest("docker.io/library/busybox:latest") == "sha256:" + "a" * 64
    poller.watch(["alpine"])
    assert poller.digest("busybox") is None  # unwatched tags are forgotten


def test_run_survives_errors_jitters_and_stops(
    tmp_path: Path, registry: Registry, fresh_repo: RepoNamer, opts: RegistryOptions
) -> None:
    repo = fresh_repo()
    push_unique(tmp_path, registry, f"{repo}:v1")
    ref = f"{registry.host}/{repo}:v1"
    stop = threading.Event()
    delays: list[float] = []
    ticks = iter(range(1_000_000))

    def clock() -> float:
        tick = next(ticks)
        if tick == 0:
            raise RuntimeError("clock broke")  # an unexpected error in the first round
        return float(tick)

    def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 3:
            stop.set()

    def on_change(change: DigestChange) -> None:
        raise RuntimeError("handler broke")

    poller = DigestPoller(opts, interval=10.0, jitter=0.2, on_change=on_change, clock=clock, sleep=sleep)
    poller.watch([ref])
    poller.seed(ref, "sha256:" + "0" * 64)  # so a change fires and its handler fails
    poller.run(stop)
    assert len(delays) == 3 and all(8.0 <= d <= 12.0 for d in delays)
    assert poller.digest(ref) == skopeo_digest(registry.host, f"{repo}:v1")


def test_watch_and_seed_from_other_threads_while_running(
    tmp_path: Path, registry: Registry, fresh_repo: RepoNamer, opts: RegistryOptions
) -> None:
    repo = fresh_repo()
    push_unique(tmp_path, registry, f"{repo}:v1")
    refs = [f"{registry.host}/{repo}:v1", f"{registry.host}/{repo}:missing"]
    poller, _ = make_poller(opts, interval=0.01, jitter=0.5)
    stop = threading.Event()
    runner = threading.Thread(target=poller.run, args=(stop,))
    runner.start()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            for i in range(300):
                poller.watch(refs[: 1 + i % 2])
                poller.seed(refs[i % 2], "sha256:" + f"{i:064x}")
                poller.digest(refs[0])
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    churners = [threading.Thread(target=churn) for _ in range(3)]
    for t in churners:
        t.start()
    for t in churners:
        t.join(timeout=60)
    poller.watch(refs[:1])
    time.sleep(0.2)
    stop.set()
    runner.join(timeout=30)
    assert not runner.is_alive() and errors == []
    poller.poll_once()  # whatever the churn seeded last, the poller still tracks the real tag
    assert poller.digest(refs[0]) == skopeo_digest(registry.host, f"{repo}:v1")
