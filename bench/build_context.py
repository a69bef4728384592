"""The build contexts of the build benchmark, written once and handed to the builder user.

``write_context`` makes ``n_files`` small files (sizes spread over 1-4 KiB, seeded pseudo-random
bytes, so neither compression nor deduplication flatters anyone) in ``n_dirs`` directories,
plus one incompressible big file. ``touch_one`` rewrites one small file with new content, as an
edit would. The Dockerfile lives beside the context, not in it, so ``COPY . /app`` sees exactly
the generated files in every tool.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

#: Written in chunks so a 1 GiB file never sits in memory.
_CHUNK = 8 << 20


@dataclass(frozen=True)
class Context:
    directory: Path
    dockerfile: Path
    files: int
    total_bytes: int
    #: The small file that ``touch_one`` rewrites.
    victim: Path


def dockerfile_text(
    base: str, *, run: str | None = "find /app -type f | wc -l > /count", dest: str = "/app"
) -> str:
    lines = [f"FROM {base}", f"COPY . {dest}"]
    if run:
        lines.append(f"RUN {run}")
    return "\n".join(lines) + "\n"


def _write_random(path: Path, size: int, rng: random.Random | None) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, _CHUNK)
            f.write(rng.randbytes(n) if rng is not None else os.urandom(n))
            left -= n


def write_context(
    directory: Path,
    dockerfile: str,
    *,
    n_files: int,
    n_dirs: int,
    big_bytes: int,
    owner: tuple[int, int],
    seed: int = 7,
    min_size: int = 1024,
    max_size: int = 4096,
) -> Context:
    """The context at ``directory`` (created), its Dockerfile at ``directory``.Dockerfile."""
    rng = random.Random(seed)
    directory.mkdir(parents=True)
    total = 0
    victim = directory
    for i in range(n_files):
        sub = directory / f"d{i % n_dirs:03d}"
        sub.mkdir(exist_ok=True)
        size = rng.randint(min_size, max_size)
        path = sub / f"f{i:05d}.dat"
        path.write_bytes(rng.randbytes(size))
        total += size
        if i == n_files // 2:
            victim = path
    if big_bytes:
        _write_random(directory / "big.bin", big_bytes, None if big_bytes > (256 << 20) else rng)
        total += big_bytes
    df = directory.with_name(directory.name + ".Dockerfile")
    df.write_text(dockerfile)
    uid, gid = owner
    for path in (directory, df):
        os.chown(path, uid, gid)
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid)
    return Context(directory, df, n_files + (1 if big_bytes else 0), total, victim)


def touch_one(context: Context, token: str) -> None:
    """Give one small file new content (same size class), as an editor save would."""
    data = context.victim.read_bytes()
    stamp = f"edit {token}\n".encode()
    context.victim.write_bytes(stamp + data[len(stamp) :])
