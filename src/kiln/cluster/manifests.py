"""Everything `kiln install` applies, as objects: namespace, CRDs, RBAC, the controller, the registry.

deploy/*.yaml are these objects written out by ``python -m kiln.cluster.crdgen`` (a unit test keeps
them equal), so `kubectl apply -f deploy/ -R` and `kiln install` install the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kiln.cluster.models import GROUP

NAMESPACE = "kiln-system"
CONTROLLER = "kiln-controller"
REGISTRY = "kiln-registry"
DEFAULT_BUILDER_IMAGE = f"{REGISTRY}.{NAMESPACE}.svc:5000/kiln/builder:latest"
REGISTRY_IMAGE = "docker.io/library/registry:2"
# The controller's trigger endpoint (webhooks, registry notifications) and the Secret whose key
# "token" authenticates the registry's notifications (`kiln install` creates it with a random one).
TRIGGER_PORT = 8080
NOTIFICATION_SECRET = "kiln-notifications"


@dataclass(frozen=True)
class InstallOptions:
    namespace: str = NAMESPACE
    builder_image: str = DEFAULT_BUILDER_IMAGE
    controller_image: str | None = None  # default: the builder image (it holds kiln)
    registry_image: str = REGISTRY_IMAGE
    host_users: bool = False
    with_registry: bool = True
    with_controller: bool = True

    @property
    def registry_host(self) -> str:
        return f"{REGISTRY}.{self.namespace}.svc:5000"


def namespace(opts: InstallOptions) -> dict[str, Any]:
    # the controller itself needs nothing beyond "restricted"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": opts.namespace, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}}


def rbac(opts: InstallOptions) -> list[dict[str, Any]]:
    rules = [
        {"apiGroups": [GROUP], "resources": ["builds", "buildconfigs"], "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
        {"apiGroups": [GROUP], "resources": ["builds/status", "buildconfigs/status"], "verbs": ["get", "update", "patch"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
        # the trigger loop: pin triggered containers to a new build's digest, and follow the rollout
        {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets"], "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["batch"], "resources": ["cronjobs"], "verbs": ["get", "list", "watch", "patch"]},
        # webhook triggers: the shared secret a BuildConfig's webhook names
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]},
        # kopf: discovering resources and watching namespaces
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get", "list", "watch"]},
    ]
    # who may start and cancel builds: aggregated into the built-in edit/admin roles
    user_rules = [
        {"apiGroups": [GROUP], "resources": ["builds", "buildconfigs"], "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
        {"apiGroups": [GROUP], "resources": ["builds/status", "buildconfigs/status"], "verbs": ["get", "patch"]},
    ]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": CONTROLLER, "namespace": opts.namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": CONTROLLER}, "rules": rules},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": CONTROLLER},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": CONTROLLER},
            "subjects": [{"kind": "ServiceAccount", "name": CONTROLLER, "namespace": opts.namespace}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {
                "name": "kiln-builds-edit",
                "labels": {"rbac.authorization.k8s.io/aggregate-to-edit": "true", "rbac.authorization.k8s.io/aggregate-to-admin": "true"},
            },
            "rules": user_rules,
        },
    ]


def _restricted_container() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}}


def _notification_token_env() -> dict[str, Any]:
    ref = {"name": NOTIFICATION_SECRET, "key": "token", "optional": True}
    return {"name": "KILN_NOTIFICATION_TOKEN", "valueFrom": {"secretKeyRef": ref}}


def controller(opts: InstallOptions) -> list[dict[str, Any]]:
    env = {
        "KILN_BUILDER_IMAGE": opts.builder_image,
        "KILN_POD_HOST_USERS": "true" if opts.host_users else "false",
        "KILN_INSECURE_REGISTRIES": opts.registry_host if opts.with_registry else "",
        "KILN_WEBHOOK_LISTEN": f"0.0.0.0:{TRIGGER_PORT}",
    }
    labels = {"app.kubernetes.io/name": CONTROLLER, "app.kubernetes.io/part-of": "kiln"}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": CONTROLLER, "namespace": opts.namespace, "labels": labels},
        "spec": {"selector": {"app.kubernetes.io/name": CONTROLLER}, "ports": [{"name": "triggers", "port": TRIGGER_PORT, "targetPort": TRIGGER_PORT}]},
    }
    return [_controller_deployment(opts, env, labels), service]


def _controller_deployment(opts: InstallOptions, env: dict[str, str], labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": CONTROLLER, "namespace": opts.namespace, "labels": labels},
        "spec": {
            "replicas": 1,  # one writer; restarts are safe (status-driven), two at once are not needed
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": CONTROLLER}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": CONTROLLER,
                    "containers": [
                        {
                            "name": "controller",
                            "image": opts.controller_image or opts.builder_image,
                            "command": ["kiln", "controller"],
                            "env": [*({"name": k, "value": v} for k, v in env.items()), _notification_token_env()],
                            "ports": [{"containerPort": TRIGGER_PORT, "name": "triggers"}],
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": TRIGGER_PORT}},
                            # /healthz fails while the watchdog sees work stuck (kiln.cluster.watchdog); the
                            # controller exits by itself then, this catches a process too wedged to do so
                            "livenessProbe": {"httpGet": {"path": "/healthz", "port": TRIGGER_PORT}, "periodSeconds": 20, "timeoutSeconds": 5, "failureThreshold": 3},
                            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
                            "securityContext": _restricted_container(),
                        }
                    ],
                },
            },
        },
    }


def _registry_endpoints(opts: InstallOptions) -> str:
    url = f"http://{CONTROLLER}.{opts.namespace}.svc:{TRIGGER_PORT}/notifications"
    return (
        f"- name: kiln\n  url: {url}\n  timeout: 2s\n  threshold: 5\n  backoff: 2s\n"
        "  headers:\n    Authorization: [\"Bearer $(KILN_NOTIFICATION_TOKEN)\"]\n"
        "  ignore:\n    mediatypes: [application/octet-stream]\n"
    )


def registry(opts: InstallOptions) -> list[dict[str, Any]]:
    """CNCF distribution as the integrated registry (plain HTTP inside the cluster, emptyDir storage)."""
    labels = {"app.kubernetes.io/name": REGISTRY, "app.kubernetes.io/part-of": "kiln"}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": REGISTRY, "namespace": opts.namespace, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app.kubernetes.io/name": REGISTRY}},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "containers": [
                            {
                                "name": "registry",
                                "image": opts.registry_image,
                                "ports": [{"containerPort": 5000, "name": "http"}],
                                "env": [
                                    {"name": "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "value": "/var/lib/registry"},
                                    {"name": "REGISTRY_STORAGE_DELETE_ENABLED", "value": "true"},
                                    # push notifications to the controller (distribution parses the value as YAML)
                                    _notification_token_env(),
                                    {"name": "REGISTRY_NOTIFICATIONS_ENDPOINTS", "value": _registry_endpoints(opts)},
                                ],
                                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/registry"}],
                                "readinessProbe": {"httpGet": {"path": "/v2/", "port": 5000}},
                                "securityContext": _restricted_container(),
                            }
                        ],
                        "volumes": [{"name": "data", "emptyDir": {}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": REGISTRY, "namespace": opts.namespace, "labels": labels},
            "spec": {"selector": {"app.kubernetes.io/name": REGISTRY}, "ports": [{"name": "http", "port": 5000, "targetPort": 5000}]},
        },
    ]


def all_objects(opts: InstallOptions) -> list[dict[str, Any]]:
    """In apply order: CRDs first, then what lives in the namespace."""
    from kiln.cluster.crdgen import crds

    objects = [namespace(opts), *crds().values(), *rbac(opts)]
    if opts.with_registry:
        objects += registry(opts)
    if opts.with_controller:
        objects += controller(opts)
    return objects


def deploy_files(opts: InstallOptions | None = None) -> dict[str, list[dict[str, Any]]]:
    """deploy/<file> -> its documents (the CRDs are written by crdgen separately)."""
    o = opts or InstallOptions()
    return {"namespace.yaml": [namespace(o)], "rbac.yaml": rbac(o), "controller.yaml": controller(o), "registry.yaml": registry(o)}
