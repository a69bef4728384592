"""Reading a Pod: API objects it refers to, env vars, the Kubernetes command/args rules, users.

Pure logic plus a ``Lookup`` for Secrets and ConfigMaps, so it is testable without an API server.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]
# (kind "secrets"|"configmaps", namespace, name) -> the object, or None if it does not exist
Lookup = Callable[[str, str, str], Obj | None]


class ConfigError(Exception):
    """The container cannot be configured yet (kubelet: CreateContainerConfigError); retried."""


def decoded_data(kind: str, obj: Obj) -> dict[str, bytes]:
    """A Secret's or ConfigMap's keys and their bytes."""
    out: dict[str, bytes] = {}
    if kind == "secrets":
        for k, v in (obj.get("data") or {}).items():
            out[k] = base64.b64decode(v)
        for k, v in (obj.get("stringData") or {}).items():
            out[k] = str(v).encode()
    else:
        for k, v in (obj.get("data") or {}).items():
            out[k] = str(v).encode()
        for k, v in (obj.get("binaryData") or {}).items():
            out[k] = base64.b64decode(v)
    return out


_FIELD_INDEX = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: Obj, path: str, host_ip: str) -> str:
    """The downward API: fieldRef paths a kubelet resolves."""
    meta = pod.get("metadata", {})
    spec = pod.get("spec", {})
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", "") or "default",
        "status.hostIP": host_ip,
        "status.hostIPs": host_ip,
        "status.podIP": host_ip,
        "status.podIPs": host_ip,
    }
    if path in simple:
        return str(simple[path])
    m = _FIELD_INDEX.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    raise ConfigError(f"unsupported fieldRef {path!r}")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ escapes, unknown refs stay."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("$(", i):
            end = text.find(")", i + 2)
            name = text[i + 2 : end] if end >= 0 else ""
            if end >= 0 and name in env:
                out.append(env[name])
                i = end + 1
            else:
                out.append(text[i : end + 1] if end >= 0 else text[i:])
                i = end + 1 if end >= 0 else len(text)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _key_ref(lookup: Lookup, kind: str, ns: str, ref: Obj, what: str) -> str | None:
    obj = lookup(kind, ns, ref["name"])
    optional = bool(ref.get("optional"))
    singular = "secret" if kind == "secrets" else "configmap"
    if obj is None:
        if optional:
            return None
        raise ConfigError(f'{singular} "{ref["name"]}" not found ({what})')
    data = decoded_data(kind, obj)
    if ref["key"] not in data:
        if optional:
            return None
        raise ConfigError(f"couldn't find key {ref['key']} in {singular} {ns}/{ref['name']} ({what})")
    return data[ref["key"]].decode(errors="replace")


def container_env(pod: Obj, container: Obj, lookup: Lookup, *, host_ip: str, base: dict[str, str]) -> dict[str, str]:
    """The environment a kubelet gives ``container`` (``base``: service variables), in order."""
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
            if key not in source:
                continue
            ref = source[key]
            obj = lookup(kind, ns, ref["name"])
            if obj is None:
                if ref.get("optional"):
                    continue
                raise ConfigError(f'{"secret" if kind == "secrets" else "configmap"} "{ref["name"]}" not found (envFrom)')
            for k, v in decoded_data(kind, obj).items():
                env[prefix + k] = v.decode(errors="replace")
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        src = var["valueFrom"]
        value: str | None
        if "fieldRef" in src:
            value = field_value(pod, src["fieldRef"]["fieldPath"], host_ip)
        elif "secretKeyRef" in src:
            value = _key_ref(lookup, "secrets", ns, src["secretKeyRef"], f"env {name}")
        elif "configMapKeyRef" in src:
            value = _key_ref(lookup, "configmaps", ns, src["configMapKeyRef"], f"env {name}")
        elif "resourceFieldRef" in src:
            value = resource_value(container, src["resourceFieldRef"])
        else:
            raise ConfigError(f"env {name}: unsupported valueFrom {sorted(src)}")
        if value is not None:
            env[name] = value
    return env


def resource_value(container: Obj, ref: Obj) -> str:
    """limits/requests as the downward API gives them (cpu rounded up to cores, memory in bytes)."""
    kind, _, res = ref["resource"].partition(".")
    quantity = ((container.get("resources") or {}).get(kind) or {}).get(res)
    if quantity is None:
        return "0"
    return str(quantity)


def command_and_args(container: Obj, env: dict[str, str]) -> tuple[list[str] | None, list[str]]:
    """(entrypoint override or None, command) following Kubernetes: ``command`` replaces the image's
    Entrypoint (and drops its Cmd), ``args`` replace its Cmd; $(VAR) expanded in both."""
    command = container.get("command")
    args = [expand(a, env) for a in container.get("args") or []]
    if command:
        return [expand(c, env) for c in command], args
    return None, args


def run_as(pod: Obj, container: Obj) -> tuple[int | None, int | None, bool]:
    """(runAsUser, runAsGroup, runAsNonRoot), container securityContext over the pod's."""
    pod_sc = pod.get("spec", {}).get("securityContext") or {}
    sc = container.get("securityContext") or {}

    def pick(key: str) -> Any:
        return sc[key] if sc.get(key) is not None else pod_sc.get(key)

    user, group = pick("runAsUser"), pick("runAsGroup")
    return (None if user is None else int(user), None if group is None else int(group), bool(pick("runAsNonRoot")))


def user_spec(image_user: str, uid: int | None, gid: int | None) -> str:
    """The ``USER`` string for kiln's run_container from the image's user and the overrides."""
    image_name = (image_user or "0").partition(":")[0]
    name = str(uid) if uid is not None else image_name
    if gid is not None:
        return f"{name}:{gid}"
    if uid is not None:
        return name
    return image_user or "0"


def non_root_violation(image_user: str, uid: int | None) -> str | None:
    """Why runAsNonRoot cannot be honoured, as the kubelet words it, or None."""
    if uid is not None:
        return "container's runAsUser breaks non-root policy" if uid == 0 else None
    name = (image_user or "").partition(":")[0]
    if name in ("", "root", "0"):
        return "container has runAsNonRoot and image will run as root"
    if not name.isdigit():
        return f"container has runAsNonRoot and image has non-numeric user ({name}), cannot verify user is non-root"
    return None
