"""The build benchmark end to end on tiny inputs (50 files, 1 MiB; an 8 MiB "1 GiB" file): kiln and
buildah build, rebuild, rebuild after an edit and push as ``builder``, every run checked, and the
report (table, CSV, PNG, markdown section, memory CSV) comes out. No timing is asserted."""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.build import run
from bench.harness import BenchConfig

from bench import report

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("buildah") is None,
    reason="runs builders as the builder user: needs root and buildah",
)

CASES = ["cold", "unchanged", "changed", "push", "1gib"]


@pytest.fixture
def scratch() -> Iterator[Path]:
    """The benchmark's scratch directory: builder must be able to reach it, so not under tmp_path
    (pytest's base directory is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="kiln-build-bench-smoke-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_build_benchmark_runs_end_to_end(tmp_path: Path, scratch: Path) -> None:
    work = scratch
    extras = tmp_path / "results"
    result = run(
        BenchConfig(runs=1, workdir=work, verbose=False, quick=True),
        extras_dir=extras,
        peers=False,
        warmup=False,
    )

    assert result.name == "build" and result.peer == "buildah"
    assert [row.case for row in result.rows] == CASES
    for row in result.rows:
        assert len(row.kiln) == 1 and len(row.peer) == 1
        assert row.kiln[0].seconds > 0 and row.peer[0].seconds > 0 and row.ratio > 0
    # The scratch directory is cleaned up: no builder-owned stores or registries are left behind.
    assert not (work / "build").exists()

    # The memory runs saw kiln's process tree (a Python interpreter holds well over 10 MiB).
    with open(extras / "build_memory.csv", newline="") as f:
        memory = list(csv.DictReader(f))
    assert {m["tool"] for m in memory} == {"kiln", "buildah"}
    kiln_mem = [m for m in memory if m["tool"] == "kiln"]
    assert all(10 < float(m["tree_peak_rss_mib"]) < 4096 for m in kiln_mem)
    assert any("1gib peak memory, kiln" in note for note in result.notes)
    assert any(note.startswith("Goals (kiln / buildah") for note in result.notes)

    with open(extras / "build_peers.csv", newline="") as f:
        peers = list(csv.DictReader(f))
    assert {(p["case"], p["tool"]) for p in peers} == {(c, t) for c in CASES for t in ("kiln", "buildah")}
    assert (extras / "build_peers.png").read_bytes().startswith(b"\x89PNG")

    # What bench/run.py does with the result.
    when = report.now()
    assert "unchanged" in report.text_table(result)
    report.write_csv(result, tmp_path / "build.csv", when)
    report.write_chart(result, tmp_path / "build.png", when)
    assert (tmp_path / "build.png").read_bytes().startswith(b"\x89PNG")
    doc = tmp_path / "performance.md"
    report.update_doc(doc, result.name, report.section(result, when, report.machine_facts(), "build.png"))
    text = doc.read_text()
    assert "<!-- bench:build:begin" in text and "| push |" in text and "| 1gib |" in text
