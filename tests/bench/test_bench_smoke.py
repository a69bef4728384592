"""The benchmark harness works: the transfer benchmark's measurements run on a tiny image against the
real registry, every pushed/copied/pulled image has the right digest, and the reports are written.

No timing is asserted (benchmarks report, they never judge); see bench/README.md.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from bench.harness import BenchError, Command, Result, compare, timed
from bench.run import discover
from bench.transfer import (
    CASES,
    SharedRegistry,
    TransferSetup,
    manifest_digest_at,
    measure,
    prepare,
    pull_trials,
)
from bench.transfer_image import BenchImage, build_image

from bench import report
from kiln.oci.store import Store
from kiln.registry.reference import Reference
from tests.fixtures.registry import Registry


@pytest.fixture(scope="module")
def tiny_image(tmp_path_factory: pytest.TempPathFactory) -> BenchImage:
    # Two layers of 512 KiB random data: about 1 MiB in all.
    return build_image(tmp_path_factory.mktemp("bench-layout"), 2, 512 * 1024, seed=5)


def test_discovery_finds_the_transfer_benchmark() -> None:
    benchmarks = discover()
    assert "transfer" in benchmarks
    assert benchmarks["transfer"].peer == "skopeo"


def test_transfer_measurements_run_and_every_destination_holds_the_image(
    registry: Registry, tiny_image: BenchImage, tmp_path: Path
) -> None:
    destinations = SharedRegistry(registry.host)
    setup = prepare(tiny_image, registry.host, tmp_path, destinations, bytecode_cache=False)
    rows = measure(setup, runs=1, warmup=False)

    assert [row.case for row in rows] == list(CASES)
    for row in rows:
        assert len(row.kiln) == 1 and len(row.peer) == 1
        assert row.kiln_best.seconds > 0 and row.peer_best.seconds > 0
        assert row.ratio == row.kiln_best.seconds / row.peer_best.seconds
        assert len(row.kiln_engine) == 1 and row.kiln_engine[0] > 0
    # push and copy by kiln's CLI, skopeo and kiln's API: six fresh repositories, all holding the image.
    assert len(destinations.handed_out) == 6
    for ref in destinations.handed_out:
        assert manifest_digest_at(f"{ref}:v1") == tiny_image.manifest.digest
    # kiln's pull left the image in its store under the source reference.
    pulled = Store(setup.scratch / "pull-kiln").resolve(str(Reference.parse(setup.source_ref)))
    assert pulled.digest == tiny_image.manifest.digest

    when = report.now()
    result = Result(name="transfer", title="Registry transfer", peer="skopeo", rows=rows, runs=1)
    csv_path = tmp_path / "results" / "transfer.csv"
    report.write_csv(result, csv_path, when)
    with open(csv_path, newline="") as f:
        lines = list(csv.DictReader(f))
    assert [line["case"] for line in lines] == list(CASES)
    assert all(float(line["ratio_kiln_over_peer"]) > 0 for line in lines)
    png = tmp_path / "results" / "transfer.png"
    report.write_chart(result, png, when)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = report.text_table(result)
    assert all(f"\n{case} " in table for case in CASES) and "engine s" in table
    assert "kiln engine (s)" in report.markdown_table(result)


def test_a_check_that_fails_stops_the_benchmark(
    registry: Registry, tiny_image: BenchImage, tmp_path: Path
) -> None:
    setup = prepare(tiny_image, registry.host, tmp_path, SharedRegistry(registry.host), bytecode_cache=False)
    wrong = BenchImage(
        tiny_image.layout, tiny_image.tag, tiny_image.config, tiny_image.config, tiny_image.layers
    )  # claims the config's digest as the manifest's
    kiln, skopeo = pull_trials(TransferSetup(**{**setup.__dict__, "image": wrong}))
    with pytest.raises(BenchError, match="expected"):
        compare("pull", "", kiln, skopeo, runs=1, warmup=False)
    with pytest.raises(BenchError, match="exited with"):
        timed(Command(["false"]))


def test_doc_sections_are_replaced_and_other_text_kept(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\nIntro stays.\n")
    machine = {"nproc": "2"}

    def section(n: str) -> str:
        result = Result(name="transfer", title="T", peer="skopeo", rows=(), runs=2, notes=(n,))
        return report.section(result, report.now(), machine, None)

    report.update_doc(doc, "transfer", section("first"))
    report.update_doc(doc, "other", section("other bench").replace("bench:transfer", "bench:other"))
    report.update_doc(doc, "transfer", section("second"))
    text = doc.read_text()
    assert text.startswith("# Performance\n\nIntro stays.\n")
    assert "- second" in text and "- first" not in text and "- other bench" in text
    assert text.count("<!-- bench:transfer:begin") == 1
    assert text.index("bench:transfer:begin") < text.index("bench:other:begin")
