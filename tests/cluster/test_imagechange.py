"""ImageChange decisions (pure): first sight, changes, chains that cascade once and in order, cycles, paused triggers."""

from __future__ import annotations

from typing import Any

from kiln.cluster.models import BaseImage, BuildConfig
from kiln.cluster.triggers.imagechange import (
    Change,
    causes,
    decide,
    dockerfile_bases,
    status_after,
    status_with_bases,
    watched_images,
)

REG = "127.0.0.1:5000"
BASE, BUILDER, APP = f"{REG}/lib/base:1", f"{REG}/lib/builder:latest", f"{REG}/team/app:latest"
D1, D2, D3 = "sha256:" + "1" * 64, "sha256:" + "2" * 64, "sha256:" + "3" * 64


def config(name: str, dockerfile: str, output: str | None = None, seen: dict[str, str] | None = None, trigger: dict[str, Any] | None = None) -> BuildConfig:
    return BuildConfig.model_validate({
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {
            "source": {"dockerfile": dockerfile},
            "strategy": {"type": "Docker"},
            "output": {"to": {"name": output}} if output else {},
            "triggers": [{"type": "ImageChange", **({"imageChange": trigger} if trigger else {})}],
        },
        "status": {"imageChangeTriggers": [{"from": {"name": r}, "lastTriggeredImageID": d} for r, d in (seen or {}).items()]},
    })  # fmt: skip


def test_watched_images_are_the_inline_dockerfiles_bases_normalized_without_stages_and_scratch() -> None:
    df = f"ARG V=1\nFROM {REG}/lib/base:$V AS build\nRUN make\nFROM scratch AS empty\nFROM build\nFROM busybox\nCOPY --from=build /a /a\n"
    assert dockerfile_bases(df) == [BASE, "docker.io/library/busybox:latest"]
    assert watched_images(config("a", df)) == [BASE, "docker.io/library/busybox:latest"]
    assert watched_images(config("a", df, trigger={"from": {"name": "alpine"}})) == ["docker.io/library/alpine:latest"]
    assert watched_images(config("a", df, trigger={"paused": True})) == []


def test_first_sight_is_recorded_without_a_build_and_a_change_builds() -> None:
    app = config("app", f"FROM {BASE}\n")
    [d] = decide([app], {BASE: D1})
    assert not d.build and d.first_seen == (Change(BASE, None, D1),)
    seen = config("app", f"FROM {BASE}\n", seen={BASE: D1})
    assert decide([seen], {BASE: D1}) == []  # nothing new
    [d] = decide([seen], {BASE: D2})
    assert d.build and d.changes == (Change(BASE, D1, D2),)
    assert decide([seen], {}) == []  # an image not seen yet decides nothing


def test_a_chain_cascades_once_in_order() -> None:
    builder = config("builder", f"FROM {BASE}\nRUN x\n", output=BUILDER, seen={BASE: D1})
    app = config("app", f"FROM {BUILDER} AS b\nFROM {BASE}\nCOPY --from=b /x /x\n", output=APP, seen={BASE: D1, BUILDER: D1})
    # the base moves: the builder builds; the app (which also uses the base) waits for it
    by = {d.key[1]: d for d in decide([builder, app], {BASE: D2, BUILDER: D1})}
    assert by["builder"].build
    assert not by["app"].build and by["app"].waiting_for == (("ns", "builder"),)
    # the builder's build runs (its change is recorded): the app still waits
    builder_running = config("builder", f"FROM {BASE}\nRUN x\n", output=BUILDER, seen={BASE: D2})
    by = {d.key[1]: d for d in decide([builder_running, app], {BASE: D2, BUILDER: D1}, busy=[("ns", "builder")])}
    assert "builder" not in by and not by["app"].build
    # the builder pushed: the app builds once, for both changes
    by = {d.key[1]: d for d in decide([builder_running, app], {BASE: D2, BUILDER: D3})}
    assert by["app"].build and set(by["app"].changes) == {Change(BASE, D1, D2), Change(BUILDER, D1, D3)}


def test_a_failed_upstream_build_does_not_hold_the_chain_forever() -> None:
    builder = config("builder", f"FROM {BASE}\n", output=BUILDER, seen={BASE: D2})  # built (and failed): not busy
    app = config("app", f"FROM {BUILDER}\nFROM {BASE}\n", seen={BASE: D1, BUILDER: D1})
    [d] = decide([builder, app], {BASE: D2, BUILDER: D1})
    assert d.build and d.changes == (Change(BASE, D1, D2),)


def test_a_cycle_does_not_deadlock() -> None:
    a = config("a", f"FROM {APP}\n", output=BUILDER, seen={APP: D1})
    b = config("b", f"FROM {BUILDER}\n", output=APP, seen={BUILDER: D1})
    decisions = decide([a, b], {APP: D2, BUILDER: D1})
    assert [d.key[1] for d in decisions if d.build] == ["a"]


def test_status_after_keeps_other_images_and_causes_name_both_digests() -> None:
    app = config("app", f"FROM {BASE}\n", seen={BASE: D1, BUILDER: D1})
    status = status_after(app, [Change(BASE, D1, D2)], "2026-11-27T00:00:00Z")
    assert {s["from"]["name"]: s["lastTriggeredImageID"] for s in status} == {BASE: D2, BUILDER: D1}  # type: ignore[index]
    [cause] = causes([Change(BASE, D1, D2)])
    dumped = cause.to_json_dict()
    assert dumped["imageChangeBuild"] == {"from": {"kind": "DockerImage", "name": BASE}, "oldImageID": D1, "imageID": D2}


def test_a_rebase_is_asked_only_when_the_one_change_is_the_final_stages_base() -> None:
    from kiln.cluster.triggers.imagechange import rebase_candidate

    dist = config("dist", f"FROM {BUILDER} AS b\nRUN make\nFROM {BASE}\nCOPY --link --from=b /x /x\n", output=APP)
    last = f"{REG}/team/app@{D1}"
    request, _ = rebase_candidate(dist, [Change(BASE, D1, D2)], last)
    assert request is not None and request.image == last and request.base == BASE
    assert rebase_candidate(dist, [Change(BUILDER, D1, D2)], last)[0] is None  # the build stage's base: rebuild
    assert rebase_candidate(dist, [Change(BASE, D1, D2), Change(BUILDER, D1, D2)], last)[0] is None
    assert rebase_candidate(dist, [Change(BASE, D1, D2)], None)[0] is None  # nothing built yet
    git = BuildConfig.model_validate({**dist.model_dump(by_alias=True), "spec": {**dist.spec.model_dump(by_alias=True), "source": {"git": {"uri": "https://x/y.git", "ref": "main"}}}})
    assert rebase_candidate(git, [Change(BASE, D1, D2)], last)[1] == "the source may have changed since the last build"


def test_after_a_restart_nothing_builds_until_every_image_it_built_with_is_known_again() -> None:
    builder = config("builder", f"FROM {BASE}\n", output=BUILDER, seen={BASE: D2})
    app = config("app", f"FROM {BUILDER} AS b\nFROM {BASE}\n", seen={BASE: D1, BUILDER: D1})
    # the builder's build completed (its digest is known); the base has not been polled yet
    by = {d.key[1]: d for d in decide([builder, app], {BUILDER: D3}, known=set())}
    assert not by["app"].build and by["app"].unknown == (BASE,)
    # the first poll round answers: one build, for both changes
    [d] = decide([builder, app], {BUILDER: D3, BASE: D2}, known={BASE, BUILDER})
    assert d.build and {c.ref for c in d.changes} == {BASE, BUILDER}


def git_config(seen: dict[str, str] | None = None, triggers: list[dict[str, Any]] | None = None, **strategy: Any) -> BuildConfig:
    """A Dockerfile in git: only a build can tell what it starts from."""
    return BuildConfig.model_validate({
        "metadata": {"name": "app", "namespace": "ns"},
        "spec": {
            "source": {"git": {"uri": "https://git.example/app.git"}},
            "strategy": {"type": "Docker", **({"dockerStrategy": strategy} if strategy else {})},
            "triggers": [{"type": "ImageChange"}] if triggers is None else triggers,
        },
        "status": {"imageChangeTriggers": [{"from": {"name": r}, "lastTriggeredImageID": d} for r, d in (seen or {}).items()]},
    })  # fmt: skip


def status_map(status: list[dict[str, Any]] | None) -> dict[str, str]:
    assert status is not None
    return {s["from"]["name"]: s["lastTriggeredImageID"] for s in status}


def test_a_dockerfile_in_git_watches_the_bases_its_last_build_recorded() -> None:
    assert watched_images(git_config()) == []  # nothing built yet: nothing known
    app = git_config(seen={BASE: D1, BUILDER: D1})
    assert watched_images(app) == [BASE, BUILDER]
    assert decide([app], {BASE: D1, BUILDER: D1}) == []
    [d] = decide([app], {BASE: D2, BUILDER: D1})
    assert d.build and d.changes == (Change(BASE, D1, D2),)
    assert watched_images(git_config(seen={BASE: D1}, triggers=[{"type": "ImageChange", "imageChange": {"paused": True}}])) == []
    # an image a trigger names is that trigger's, paused or not: the recorded bases leave it alone
    named = [{"type": "ImageChange"}, {"type": "ImageChange", "imageChange": {"from": {"name": BUILDER}, "paused": True}}]
    assert watched_images(git_config(seen={BASE: D1, BUILDER: D1}, triggers=named)) == [BASE]


def test_bases_known_from_the_spec_ignore_anything_else_in_the_status() -> None:
    inline = config("app", f"FROM {BASE}\n", seen={BASE: D1, BUILDER: D1})
    assert watched_images(inline) == [BASE]
    assert status_with_bases(inline, [BaseImage(name=BUILDER, digest=D2)], "2026-11-27T00:00:00Z") is None
    named = git_config(seen={BASE: D1, BUILDER: D1}, **{"from": {"name": BASE}})
    assert watched_images(named) == [BASE]  # the strategy's from
    assert status_with_bases(named, [BaseImage(name=BUILDER, digest=D2)], "2026-11-27T00:00:00Z") is None


def test_a_build_records_exactly_the_bases_it_started_from() -> None:
    now = "2026-11-27T00:00:00Z"
    first = status_with_bases(git_config(), [BaseImage(name=BASE, digest=D1), BaseImage(name=BUILDER, digest=D1)], now)
    assert first == [
        {"from": {"kind": "DockerImage", "name": BASE}, "lastTriggeredImageID": D1, "lastTriggerTime": now},
        {"from": {"kind": "DockerImage", "name": BUILDER}, "lastTriggeredImageID": D1, "lastTriggerTime": now},
    ]
    # the Dockerfile dropped the builder, and the build used a base pushed since the trigger fired
    app = git_config(seen={BASE: D1, BUILDER: D1})
    assert status_map(status_with_bases(app, [BaseImage(name=BASE, digest=D2)], now)) == {BASE: D2}
    assert status_with_bases(app, [BaseImage(name=BASE, digest=D1), BaseImage(name=BUILDER, digest=D1)], now) is None
    # an image a trigger names keeps its own state
    named = [{"type": "ImageChange"}, {"type": "ImageChange", "imageChange": {"from": {"name": APP}}}]
    app = git_config(seen={APP: D3, BASE: D1}, triggers=named)
    assert status_map(status_with_bases(app, [BaseImage(name=APP, digest=D1), BaseImage(name=BUILDER, digest=D2)], now)) == {APP: D3, BUILDER: D2}
    assert status_with_bases(git_config(triggers=[{"type": "ImageChange", "imageChange": {"paused": True}}]), [BaseImage(name=BASE, digest=D1)], now) is None
