"""rebuild-plan (pure): the cascade from one image through chains, upstream first, each BuildConfig once."""

from __future__ import annotations

from kiln.cluster.redeploy import WorkloadUse
from kiln.cluster.triggers.rebuildplan import plan, redeploys
from tests.cluster.test_imagechange import APP, BASE, BUILDER, REG, config


def test_cascade_order_and_waits() -> None:
    app = config("app", f"FROM {BUILDER} AS b\nFROM {BASE}\n", output=APP)
    builder = config("builder", f"FROM {BASE}\nRUN x\n", output=BUILDER)
    other = config("other", f"FROM {REG}/lib/unrelated:1\n")
    paused = config("paused", f"FROM {BASE}\n", trigger={"paused": True})
    result = plan(BASE, [app, other, builder, paused])
    assert [(r.name, r.after) for r in result.rebuilds] == [("builder", ()), ("app", ("ns/builder",))]
    assert set(result.images) == {BASE, BUILDER, APP} and result.images[0] == BASE
    web = WorkloadUse("Deployment", "ns", "web", "app", False)
    assert redeploys(result, {APP: [web]}) == [(APP, web)]


def test_an_image_nothing_watches_plans_nothing_and_cycles_end() -> None:
    assert plan("busybox", [config("a", f"FROM {BASE}\n")]).rebuilds == ()
    a = config("a", f"FROM {APP}\n", output=BUILDER)
    b = config("b", f"FROM {BUILDER}\n", output=APP)
    assert [r.name for r in plan(APP, [a, b]).rebuilds] == ["a", "b"]
