"""Pod volumes as host directories, bind-mounted into each container's sandbox.

Secret, ConfigMap, projected and downwardAPI volumes are written as files (no ``..data`` symlink
swap: they are written once, before the containers start, and not updated afterwards).
emptyDir is a directory per pod, a PVC a directory per (namespace, claim) under the agent's state
that outlives pods, hostPath the host's path itself. Everything else is refused.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dev.node.podspec import ConfigError, Lookup, Obj, decoded_data, field_value

# (namespace, serviceaccount, audience, expirationSeconds) -> token
TokenSource = Callable[[str, str, str | None, int], str]


class VolumeError(Exception):
    """A volume cannot be set up (yet): a missing Secret/ConfigMap; retried like FailedMount."""


class UnsupportedVolume(Exception):
    """A volume type the agent does not implement; the pod fails."""


@dataclass(frozen=True)
class HostVolume:
    path: Path
    read_only: bool  # forced for secret/configMap/projected/downwardAPI, like the kubelet


def _safe_join(base: Path, rel: str) -> Path:
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise UnsupportedVolume(f"invalid item path {rel!r}")
    return base.joinpath(*parts)


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _key_files(kind: str, ns: str, src: Obj, lookup: Lookup, target: Path, default_mode: int) -> None:
    obj = lookup(kind, ns, src.get("name") or src.get("secretName", ""))
    singular = "secret" if kind == "secrets" else "configmap"
    name = src.get("name") or src.get("secretName")
    if obj is None:
        if src.get("optional"):
            return
        raise VolumeError(f'{singular} "{name}" not found')
    data = decoded_data(kind, obj)
    items = src.get("items")
    if items is None:
        for key, value in data.items():
            _write(_safe_join(target, key), value, default_mode)
        return
    for item in items:
        if item["key"] not in data:
            if src.get("optional"):
                continue
            raise VolumeError(f"configmap/secret {ns}/{name}: key {item['key']!r} not found")
        _write(_safe_join(target, item["path"]), data[item["key"]], int(item.get("mode", default_mode)))


def _downward(pod: Obj, items: list[Obj], target: Path, default_mode: int, host_ip: str) -> None:
    for item in items:
        if "fieldRef" not in item:
            raise UnsupportedVolume("downwardAPI resourceFieldRef is not supported by the node agent")
        value = field_value(pod, item["fieldRef"]["fieldPath"], host_ip)
        _write(_safe_join(target, item["path"]), value.encode(), int(item.get("mode", default_mode)))


def _projected(pod: Obj, vol: Obj, target: Path, lookup: Lookup, token: TokenSource, host_ip: str) -> None:
    ns = pod["metadata"]["namespace"]
    default_mode = int(vol.get("defaultMode", 0o644))
    for source in vol.get("sources") or []:
        if "secret" in source:
            _key_files("secrets", ns, source["secret"], lookup, target, default_mode)
        elif "configMap" in source:
            _key_files("configmaps", ns, source["configMap"], lookup, target, default_mode)
        elif "downwardAPI" in source:
            _downward(pod, source["downwardAPI"].get("items") or [], target, default_mode, host_ip)
        elif "serviceAccountToken" in source:
            sat = source["serviceAccountToken"]
            sa = pod["spec"].get("serviceAccountName") or "default"
            value = token(ns, sa, sat.get("audience"), int(sat.get("expirationSeconds", 3600)))
            _write(_safe_join(target, sat["path"]), value.encode(), default_mode)
        else:
            raise UnsupportedVolume(f"projected source {sorted(source)} is not supported by the node agent")


def prepare_volumes(pod: Obj, pod_dir: Path, state_dir: Path, lookup: Lookup, token: TokenSource,
                    host_ip: str) -> dict[str, HostVolume]:
    """Create every volume of ``pod``; returns name -> host directory."""
    ns = pod["metadata"]["namespace"]
    result: dict[str, HostVolume] = {}
    for vol in pod["spec"].get("volumes") or []:
        name = vol["name"]
        target = pod_dir / "volumes" / name
        if "emptyDir" in vol:
            target.mkdir(parents=True, exist_ok=True)
            os.chmod(target, 0o777)  # as the kubelet: any container user may write
            result[name] = HostVolume(target, False)
            continue
        if "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]["claimName"]
            path = state_dir / "pvcs" / ns / claim
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, 0o777)
            result[name] = HostVolume(path, bool(vol["persistentVolumeClaim"].get("readOnly")))
            continue
        if "hostPath" in vol:
            path = Path(vol["hostPath"]["path"])
            kind = vol["hostPath"].get("type", "")
            if kind in ("DirectoryOrCreate",):
                path.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                raise VolumeError(f"hostPath {path} does not exist")
            result[name] = HostVolume(path, False)
            continue
        fresh = pod_dir / "volumes" / f".{name}.new"
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        try:
            if "secret" in vol:
                src = vol["secret"]
                _key_files("secrets", ns, src, lookup, fresh, int(src.get("defaultMode", 0o644)))
            elif "configMap" in vol:
                src = vol["configMap"]
                _key_files("configmaps", ns, src, lookup, fresh, int(src.get("defaultMode", 0o644)))
            elif "projected" in vol:
                _projected(pod, vol["projected"], fresh, lookup, token, host_ip)
            elif "downwardAPI" in vol:
                src = vol["downwardAPI"]
                _downward(pod, src.get("items") or [], fresh, int(src.get("defaultMode", 0o644)), host_ip)
            else:
                kinds = sorted(k for k in vol if k != "name")
                raise UnsupportedVolume(f"volume {name!r}: type {', '.join(kinds)} is not supported by the node agent")
        except (ConfigError, KeyError) as exc:
            shutil.rmtree(fresh, ignore_errors=True)
            raise VolumeError(f"volume {name!r}: {exc}") from exc
        except BaseException:
            shutil.rmtree(fresh, ignore_errors=True)
            raise
        os.chmod(fresh, 0o755)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(fresh, target)
        result[name] = HostVolume(target, True)
    return result


def container_mounts(container: Obj, volumes: dict[str, HostVolume]) -> list[tuple[str, str, bool]]:
    """(host source, container path, read-only) for each volumeMount, subPath resolved."""
    mounts = []
    for vm in container.get("volumeMounts") or []:
        vol = volumes.get(vm["name"])
        if vol is None:
            raise UnsupportedVolume(f"volumeMount {vm['name']!r}: no such volume in the pod")
        source = vol.path
        sub = vm.get("subPath") or ""
        if sub:
            source = _safe_join(vol.path, sub)
            if not source.exists():
                source.mkdir(parents=True, exist_ok=True)
        mounts.append((str(source), vm["mountPath"], vol.read_only or bool(vm.get("readOnly"))))
    return mounts
