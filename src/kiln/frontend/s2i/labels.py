"""The labels S2I reads from builder images and writes on the images it builds.

Read (set by builder authors): ``io.openshift.s2i.scripts-url``, ``.destination``,
``.assemble-user``, ``.assemble-input-files``. Written (``output_labels``): the base
image's labels; the builder's ``io.k8s.display-name``, ``io.k8s.description`` and
``io.openshift.s2i.*`` labels (for an extended build the base is the runtime image, so these
are taken over from the builder explicitly); and what s2i's GenerateOutputImageLabels adds:
``io.openshift.s2i.build.image``, ``.build.source-location``, ``.build.source-context-dir``
and, from git, ``.build.commit.{author,date,id,ref,message}``. ``io.k8s.display-name``
falls back to the output tag when the builder has none (s2i's rule).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

NAMESPACE = "io.openshift.s2i."
SCRIPTS_URL = NAMESPACE + "scripts-url"
DESTINATION = NAMESPACE + "destination"
ASSEMBLE_USER = NAMESPACE + "assemble-user"
ASSEMBLE_INPUT_FILES = NAMESPACE + "assemble-input-files"
BUILD = NAMESPACE + "build."
DISPLAY_NAME = "io.k8s.display-name"
DESCRIPTION = "io.k8s.description"

DEFAULT_SCRIPTS_URL = "image:///usr/libexec/s2i"
DEFAULT_DESTINATION = "/tmp"


@dataclass(frozen=True)
class SourceInfo:
    """Where the source came from; the commit fields are empty when it is not a git checkout."""

    location: str = ""
    context_dir: str = ""
    ref: str = ""
    commit_id: str = ""
    author_name: str = ""
    author_email: str = ""
    date: str = ""
    message: str = ""


def output_labels(
    base: Mapping[str, str],
    builder: Mapping[str, str],
    *,
    builder_ref: str,
    tag: str | None,
    info: SourceInfo,
) -> dict[str, str]:
    # build.* labels describe one build: those a base inherited from its own s2i build go
    labels = {k: v for k, v in base.items() if not k.startswith(BUILD)}
    for key, value in builder.items():
        if (key.startswith(NAMESPACE) and not key.startswith(BUILD)) or key in (DISPLAY_NAME, DESCRIPTION):
            labels[key] = value
    if DISPLAY_NAME not in labels and tag:
        labels[DISPLAY_NAME] = tag
    generated = {
        "image": builder_ref,
        "commit.author": f"{info.author_name} <{info.author_email}>" if info.author_name else "",
        "commit.date": info.date,
        "commit.id": info.commit_id,
        "commit.ref": info.ref,
        "commit.message": info.message,
        "source-location": info.location,
        "source-context-dir": info.context_dir,
    }
    labels.update({BUILD + k: v for k, v in generated.items() if v})
    return dict(sorted(labels.items()))


def scripts_url(labels: Mapping[str, str]) -> str:
    return labels.get(SCRIPTS_URL, "").strip()


def destination(labels: Mapping[str, str]) -> str:
    return labels.get(DESTINATION, "").strip() or DEFAULT_DESTINATION
