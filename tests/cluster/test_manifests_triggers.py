"""The installed controller serves triggers, and the integrated registry notifies it with the shared token."""

from __future__ import annotations

import yaml

from kiln.cluster.manifests import NOTIFICATION_SECRET, TRIGGER_PORT, InstallOptions, controller, registry


def test_controller_listens_for_triggers_behind_a_service() -> None:
    deployment, service = controller(InstallOptions())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["KILN_WEBHOOK_LISTEN"]["value"] == f"0.0.0.0:{TRIGGER_PORT}"
    assert env["KILN_NOTIFICATION_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == NOTIFICATION_SECRET
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": TRIGGER_PORT}
    assert service["kind"] == "Service" and service["spec"]["ports"][0]["port"] == TRIGGER_PORT


def test_registry_notifies_the_controller_with_the_token() -> None:
    [container] = registry(InstallOptions())[0]["spec"]["template"]["spec"]["containers"]
    names = [e["name"] for e in container["env"]]
    # Kubernetes expands $(VAR) only from variables defined earlier in the list
    assert names.index("KILN_NOTIFICATION_TOKEN") < names.index("REGISTRY_NOTIFICATIONS_ENDPOINTS")
    [endpoint] = yaml.safe_load(next(e["value"] for e in container["env"] if e["name"] == "REGISTRY_NOTIFICATIONS_ENDPOINTS"))
    assert endpoint["url"] == f"http://kiln-controller.kiln-system.svc:{TRIGGER_PORT}/notifications"
    assert endpoint["headers"]["Authorization"] == ["Bearer $(KILN_NOTIFICATION_TOKEN)"]
