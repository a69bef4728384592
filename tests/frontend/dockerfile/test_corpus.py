"""BuildKit's parser corpus: every positive case must dump exactly as BuildKit does, every
negative case must be rejected with a located DockerfileError.

The corpus lives outside the repository (`<repo>/../shared/corpus/dockerfile-parser`, or the
directory named by $KILN_CORPUS).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from kiln.frontend.dockerfile.dump import dump_result
from kiln.frontend.dockerfile.instructions import parse_dockerfile
from kiln.frontend.dockerfile.parser import DockerfileError, parse


def _corpus_dir() -> Path:
    override = os.environ.get("KILN_CORPUS")
    if override:
        base = Path(override)
        # accept either the dockerfile-parser directory itself or the corpus root holding it
        return base if (base / "testfiles").is_dir() else base / "dockerfile-parser"
    return (Path(__file__).resolve().parents[3] / ".." / "shared" / "corpus" / "dockerfile-parser").resolve()


CORPUS = _corpus_dir()


def _cases(kind: str) -> list[object]:
    root = CORPUS / kind
    if not root.is_dir():
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"parser corpus not found at {root}"))]
    return [pytest.param(d, id=d.name) for d in sorted(root.iterdir()) if (d / "Dockerfile").is_file()]


@pytest.mark.parametrize("case", _cases("testfiles"))
def test_positive_case_dumps_like_buildkit(case: Path) -> None:
    source = (case / "Dockerfile").read_bytes()
    expected = (case / "result").read_bytes().decode("utf-8")
    assert dump_result(parse(source, "Dockerfile")) == expected


@pytest.mark.parametrize("case", _cases("testfiles"))
def test_positive_case_types_or_fails_cleanly(case: Path) -> None:
    # Some corpus files are only AST fixtures (CMD with no FROM, HEALTHCHECK CONNECT, ...): typing
    # them may fail, but only ever with a located DockerfileError, never a stray exception.
    try:
        df = parse_dockerfile((case / "Dockerfile").read_bytes(), "Dockerfile")
    except DockerfileError as e:
        assert re.match(r"Dockerfile:\d+: ", str(e))
        assert e.source_line
    else:
        assert df.stages


@pytest.mark.parametrize("case", _cases("testfiles-negative"))
def test_negative_case_is_rejected(case: Path) -> None:
    with pytest.raises(DockerfileError) as info:
        parse_dockerfile((case / "Dockerfile").read_bytes(), "Dockerfile")
    assert re.match(r"Dockerfile:\d+: \S", str(info.value))


def test_corpus_is_complete_when_present() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"parser corpus not found at {CORPUS}")
    assert len(_cases("testfiles")) >= 30
    assert len(_cases("testfiles-negative")) >= 4
