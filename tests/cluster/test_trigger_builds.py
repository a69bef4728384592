"""What a trigger puts into a Build (pure): its annotation, causes, the pushed commit, the branch filter default."""

from __future__ import annotations

from kiln.cluster.instantiate import Trigger, new_build
from kiln.cluster.models import ANNOTATION_TRIGGER, BuildConfig, BuildTriggerCause, WebHookTrigger
from kiln.cluster.triggers.hooks import _branch_filter


def git_config(ref: str | None) -> BuildConfig:
    return BuildConfig.model_validate({
        "metadata": {"name": "app", "namespace": "ns", "uid": "u"},
        "spec": {"source": {"git": {"uri": "https://git.example/app.git", **({"ref": ref} if ref else {})}}, "strategy": {"type": "Docker"}},
    })  # fmt: skip


def test_a_webhook_build_checks_out_the_pushed_commit_and_says_why() -> None:
    commit = "c" * 40
    trigger = Trigger("GitHub", [BuildTriggerCause(message="GitHub webhook")], git_ref=commit)
    obj = new_build(git_config("main"), 7, trigger=trigger)
    assert obj["metadata"]["name"] == "app-7" and obj["metadata"]["annotations"][ANNOTATION_TRIGGER] == "GitHub"
    assert obj["spec"]["source"]["git"]["ref"] == commit
    assert obj["spec"]["triggeredBy"] == [{"message": "GitHub webhook"}]
    manual = new_build(git_config("main"), 8)
    assert ANNOTATION_TRIGGER not in manual["metadata"]["annotations"] and manual["spec"]["source"]["git"]["ref"] == "main"


def test_the_branch_filter_defaults_to_the_branch_the_buildconfig_builds() -> None:
    assert _branch_filter(git_config("main"), WebHookTrigger()) == ["main"]
    assert _branch_filter(git_config("refs/heads/release/2"), WebHookTrigger()) == ["release/2"]
    assert _branch_filter(git_config(None), WebHookTrigger()) == []  # the remote HEAD: any branch
    assert _branch_filter(git_config("a" * 40), WebHookTrigger()) == []  # a pinned commit
    assert _branch_filter(git_config("main"), WebHookTrigger(branches=["dev*"])) == ["dev*"]
