"""Images a strategy runs (custom builders, pipeline steps) and images it hands back as OCI layouts."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from kiln.build.image import Image, load_image
from kiln.cluster.strategies.environment import BuildEnvironment
from kiln.errors import BuildError, ImageNotFoundError
from kiln.oci.digest import Digest
from kiln.oci.models import Descriptor, Platform
from kiln.oci.store import Store
from kiln.registry.reference import Reference
from kiln.runtime.container import RunOutcome, RunSpec, run_container
from kiln.sandbox.spec import Mount


def image_for(env: BuildEnvironment, ref: str) -> Image:
    """``ref`` from the store, pulled when missing."""
    from kiln.registry.pull import pull

    name = str(Reference.parse(ref))
    desc = None
    with contextlib.suppress(ImageNotFoundError):
        desc = env.store.resolve(name)
    if desc is None:
        env.say(f"--> pulling {ref}")
        desc = pull(Reference.parse(ref), env.store, platform=Platform(), options=env.registry)
    return load_image(env.store, desc, Platform(), what=name)


def run_image(env: BuildEnvironment, ref: str, *, command: list[str], entrypoint: list[str] | None, variables: dict[str, str],
              mounts: list[Mount], workdir: str | None = None) -> RunOutcome:  # fmt: skip
    """Run ``ref`` in the sandbox, its output going to the build log."""
    from kiln.build.snapshots import Snapshots

    image = image_for(env, ref)
    spec = RunSpec(command=command, entrypoint=entrypoint, env=variables, volumes=mounts, workdir=workdir, on_output=_writer(env))
    return run_container(Snapshots(env.store), image, spec)


def _writer(env: BuildEnvironment) -> Callable[[bytes], None]:
    def write(data: bytes) -> None:
        if not env.quiet:
            env.stream.write(data.decode("utf-8", "replace"))
            env.stream.flush()

    return write


def import_layout(store: Store, layout: Path) -> Descriptor | None:
    """The first image of an OCI layout a builder wrote, copied (verified) into the store; None if there is none."""
    index_path = layout / "index.json"
    if not index_path.is_file():
        return None
    try:
        manifests = json.loads(index_path.read_text())["manifests"]
        desc = Descriptor.from_dict(manifests[0])
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise BuildError(f"{index_path}: not an OCI image layout index ({e})") from e
    source = Store(layout)
    try:
        for digest in sorted(source.reachable([desc])):
            d = Digest(digest)
            if not store.has_blob(d):
                with source.open_blob(d) as blob:
                    store.ingest(blob, expected=d)
    finally:
        shutil.rmtree(source.state_dir, ignore_errors=True)  # opening it as a Store added kiln's state dir
    return Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size)
