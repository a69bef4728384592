"""``kiln s2i usage BUILDER``: run the builder's usage script, as ``s2i usage`` does.

The script is looked up like the others (``--scripts-url``, the image's
``io.openshift.s2i.scripts-url`` label, ``/usr/libexec/s2i``; there is no source). A script
fetched from a URL is bind-mounted read-only at DESTINATION/scripts/usage. It runs as the
assemble user with the image's environment plus ``-e``.
"""

from __future__ import annotations

import posixpath
import shlex
import tempfile
from collections.abc import Callable
from pathlib import Path

from kiln.errors import ImageNotFoundError, KilnError
from kiln.frontend.s2i import labels as lbl
from kiln.frontend.s2i.compile import MISSING_MARKER
from kiln.frontend.s2i.scripts import USAGE, NotThere, fetch_script, locate, locations
from kiln.frontend.s2i.users import effective_user
from kiln.oci.store import Store
from kiln.registry.options import RegistryOptions


def _no_source(name: str) -> bytes:
    raise NotThere("usage takes no source")


def run_usage(
    builder: str,
    store: Store,
    registry: RegistryOptions,
    *,
    scripts_url: str | None = None,
    env: dict[str, str] | None = None,
    assemble_user: str | None = None,
    output: Callable[[bytes], None],
) -> int:
    """Run the usage script; its exit code. Output (stdout and stderr) goes to ``output``."""
    from kiln.build.image import load_image
    from kiln.build.snapshots import Snapshots
    from kiln.registry.pull import pull
    from kiln.registry.reference import Reference
    from kiln.runtime.container import RunSpec, run_container
    from kiln.sandbox.spec import Mount

    name = str(Reference.parse(builder))
    try:
        desc = store.resolve(name)
    except ImageNotFoundError:
        desc = pull(Reference.parse(builder), store, options=registry)
    image = load_image(store, desc, what=name)
    labels = dict(image.config.config.labels or {})
    script = locate((USAGE,), locations(scripts_url, lbl.scripts_url(labels)), fetch_script, _no_source)[USAGE]
    folder = posixpath.join(lbl.destination(labels), "scripts")
    mounts = []
    with tempfile.TemporaryDirectory(dir=store.tmp_dir if store.tmp_dir.exists() else None) as tmp:
        if script.content is not None:
            Path(tmp, USAGE).write_bytes(script.content)
            Path(tmp, USAGE).chmod(0o755)
            mounts.append(Mount("bind", posixpath.join(folder, USAGE), str(Path(tmp, USAGE)), readonly=True))
        path = script.image_path or posixpath.join(folder, USAGE)
        q = shlex.quote(path)
        command = f"if [ ! -e {q} ]; then echo \"{MISSING_MARKER} {USAGE} at \"{q} >&2; exit 127; fi; exec {q}"
        seen: list[bytes] = []

        def out(data: bytes) -> None:
            seen.append(data)
            output(data)

        spec = RunSpec(
            command=["/bin/sh", "-c", command, "s2i-usage"],
            entrypoint=[],
            env=env or {},
            user=effective_user(assemble_user, labels, image.config.config.user) or None,
            volumes=mounts,
            on_output=out,
        )
        outcome = run_container(Snapshots(store), image, spec)
    if outcome.result.exit_code == 127 and MISSING_MARKER.encode() in b"".join(seen):
        raise KilnError(f"image {name} has no usage script at {path} ({script.origin})")
    return outcome.result.exit_code
