"""Where a built image goes: store tags, an OCI layout, a docker-archive, a registry."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from kiln.build.export import export_docker_archive, export_oci_layout
from kiln.errors import UsageError
from kiln.oci.models import Descriptor, Manifest
from kiln.oci.store import Store, atomic_write
from kiln.registry.lazy import ensure_local, ensure_pushable
from kiln.registry.options import RegistryOptions
from kiln.registry.progress import ProgressSink
from kiln.registry.reference import Reference


@dataclass(frozen=True)
class Output:
    type: Literal["oci", "docker", "registry"]
    dest: Path | None = None
    name: str | None = None


def parse_output(text: str) -> Output:
    """``type=oci,dest=DIR``, ``type=docker,dest=FILE.tar``, ``type=registry[,name=REF]``."""
    fields: dict[str, str] = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq:
            raise UsageError(f"--output {text!r}: expected key=value pairs, got {part!r}")
        fields[key.strip()] = value.strip()
    kind = fields.pop("type", "")
    dest = fields.pop("dest", None)
    name = fields.pop("name", None)
    if fields:
        raise UsageError(f"--output {text!r}: unknown key {next(iter(fields))!r}")
    if kind in ("oci", "docker"):
        if not dest:
            raise UsageError(f"--output {text!r}: type={kind} needs dest=")
        return Output(kind, Path(dest), name)  # type: ignore[arg-type]
    if kind == "registry":
        return Output("registry", None, name)
    raise UsageError(f"--output {text!r}: type must be oci, docker or registry")


@dataclass
class Delivery:
    tags: list[str] = field(default_factory=list)
    pushed: dict[str, str] = field(default_factory=dict)  # reference -> manifest digest


def deliver(
    store: Store,
    desc: Descriptor,
    tags: list[str],
    outputs: list[Output],
    *,
    push: bool,
    registry: RegistryOptions,
    progress: ProgressSink | None = None,
) -> Delivery:
    from kiln.registry.transfer import push as push_image

    names = [str(Reference.parse(t)) for t in tags]
    done = Delivery()
    if names or any(out.type != "registry" for out in outputs):
        # A tag or a file output promises a complete image: fetch lazily pulled layers now.
        ensure_local(store, _layers(store, desc), registry, progress)
    for name in names:
        store.tag(name, desc)
        done.tags.append(name)
    targets: list[str] = list(names) if push else []
    for out in outputs:
        if out.type == "oci":
            assert out.dest is not None
            export_oci_layout(store, desc, out.dest, tag=out.name or (tags[0].rsplit(":", 1)[-1] if tags else None))
        elif out.type == "docker":
            assert out.dest is not None
            export_docker_archive(store, desc, out.dest, [Reference.parse(t).familiar for t in ([out.name] if out.name else tags)])
        else:
            refs = [out.name] if out.name else tags
            if not refs:
                raise UsageError("--output type=registry needs name= or a -t tag")
            targets.extend(str(Reference.parse(r)) for r in refs)
    for ref in dict.fromkeys(targets):
        ensure_pushable(store, _layers(store, desc), Reference.parse(ref), registry, progress)
        pushed = push_image(store, desc.digest, Reference.parse(ref), options=registry, progress=progress)
        done.pushed[ref] = pushed.digest
    return done


def _layers(store: Store, desc: Descriptor) -> list[Descriptor]:
    manifest = store.load_manifest(desc)
    assert isinstance(manifest, Manifest)
    return list(manifest.layers)


def write_metadata(path: Path, desc: Descriptor, delivery: Delivery, extra: dict[str, object]) -> None:
    """``--metadata-file``: the keys BuildKit writes (containerimage.digest, image.name) plus kiln's."""
    meta = {
        "containerimage.digest": desc.digest,
        "containerimage.descriptor": desc.to_dict(),
        "image.name": ",".join(delivery.tags),
        "kiln.pushed": delivery.pushed,
        **extra,
    }
    atomic_write(path, json.dumps(meta, indent=2).encode() + b"\n")
