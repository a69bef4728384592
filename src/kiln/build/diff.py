"""A step's changes as a layer: read an overlay upper directory, converting overlay's
whiteouts and opaque directories into OCI ones (image-spec layer.md#whiteouts).

The cost grows with what the step changed, not with the size of the image: only the upper
directory is walked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from kiln.build.overlay import is_opaque, is_whiteout
from kiln.oci.layer import encode_name
from kiln.oci.layer_writer import LayerWriter


def write_upper_as_layer(upper: Path, writer: LayerWriter, skip: Callable[[str], bool] | None = None) -> int:
    """Write the changes in ``upper`` to ``writer``; returns the number of entries.

    ``skip(relative_path)`` leaves out paths that belong to the sandbox, not to the step
    (mount points it had to create).
    """
    entries: list[tuple[bytes, str, Path]] = []
    stack = [(upper, "")]
    while stack:
        directory, rel = stack.pop()
        with os.scandir(directory) as it:
            for item in it:
                child = f"{rel}/{item.name}" if rel else item.name
                if skip is not None and skip(child):
                    continue
                entries.append((encode_name(child), child, Path(item.path)))
                if item.is_dir(follow_symlinks=False):
                    stack.append((Path(item.path), child))
    entries.sort()
    count = 0
    for _, rel, path in entries:
        st = os.lstat(path)
        if is_whiteout(st):
            writer.add_whiteout(rel)
        else:
            writer.add_path(rel, path)
            if os.path.isdir(path) and not os.path.islink(path) and is_opaque(path):
                writer.add_opaque(rel)
        count += 1
    return count
