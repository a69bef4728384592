"""What the reconciler reads off a pod, and the controller's settings from its environment."""

from __future__ import annotations

from kiln.cluster.controller import settings_from_env
from kiln.cluster.reconcile import pod_view


def test_pod_view_reads_the_build_container() -> None:
    pod = {
        "metadata": {"name": "app-1-build", "deletionTimestamp": "2025-01-01T00:00:09Z"},
        "status": {
            "phase": "Failed",
            "reason": "DeadlineExceeded",
            "startTime": "2025-01-01T00:00:00Z",
            "containerStatuses": [
                {"name": "sidecar", "state": {"terminated": {"exitCode": 9}}},
                {"name": "build", "state": {"terminated": {"exitCode": 137, "reason": "Error", "message": "{}", "finishedAt": "2025-01-01T00:00:08Z"}}},
            ],
        },
    }
    view = pod_view(pod)
    assert (view.phase, view.reason, view.exit_code, view.terminated_reason) == ("Failed", "DeadlineExceeded", 137, "Error")
    assert view.termination_message == "{}" and view.finished_at == "2025-01-01T00:00:08Z" and view.deleting
    fresh = pod_view({"metadata": {"name": "p"}})
    assert (fresh.phase, fresh.exit_code, fresh.deleting) == ("Pending", None, False)


def test_settings_from_env() -> None:
    s = settings_from_env({"KILN_BUILDER_IMAGE": "r/b:1", "KILN_POD_HOST_USERS": "true", "KILN_INSECURE_REGISTRIES": "a:5000,b",
                           "KILN_SECCOMP_PROFILE": "profiles/k.json", "KILN_CACHE_CLAIM": "cache"})  # fmt: skip
    assert (s.builder_image, s.host_users, s.insecure_registries, s.seccomp_localhost_profile, s.cache_claim) == ("r/b:1", True, ("a:5000", "b"), "profiles/k.json", "cache")
    d = settings_from_env({})
    assert (d.host_users, d.unmasked_proc, d.insecure_registries, d.cache_claim) == (False, True, (), None)
