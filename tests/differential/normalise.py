"""Every difference between buildah's and kiln's images that the differential test tolerates, and why.

This is the ONE place where differences are forgiven; docs/differential.md lists the same rules.
Everything else that differs is a kiln bug or a deliberate deviation (then the case says so).
"""

from __future__ import annotations

from typing import Any

from tests.differential.tree import Node

# -- file trees ------------------------------------------------------------------------------------

#: Files buildah's RUN leaves behind as empty mount points: it bind-mounts its own /etc/hosts,
#: /etc/resolv.conf and /etc/hostname over them and the (empty, mode 0755) mount targets end up in
#: the layer. BuildKit and kiln mount them without leaving a trace. Forgiven only while empty and
#: absent from kiln's image (a Dockerfile that writes them must still agree).
BUILDAH_MOUNT_POINT_FILES = ("/etc/hosts", "/etc/resolv.conf", "/etc/hostname")

#: Directories buildah creates for its own RUN plumbing (/run for .containerenv and secrets,
#: /run/secrets for secret mounts). Forgiven only while empty (after the above) and absent from kiln.
BUILDAH_MOUNT_POINT_DIRS = ("/run", "/run/secrets")

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def forgive_tree(
    buildah: dict[str, Node], kiln: dict[str, Node], mount_targets: list[str]
) -> tuple[dict[str, Node], list[str]]:
    """buildah's tree without the entries forgiven here, and a note per forgiven entry.

    Besides the fixed lists above: buildah 1.28 removes the mount point of a ``RUN --mount`` after
    the step but leaves behind the parent directories it had to create for it (``/mnt`` for
    ``target=/mnt/ctx``). BuildKit removes those too (its mount-stub cleaner walks up the parents it
    created), and so does kiln. Forgiven: directories only in buildah's image that are still empty
    and are a mount target or one of its parents.
    """
    out = dict(buildah)
    notes: list[str] = []
    for path in BUILDAH_MOUNT_POINT_FILES:
        node = out.get(path)
        if node is not None and node.type == "file" and node.sha256 == EMPTY_SHA256 and path not in kiln:
            del out[path]
            notes.append(f"{path}: empty buildah mount point")
    candidates = set(BUILDAH_MOUNT_POINT_DIRS)
    for target in mount_targets:
        parts = target.strip("/").split("/")
        candidates.update("/" + "/".join(parts[:i]) for i in range(1, len(parts) + 1))
    for path in sorted(candidates, key=lambda p: -p.count("/")):  # children before parents
        node = out.get(path)
        empty = not any(p.startswith(path + "/") for p in out)
        if node is not None and node.type == "dir" and empty and path not in kiln:
            del out[path]
            why = "buildah RUN plumbing" if path in BUILDAH_MOUNT_POINT_DIRS else "parent of a RUN --mount target"
            notes.append(f"{path}: empty directory only buildah leaves ({why})")
    return out, notes


# -- image config ----------------------------------------------------------------------------------

#: Compared for every image (the fields of the OCI config's "config" section that a Dockerfile sets).
CONFIG_FIELDS = ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "ExposedPorts", "Volumes", "StopSignal")
#: Only a Docker-format config can hold these (OCI drops them), so only --format docker cases compare them.
DOCKER_ONLY_FIELDS = ("Healthcheck", "Shell", "OnBuild")
#: Top-level config fields compared too (MAINTAINER sets "author").
TOP_LEVEL_FIELDS = ("author", "architecture", "os")

#: buildah stamps its version on every image; not something the Dockerfile asked for.
BUILDAH_LABELS = ("io.buildah.version",)


def _empty(value: Any) -> bool:
    # null, "", [] and {} mean the same to a runtime ("Entrypoint": [] is how buildah writes
    # "no entrypoint", "WorkingDir": "" how it writes "not set"), so they compare equal.
    return value is None or value == "" or value == [] or value == {}


def config_view(config: dict[str, Any], *, docker: bool) -> dict[str, Any]:
    """The compared fields of an image config document, normalised as documented above."""
    settings = config.get("config") or {}
    view: dict[str, Any] = {}
    for name in CONFIG_FIELDS + (DOCKER_ONLY_FIELDS if docker else ()):
        value = settings.get(name)
        if name == "Labels" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in BUILDAH_LABELS}
        if not _empty(value):
            view[name] = value
    for name in TOP_LEVEL_FIELDS:
        if not _empty(config.get(name)):
            view[name] = config[name]
    return view


def config_diff(buildah: dict[str, Any], kiln: dict[str, Any]) -> list[str]:
    lines = []
    for key in sorted(set(buildah) | set(kiln)):
        if buildah.get(key) != kiln.get(key):
            lines.append(f"  {key}: buildah: {buildah.get(key)!r}\n  {' ' * len(key)}  kiln:    {kiln.get(key)!r}")
    return lines
