"""Triggers on the real control plane: the security-fix loop (base push -> builder -> app -> Deployment),
a controller killed mid-cascade, 50 BuildConfigs on one base under a limit of 4, webhooks, ConfigChange,
a Dockerfile in git whose base only its build can tell.

The controller is the suite's `kiln controller` (tests/cluster/e2e_support.py) with its trigger
endpoint on 127.0.0.1; a second docker-registry sends it real push notifications. The fleet test
uses the cluster's own registry, which sends none, so it runs on polling alone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiln.cluster.kube import Kube
from kiln.cluster.models import BaseImage, Build, BuildPhase
from tests.cluster import e2e_support as e2e
from tests.cluster.trigger_support import (
    IMAGE_AND_CONFIG,
    buildconfig,
    deployment,
    deployment_image,
    manifest_digest,
    push_base,
)
from tests.fixtures.gitrepo import bare_repo, git_daemon
from tests.fixtures.registry import Registry, notifications_to

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]
DONE = {BuildPhase.COMPLETE, BuildPhase.FAILED, BuildPhase.ERROR, BuildPhase.CANCELLED}


@pytest.fixture(scope="module")
def notifying(ctl: e2e.ControllerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry that tells the controller about every push, as a real deployment's would."""
    overrides = notifications_to(f"{ctl.trigger_url}/notifications", ctl.notification_token)
    with Registry.plain(tmp_path_factory.mktemp("notifying-registry"), config_overrides=overrides) as reg:
        yield reg


def builds(k: Kube, ns: str, config: str) -> list[Build]:
    return sorted(k.list_builds(ns, config), key=lambda b: b.number)


def watching(k: Kube, ns: str, config: str, refs: set[str]) -> bool:
    bc = k.get_config(ns, config)
    return bc is not None and all(bc.status.last_image_id(r) for r in refs)


def set_up_chain(k: Kube, cluster: Any, ctl: e2e.ControllerProcess, ns: str, reg: str, prefix: str, tmp: Path) -> dict[str, str]:
    """base -> builder (RUN on the base) -> app (uses both: COPY from the builder onto the base) -> Deployment."""
    refs = {"base": f"{reg}/{prefix}/base:1", "builder": f"{reg}/{prefix}/builder:latest", "app": f"{reg}/{prefix}/app:latest"}
    push_base(tmp, reg, f"{prefix}/base:1")
    e2e.create(k, ns, buildconfig("builder", f"FROM {refs['base']}\nRUN echo built-on-$(cat /etc/security-fix 2>/dev/null || echo orig) > /built\n",
                                  refs["builder"], IMAGE_AND_CONFIG))  # fmt: skip
    b1 = e2e.wait_phase(k, ns, "builder-1", DONE, ctl)
    assert b1.status.phase is BuildPhase.COMPLETE, (b1.status.message, b1.status.log_snippet, cluster.log_tail())
    e2e.create(k, ns, buildconfig("app", f"FROM {refs['builder']} AS b\nFROM {refs['base']}\nCOPY --from=b /built /app-built\n", refs["app"], IMAGE_AND_CONFIG))
    app1 = e2e.wait_phase(k, ns, "app-1", DONE, ctl)
    assert app1.status.phase is BuildPhase.COMPLETE, app1.status
    e2e.create(k, ns, deployment("web", "placeholder:1", refs["app"]))
    # a workload that starts to follow an image gets its newest build at once (as OpenShift does)
    first = f"{reg}/{prefix}/app@{app1.status.image_digest}"
    e2e.wait_until("the new Deployment set to the app's newest build", lambda: deployment_image(cluster, ns, "web") == first, 60, ctl.log_tail)
    e2e.wait_until("the first app build redeployed or the watches recorded",
                   lambda: watching(k, ns, "app", {refs["base"], refs["builder"]}) and watching(k, ns, "builder", {refs["base"]}), 120, ctl.log_tail)  # fmt: skip
    return refs


def test_base_push_rebuilds_builder_then_app_then_redeploys(cluster: Any, ctl: e2e.ControllerProcess, k: Kube, namespace: str, notifying: Registry,
                                                            tmp_path: Path) -> None:  # fmt: skip
    reg = notifying.host
    refs = set_up_chain(k, cluster, ctl, namespace, reg, "loop", tmp_path)
    old_app = manifest_digest(reg, "loop/app:latest")

    pushed_at = time.monotonic()
    new_base = push_base(tmp_path, reg, "loop/base:1", fix="CVE-2026-0001")
    app2 = e2e.wait_phase(k, namespace, "app-2", DONE, ctl)
    assert app2.status.phase is BuildPhase.COMPLETE, app2.status
    new_app = manifest_digest(reg, "loop/app:latest")
    assert new_app == app2.status.image_digest and new_app != old_app
    pinned = f"{reg}/loop/app@{new_app}"
    e2e.wait_until("the Deployment pinned to the new app digest", lambda: deployment_image(cluster, namespace, "web") == pinned, 60, ctl.log_tail)
    elapsed = time.monotonic() - pushed_at
    print(f"\n[e2e] base push -> builder -> app -> Deployment patched: {elapsed:.1f}s")

    # in order, once: the builder's second build finished before the app's second build was created
    builder = builds(k, namespace, "builder")
    app = builds(k, namespace, "app")
    assert [b.name for b in builder] == ["builder-1", "builder-2"] and [b.name for b in app] == ["app-1", "app-2"]
    assert builder[1].status.completion_timestamp is not None
    assert builder[1].status.completion_timestamp <= str(app[1].metadata["creationTimestamp"])
    # triggeredBy names the old and the new digests
    [base_cause] = [c.image_change_build for c in builder[1].spec.triggered_by if c.image_change_build]
    assert base_cause.from_.name == refs["base"] and base_cause.image_id == new_base and base_cause.old_image_id not in (None, new_base)
    app_causes = {c.image_change_build.from_.name: c.image_change_build for c in app[1].spec.triggered_by if c.image_change_build}
    assert set(app_causes) == {refs["base"], refs["builder"]}
    assert app_causes[refs["builder"]].image_id == builder[1].status.image_digest
    # kube-controller-manager rolled the Deployment: a ReplicaSet with the pinned image exists
    def new_replicaset() -> bool:
        rs = cluster.api().get(f"/apis/apps/v1/namespaces/{namespace}/replicasets")["items"]
        return any(r["spec"]["template"]["spec"]["containers"][0]["image"] == pinned for r in rs)

    e2e.wait_until("a ReplicaSet with the new image", new_replicaset, 60)
    Path(tmp_path.parent / "trigger-loop-seconds").write_text(f"{elapsed:.2f}\n")


def test_controller_killed_mid_cascade_finishes_it_once(cluster: Any, ctl: e2e.ControllerProcess, k: Kube, namespace: str, notifying: Registry,
                                                        tmp_path: Path) -> None:  # fmt: skip
    reg = notifying.host
    set_up_chain(k, cluster, ctl, namespace, reg, "restart", tmp_path)
    push_base(tmp_path, reg, "restart/base:1", fix="CVE-2026-0002")
    e2e.wait_until("the builder's triggered build", lambda: len(builds(k, namespace, "builder")) == 2, 60, ctl.log_tail)
    ctl.kill()  # mid-cascade: the builder builds, the app waits for it
    time.sleep(3)
    ctl.start()
    app2 = e2e.wait_phase(k, namespace, "app-2", DONE, ctl)
    assert app2.status.phase is BuildPhase.COMPLETE, app2.status
    e2e.wait_until("the Deployment pinned", lambda: "@sha256:" in deployment_image(cluster, namespace, "web"), 60, ctl.log_tail)
    assert deployment_image(cluster, namespace, "web").endswith(str(app2.status.image_digest))
    time.sleep(2 * e2e.POLL_INTERVAL + 2)  # a few poll rounds: nothing may fire twice
    assert [b.name for b in builds(k, namespace, "builder")] == ["builder-1", "builder-2"]
    assert [b.name for b in builds(k, namespace, "app")] == ["app-1", "app-2"]


def test_fifty_buildconfigs_on_one_base_build_four_at_a_time(cluster: Any, ctl: e2e.ControllerProcess, k: Kube, namespace: str, tmp_path: Path) -> None:
    reg = cluster.registry  # no notifications: polling finds the new digest
    base = f"{reg}/fleet-{namespace}/base:1"
    push_base(tmp_path, reg, f"fleet-{namespace}/base:1")
    names = [f"app{i:02d}" for i in range(50)]
    for name in names:
        e2e.create(k, namespace, buildconfig(name, f"FROM {base}\nLABEL app={name}\n", None, [{"type": "ImageChange"}], successfulBuildsHistoryLimit=2))
    e2e.wait_until("all 50 watching the base", lambda: all(watching(k, namespace, n, {base}) for n in names), 120, ctl.log_tail)
    assert k.list_builds(namespace) == []  # a first sight builds nothing

    push_base(tmp_path, reg, f"fleet-{namespace}/base:1", fix="CVE-2026-0003")
    most, saw_queue = 0, False
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        now = k.list_builds(namespace)
        active = [b for b in now if b.status.phase in (BuildPhase.PENDING, BuildPhase.RUNNING)]
        most = max(most, len(active))
        saw_queue = saw_queue or any(b.status.reason == "WaitingForTriggeredBuildSlot" for b in now)
        if len(now) == 50 and all(b.status.phase in DONE for b in now):
            break
        time.sleep(0.5)
    final = k.list_builds(namespace)
    assert sorted(b.config_name or "" for b in final) == names  # exactly one build per BuildConfig
    assert all(b.status.phase is BuildPhase.COMPLETE for b in final), [(b.name, b.status.phase, b.status.message) for b in final if b.status.phase is not BuildPhase.COMPLETE]
    assert most <= e2e.MAX_TRIGGERED_BUILDS
    assert most == e2e.MAX_TRIGGERED_BUILDS and saw_queue  # the limit was reached and builds queued behind it
    assert all(b.trigger == "ImageChange" for b in final)


def _github_push(secret: bytes, ref: str, commit: str) -> tuple[dict[str, str], bytes]:
    body = json.dumps({"ref": ref, "after": commit, "deleted": False, "head_commit": {"id": commit, "message": "fix"}}).encode()
    sig = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return {"X-GitHub-Event": "push", "X-Hub-Signature-256": sig, "Content-Type": "application/json"}, body


def test_webhooks_with_good_and_bad_signatures(cluster: Any, ctl: e2e.ControllerProcess, k: Kube, namespace: str, installed: e2e.Installed) -> None:
    secret = b"s3cret-for-hooks"
    cluster.api().create(f"/api/v1/namespaces/{namespace}/secrets",
                         {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook"}, "stringData": {"WebHookSecretKey": secret.decode()}})  # fmt: skip
    hook = {"secretReference": {"name": "hook"}, "branches": ["main", "release/*"]}
    e2e.create(k, namespace, buildconfig("hooked", f"FROM {installed.busybox}\nLABEL hooked=1\n", None,
                                         [{"type": "GitHub", "github": hook}, {"type": "GitLab", "gitlab": {"secretReference": {"name": "hook"}}}]))  # fmt: skip
    url = f"{ctl.trigger_url}/webhooks/{namespace}/hooked"
    commit = "a" * 40

    headers, body = _github_push(b"not-the-secret!!", "refs/heads/main", commit)
    bad = httpx.post(f"{url}/github", headers=headers, content=body)
    assert bad.status_code == 401 and "secret" not in bad.text.lower().replace("x-hub-signature", "")
    headers, body = _github_push(secret, "refs/heads/feature", commit)
    assert httpx.post(f"{url}/github", headers=headers, content=body).status_code == 200  # another branch: no build
    bad_gitlab = httpx.post(f"{url}/gitlab", headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": "wrong", "Content-Type": "application/json"},
                            content=json.dumps({"ref": "refs/heads/main", "checkout_sha": commit}).encode())  # fmt: skip
    assert bad_gitlab.status_code == 401
    assert httpx.post(f"{ctl.trigger_url}/webhooks/{namespace}/hooked/bitbucket", content=b"{}", headers={"Content-Type": "application/json"}).status_code == 404
    assert k.list_builds(namespace) == []

    headers, body = _github_push(secret, "refs/heads/release/1.2", commit)
    good = httpx.post(f"{url}/github", headers=headers, content=body)
    assert good.status_code == 201, good.text
    [build] = k.list_builds(namespace)
    assert build.name == good.json()["build"] and build.trigger == "GitHub"
    [cause] = build.spec.triggered_by
    assert cause.web_hook is not None and cause.web_hook.commit == commit and cause.web_hook.ref == "refs/heads/release/1.2"
    ok_gitlab = httpx.post(f"{url}/gitlab", headers={"X-Gitlab-Event": "Push Hook", "X-Gitlab-Token": secret.decode(), "Content-Type": "application/json"},
                           content=json.dumps({"ref": "refs/heads/main", "checkout_sha": commit}).encode())  # fmt: skip
    assert ok_gitlab.status_code == 201, ok_gitlab.text

    events = cluster.api().get(f"/api/v1/namespaces/{namespace}/events")["items"]
    rejected = [e for e in events if e["reason"] == "WebhookRejected" and e["involvedObject"]["name"] == "hooked"]
    assert len(rejected) >= 2 and all(e["type"] == "Warning" for e in rejected)
    assert not any(secret.decode() in e["message"] for e in events)


def test_config_change_builds_once_per_spec_change(cluster: Any, ctl: e2e.ControllerProcess, k: Kube, namespace: str, installed: e2e.Installed) -> None:
    e2e.create(k, namespace, buildconfig("cfg", f"FROM {installed.busybox}\nARG V=1\nLABEL v=$V\n", None, [{"type": "ConfigChange"}]))
    e2e.wait_until("the creation build", lambda: [b.name for b in builds(k, namespace, "cfg")] == ["cfg-1"], 60, ctl.log_tail)
    api = cluster.api()
    path = f"/apis/kiln.dev/v1alpha1/namespaces/{namespace}/buildconfigs/cfg"
    api.patch(path, {"metadata": {"labels": {"team": "a"}}})  # metadata only: no new generation, no build
    api.patch(path, {"spec": {"strategy": {"dockerStrategy": {"buildArgs": [{"name": "V", "value": "2"}]}}}})
    e2e.wait_until("the spec-change build", lambda: [b.name for b in builds(k, namespace, "cfg")] == ["cfg-1", "cfg-2"], 60, ctl.log_tail)
    time.sleep(2 * e2e.POLL_INTERVAL + 2)
    assert [b.name for b in builds(k, namespace, "cfg")] == ["cfg-1", "cfg-2"]
    bc = k.get_config(namespace, "cfg")
    assert bc is not None and bc.status.observed_generation == bc.metadata["generation"]


def test_rebuild_plan_lists_the_cascade_and_the_workloads(cluster: Any, k: Kube, namespace: str, installed: e2e.Installed) -> None:
    reg = "127.0.0.1:5999"  # nothing is pulled: the plan only reads BuildConfigs and workloads
    base, builder, app = f"{reg}/plan/base:1", f"{reg}/plan/builder:latest", f"{reg}/plan/app:latest"
    e2e.create(k, namespace, buildconfig("app", f"FROM {builder} AS b\nFROM {base}\n", app, [{"type": "ImageChange"}]))
    e2e.create(k, namespace, buildconfig("builder", f"FROM {base}\nRUN true\n", builder, [{"type": "ImageChange"}]))
    e2e.create(k, namespace, buildconfig("elsewhere", f"FROM {reg}/plan/other:1\n", None, [{"type": "ImageChange"}]))
    e2e.create(k, namespace, deployment("web", "placeholder:1", app))
    done = e2e.kiln_cli(installed, "rebuild-plan", base, "-n", namespace, "-o", "json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [(r["name"], r["after"]) for r in result["rebuild"]] == [("builder", []), ("app", [f"{namespace}/builder"])]
    assert [(d["kind"], d["name"], d["container"], d["image"]) for d in result["redeploy"]] == [("Deployment", "web", "app", app)]
    text = e2e.kiln_cli(installed, "rebuild-plan", base, "-n", namespace)
    assert text.returncode == 0 and f"redeploy  Deployment {namespace}/web container app" in text.stdout
    assert k.list_builds(namespace) == []  # a plan starts nothing


def test_a_base_change_under_a_final_stage_that_runs_nothing_is_a_rebase(cluster: Any, ctl: e2e.ControllerProcess, k: Kube, namespace: str,
                                                                         notifying: Registry, installed: e2e.Installed, tmp_path: Path) -> None:  # fmt: skip
    reg = notifying.host
    base = f"{reg}/rb/base:1"
    push_base(tmp_path, reg, "rb/base:1")
    dockerfile = f"FROM {installed.busybox} AS build\nRUN echo app > /app\nFROM {base}\nCOPY --link --from=build /app /app\nCMD [\"cat\", \"/app\"]\n"
    e2e.create(k, namespace, buildconfig("dist", dockerfile, f"{reg}/rb/dist:latest", IMAGE_AND_CONFIG))
    first = e2e.wait_phase(k, namespace, "dist-1", DONE, ctl)
    assert first.status.phase is BuildPhase.COMPLETE, first.status
    e2e.create(k, namespace, deployment("dist", "placeholder:1", f"{reg}/rb/dist:latest"))
    e2e.wait_until("the base watched", lambda: watching(k, namespace, "dist", {base}), 60, ctl.log_tail)

    new_base = push_base(tmp_path, reg, "rb/base:1", fix="CVE-2026-0004")
    second = e2e.wait_phase(k, namespace, "dist-2", DONE, ctl)
    assert second.status.phase is BuildPhase.COMPLETE, second.status
    log = e2e.kiln_cli(installed, "logs", "dist-2", "-n", namespace).stdout
    assert [s.name for s in second.status.stages] == ["Rebase"], (second.spec.rebase, log[-3000:])  # no FetchInputs, no Build: the layers were swapped
    assert second.spec.rebase is not None and second.spec.rebase.image == f"{reg}/rb/dist@{first.status.image_digest}"
    manifest = httpx.get(f"http://{reg}/v2/rb/dist/manifests/latest", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    assert manifest["annotations"]["org.opencontainers.image.base.digest"] == new_base
    base_layers = httpx.get(f"http://{reg}/v2/rb/base/manifests/1", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()["layers"]
    old_manifest = httpx.get(f"http://{reg}/v2/rb/dist/manifests/{first.status.image_digest}", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).json()
    assert manifest["layers"][: len(base_layers)] == base_layers and manifest["layers"][-1] == old_manifest["layers"][-1]
    pinned = f"{reg}/rb/dist@{second.status.image_digest}"
    e2e.wait_until("the Deployment pinned to the rebased image", lambda: deployment_image(cluster, namespace, "dist") == pinned, 60, ctl.log_tail)


def test_a_dockerfile_in_git_is_rebuilt_when_the_base_its_build_used_changes(cluster: Any, ctl: e2e.ControllerProcess, k: Kube, namespace: str,
                                                                            notifying: Registry, installed: e2e.Installed, tmp_path: Path) -> None:  # fmt: skip
    reg = notifying.host
    base = f"{reg}/gitbase/base:1"
    first_base = push_base(tmp_path, reg, "gitbase/base:1")
    bare_repo(tmp_path / "work", tmp_path / "git" / "app.git", {"Dockerfile": f"FROM {base}\nLABEL app=fromgit\n"})
    with git_daemon(tmp_path / "git") as url:
        # no from anywhere in the spec: the controller cannot know the base before a build
        bc = buildconfig("fromgit", "", f"{reg}/gitbase/app:latest", [{"type": "ImageChange"}], source={"git": {"uri": f"{url}/app.git"}})
        e2e.create(k, namespace, bc)
        started = e2e.kiln_cli(installed, "start-build", "fromgit", "-n", namespace)
        assert started.returncode == 0, started.stderr
        first = e2e.wait_phase(k, namespace, "fromgit-1", DONE, ctl)
        assert first.status.phase is BuildPhase.COMPLETE, (first.status.message, first.status.log_snippet)
        assert first.status.base_images == [BaseImage(name=base, digest=first_base)]
        e2e.wait_until("the base the build used recorded", lambda: watching(k, namespace, "fromgit", {base}), 60, ctl.log_tail)
        recorded = k.get_config(namespace, "fromgit")
        assert recorded is not None and [(t.from_.name, t.last_triggered_image_id) for t in recorded.status.image_change_triggers] == [(base, first_base)]

        new_base = push_base(tmp_path, reg, "gitbase/base:1", fix="CVE-2026-0005")
        second = e2e.wait_phase(k, namespace, "fromgit-2", DONE, ctl)
        assert second.status.phase is BuildPhase.COMPLETE, (second.status.message, second.status.log_snippet)
        [cause] = [c.image_change_build for c in second.spec.triggered_by if c.image_change_build]
        assert (cause.from_.name, cause.old_image_id, cause.image_id) == (base, first_base, new_base)
        assert second.status.base_images == [BaseImage(name=base, digest=new_base)]
        time.sleep(2 * e2e.POLL_INTERVAL + 2)  # the poller agrees with what the build recorded: nothing more to build
        assert [b.name for b in builds(k, namespace, "fromgit")] == ["fromgit-1", "fromgit-2"]
        after = k.get_config(namespace, "fromgit")
        assert after is not None and after.status.last_image_id(base) == new_base


def test_a_workload_follows_a_tag_that_nothing_in_kiln_builds(cluster: Any, ctl: e2e.ControllerProcess, k: Kube, namespace: str,
                                                               notifying: Registry, tmp_path: Path) -> None:  # fmt: skip
    """Set at once from the registry (a HEAD), then moved by a push from outside kiln (a notification),
    and by one on the cluster registry, which sends none (the poller)."""
    reg = notifying.host
    tag = f"{reg}/outside/app:stable"
    first = push_base(tmp_path, reg, "outside/app:stable")
    e2e.create(k, namespace, deployment("ext", "placeholder:1", tag))
    e2e.wait_until("the new Deployment set to what the tag points at", lambda: deployment_image(cluster, namespace, "ext") == f"{reg}/outside/app@{first}",
                   60, ctl.log_tail)  # fmt: skip
    second = push_base(tmp_path, reg, "outside/app:stable", fix="outside-1")
    assert second != first
    e2e.wait_until("the Deployment moved with the tag", lambda: deployment_image(cluster, namespace, "ext") == f"{reg}/outside/app@{second}",
                   60, ctl.log_tail)  # fmt: skip
    quiet = cluster.registry  # sends no notifications: only the poller can see this one move
    polled = f"{quiet}/outside/{namespace}:1"
    before = push_base(tmp_path, quiet, f"outside/{namespace}:1")
    e2e.create(k, namespace, deployment("polled", "placeholder:1", polled))
    e2e.wait_until("set from the quiet registry", lambda: deployment_image(cluster, namespace, "polled") == f"{quiet}/outside/{namespace}@{before}", 60, ctl.log_tail)
    after = push_base(tmp_path, quiet, f"outside/{namespace}:1", fix="outside-2")
    e2e.wait_until("moved by a poll", lambda: deployment_image(cluster, namespace, "polled") == f"{quiet}/outside/{namespace}@{after}", 60, ctl.log_tail)
    assert deployment_image(cluster, namespace, "ext") == f"{reg}/outside/app@{second}"  # the other workload left alone


def test_install_creates_the_notification_token_once(k: Kube, namespace: str) -> None:
    from kiln.cluster.install import notification_secret
    from kiln.cluster.manifests import InstallOptions

    opts = InstallOptions(namespace=namespace)
    assert notification_secret(k, opts, dry_run=True) is not None
    assert k.get_secret_data(namespace, "kiln-notifications") is None  # a dry run writes nothing
    assert notification_secret(k, opts) is not None
    token = (k.get_secret_data(namespace, "kiln-notifications") or {})["token"]
    assert len(token) >= 32
    assert notification_secret(k, opts) is None  # an install never rotates it
    assert (k.get_secret_data(namespace, "kiln-notifications") or {})["token"] == token
