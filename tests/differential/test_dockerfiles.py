"""Differential test of the Dockerfile strategy: kiln and buildah build the same Dockerfiles in the
same run and must give the same file trees and the same config fields (see docs/differential.md)."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import Future

import pytest

from tests.differential.builders import DiffEnv
from tests.differential.cases import CASES, ONBUILD_CHILD, ONBUILD_FILES, ONBUILD_PARENT, Case
from tests.differential.harness import Pair, build_pair, check_expect, compare, fill, layer_blobs

pytestmark = [pytest.mark.slow, pytest.mark.rootless]


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.name, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else []) for c in CASES],
)
def test_same_image_as_buildah(diff_env: DiffEnv, prebuilt: dict[str, Future[Pair]], case: Case) -> None:
    pair = prebuilt[case.name].result()
    print(f"build seconds: buildah {pair.seconds[0]:.1f}, kiln {pair.seconds[1]:.1f}; work dir {pair.work}")
    for note in compare(pair, case, docker=case.fmt == "docker"):
        print("forgiven:", note)
    if case.expect:
        check_expect(pair.buildah, case.expect, "buildah")  # the judge agrees with the written-down tree
        check_expect(pair.kiln, case.expect, "kiln")
    for secret in case.absent_bytes:
        needle = fill(secret, diff_env.values).encode()
        for out, image, who in ((pair.buildah_out, pair.buildah, "buildah"), (pair.kiln_out, pair.kiln, "kiln")):
            assert not any(needle in blob for blob in layer_blobs(out, image)), f"{who}: secret found in a layer"
            assert needle not in json.dumps(image.config).encode(), f"{who}: secret found in the config"


def test_onbuild_triggers(diff_env: DiffEnv) -> None:
    """ONBUILD is stored in a parent image (Docker format) and runs when a child builds FROM it."""
    values = diff_env.values
    token = values["token"]
    parent_text = fill(ONBUILD_PARENT, values)
    kiln_parent_ref = f"{values['registry']}/diff/onbuild-kiln:{token}"
    buildah_parent_ref = f"{values['registry']}/diff/onbuild-buildah:{token}"
    parent = build_pair(
        diff_env, "onbuild-parent", {}, (parent_text, parent_text), args=[], fmt="docker",
        kiln_args=("-t", kiln_parent_ref, "--push"),
    )
    compare(parent, docker=True)
    assert parent.kiln.settings.get("OnBuild"), "the parent keeps its triggers"
    diff_env.buildah.push(parent.buildah_id, buildah_parent_ref, fmt="docker")

    # Each builder's child on its own parent, and kiln's child on buildah's parent as well.
    children: dict[str, Pair] = {}
    for name, kiln_parent in (("own", kiln_parent_ref), ("judge", buildah_parent_ref)):
        buildah_text = fill(ONBUILD_CHILD, {**values, "parent": buildah_parent_ref})
        kiln_text = fill(ONBUILD_CHILD, {**values, "parent": kiln_parent})
        children[name] = build_pair(
            diff_env, f"onbuild-child-{name}", ONBUILD_FILES, (buildah_text, kiln_text),
            args=["--build-arg", "FROM_CHILD=cli"], fmt="docker",
        )
    for child in children.values():
        compare(child, docker=True)
    kiln_child = children["own"].kiln
    assert kiln_child.tree["/triggered/ran"].sha256 == hashlib.sha256(b"ran in child: cli\n").hexdigest()
    assert not kiln_child.settings.get("OnBuild"), "triggers are consumed, not inherited"
