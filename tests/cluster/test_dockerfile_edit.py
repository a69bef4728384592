"""OpenShift's Docker-strategy edits: ENV after every FROM, the last FROM replaced (kept parseable)."""

from __future__ import annotations

from kiln.cluster.strategies.dockerfile_edit import edit_dockerfile
from kiln.frontend.dockerfile.parser import parse

SOURCE = "# syntax=docker/dockerfile:1\nFROM --platform=linux/amd64 busybox \\\n  AS base\nRUN echo one\nFROM base\nRUN echo two\n"


def test_unchanged_without_edits() -> None:
    assert edit_dockerfile(SOURCE) == SOURCE


def test_env_after_every_from_and_last_from_replaced() -> None:
    out = edit_dockerfile(SOURCE, env=[("A", "1"), ("B", 'x "y" $z\\')], from_image="alpine:3")
    nodes = parse(out).ast.children
    assert [n.keyword for n in nodes] == ["from", "env", "run", "from", "env", "run"]
    assert [a.value for a in nodes[0].args()] == ["busybox", "AS", "base"]
    assert nodes[0].flags == ["--platform=linux/amd64"]
    assert [a.value for a in nodes[3].args()] == ["alpine:3"]
    env = [a.value for a in nodes[1].args()]
    assert env[:2] == ["A", '"1"']
    assert out.splitlines()[0] == "# syntax=docker/dockerfile:1"


def test_from_alias_is_kept() -> None:
    out = edit_dockerfile("FROM a AS one\nFROM b as two\nRUN x\n", from_image="c")
    assert "FROM c AS two" in out.splitlines()
