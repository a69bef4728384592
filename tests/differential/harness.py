"""Build one case with both builders and compare what they made."""

from __future__ import annotations

import gzip
import hashlib
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.differential.builders import DiffEnv
from tests.differential.cases import Case, Expect
from tests.differential.context import Entry, write_context
from tests.differential.normalise import config_diff, config_view, forgive_tree
from tests.differential.tree import Image, Node, read_image, tree_diff


def fill(text: str, values: Mapping[str, str]) -> str:
    """Replace ``{name}`` for the session's names only (``${VAR}`` and other braces stay)."""
    return re.sub(r"\{([a-z_]+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


@dataclass(frozen=True)
class Pair:
    """Both builders' images of one build."""

    work: Path
    buildah: Image
    kiln: Image
    buildah_id: str
    kiln_digest: str
    buildah_dockerfile: str
    seconds: tuple[float, float]

    @property
    def buildah_out(self) -> Path:
        return self.work / "buildah-oci"

    @property
    def kiln_out(self) -> Path:
        return self.work / "kiln-oci"


def _timed(fn: Callable[..., str], *args: Any, **kwargs: Any) -> tuple[str, float]:
    start = time.monotonic()
    return fn(*args, **kwargs), time.monotonic() - start


def build_pair(
    env: DiffEnv,
    name: str,
    files: Mapping[str, Entry],
    dockerfiles: tuple[str, str],
    *,
    args: list[str],
    fmt: str,
    kiln_args: tuple[str, ...] = (),
) -> Pair:
    """Write the context, then build it with buildah and kiln at the same time (they are independent)."""
    work = env.workdir(name)
    ctx = work / "ctx"
    write_context(ctx, files, uid=env.rootless.uid, gid=env.rootless.gid)
    # Dockerfiles live outside the context, so `COPY . ...` sees the same files in both builds.
    (work / "Dockerfile.buildah").write_text(dockerfiles[0])
    (work / "Dockerfile.kiln").write_text(dockerfiles[1])
    with ThreadPoolExecutor(2) as pool:
        buildah = pool.submit(
            _timed, env.buildah.build, ctx, work / "Dockerfile.buildah", work / "buildah-oci", fmt=fmt, args=args
        )
        kiln = pool.submit(
            _timed, env.kiln.build, ctx, work / "Dockerfile.kiln", work / "kiln-oci", fmt=fmt, args=[*args, *kiln_args]
        )
        buildah_id, buildah_seconds = buildah.result()
        kiln_digest, kiln_seconds = kiln.result()
    return Pair(
        work, read_image(work / "buildah-oci"), read_image(work / "kiln-oci"), buildah_id, kiln_digest,
        dockerfiles[0], (buildah_seconds, kiln_seconds),
    )


def build_case(env: DiffEnv, case: Case) -> Pair:
    kiln_text = fill(case.dockerfile, env.values)
    buildah_text = fill(case.buildah_dockerfile, env.values) if case.buildah_dockerfile else kiln_text
    args = [fill(a, env.values) for a in case.args]
    return build_pair(env, case.name, case.files, (buildah_text, kiln_text), args=args, fmt=case.fmt)


_MOUNT_TARGET = re.compile(r"--mount=\S*?\b(?:target|dst|destination)=([^,\s]+)")


def mount_targets(dockerfile: str) -> list[str]:
    """The absolute targets of every ``RUN --mount`` (all cases use absolute targets)."""
    return _MOUNT_TARGET.findall(dockerfile)


def _sha(content: bytes | str | None) -> str | None:
    if content is None:
        return None
    return hashlib.sha256(content.encode() if isinstance(content, str) else content).hexdigest()


def mismatch(node: Node | None, want: Expect | None) -> str | None:
    """Why ``node`` is not what ``want`` describes (None: it is)."""
    if want is None:
        return None if node is None else f"must not exist, is {node.describe()}"
    sha = _sha(want.content)
    expected = Node(want.type, want.mode, want.uid, want.gid, sha, want.target, want.links or ())
    if node is None:
        return f"missing, expected {expected.describe()}"
    same = (node.type, node.mode, node.uid, node.gid, node.target) == (want.type, want.mode, want.uid, want.gid, want.target)
    same = same and (sha is None or node.sha256 == sha) and (want.links is None or node.links == want.links)
    return None if same else f"expected {expected.describe()}\n      got      {node.describe()}"


def check_expect(image: Image, expect: Mapping[str, Expect | None], who: str) -> None:
    wrong = [f"  {path}: {why}" for path, want in expect.items() if (why := mismatch(image.tree.get(path), want))]
    assert not wrong, f"{who}'s image does not match the expected tree:\n" + "\n".join(wrong)


def compare(pair: Pair, case: Case | None = None, *, docker: bool) -> list[str]:
    """Assert equal trees and config fields, after the forgiven differences (normalise.py) and the
    case's documented deviations (each checked to still be exactly as documented). Returns notes."""
    buildah_tree, kiln_tree = dict(pair.buildah.tree), dict(pair.kiln.tree)
    buildah_view = config_view(pair.buildah.config, docker=docker)
    kiln_view = config_view(pair.kiln.config, docker=docker)
    problems: list[str] = []
    for path, dev in (case.deviations if case else {}).items():
        for who, tree, want in (("buildah", buildah_tree, dev.buildah), ("kiln", kiln_tree, dev.kiln)):
            why = mismatch(tree.pop(path, None), want)
            if why:
                problems.append(f"  {path}: documented deviation no longer holds for {who}: {why}")
    for name, cdev in (case.config_deviations if case else {}).items():
        got = (buildah_view.pop(name, None), kiln_view.pop(name, None))
        if got != (cdev.buildah, cdev.kiln):
            problems.append(f"  config {name}: documented deviation no longer holds: (buildah, kiln) = {got!r}")
    forgiven, notes = forgive_tree(buildah_tree, kiln_tree, mount_targets(pair.buildah_dockerfile))
    problems += tree_diff(forgiven, kiln_tree, names=("buildah", "kiln"))
    configs = config_diff(buildah_view, kiln_view)
    message = ""
    if problems:
        message += "file trees differ:\n" + "\n".join(problems) + "\n"
    if configs:
        message += "config differs:\n" + "\n".join(configs) + "\n"
    assert not message, message
    return notes


def layer_blobs(layout: Path, image: Image) -> list[bytes]:
    """Every layer of ``image`` uncompressed (to search them for bytes that must not be there)."""
    out = []
    for layer in image.manifest.get("layers", []):
        data = (layout / "blobs" / "sha256" / layer["digest"].split(":", 1)[1]).read_bytes()
        out.append(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
    return out
