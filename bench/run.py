"""Run kiln's benchmarks: `bench/run.py [--runs N] [NAME ...]` (`make bench` runs them all).

Every module of bench/ that defines ``BENCHMARK`` (a bench.harness.Benchmark) is a benchmark;
naming none runs them all. For each one this prints a table (kiln, the peer tool, kiln/peer),
writes bench/results/NAME.csv and NAME.png, and rewrites NAME's section of docs/performance.md.
Benchmarks report; they never fail because of a number. The exit status is non-zero only when a
benchmark could not run at all.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import tempfile
import traceback
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script (`python bench/run.py`): make `bench`, `kiln` and `tests` importable.
    _root = Path(__file__).resolve().parent.parent
    for _p in (_root, _root / "src"):
        if str(_p) not in sys.path:
            sys.path.insert(0, str(_p))

from bench import report
from bench.harness import REPO_ROOT, BenchConfig, Benchmark

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
DOC = REPO_ROOT / "docs" / "performance.md"
#: Helpers, not benchmarks: never imported to look for BENCHMARK.
NOT_BENCHMARKS = frozenset({"run", "harness", "report"})


def discover(broken: dict[str, str] | None = None) -> dict[str, Benchmark]:
    """Benchmarks by name, from every bench/ module that defines BENCHMARK.

    A module that fails to import is skipped (recorded in ``broken`` as name → error) so one
    unfinished benchmark does not stop the others.
    """
    found: dict[str, Benchmark] = {}
    for info in sorted(pkgutil.iter_modules([str(BENCH_DIR)]), key=lambda i: i.name):
        if info.name in NOT_BENCHMARKS or info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"bench.{info.name}")
        except Exception as e:
            if broken is not None:
                broken[info.name] = f"{type(e).__name__}: {e}"
            continue
        bench = getattr(module, "BENCHMARK", None)
        if isinstance(bench, Benchmark):
            found[bench.name] = bench
    return found


def parse_args(argv: list[str] | None, names: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all of {names})"
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="runs per tool and case; the best counts (>= 2 advised)"
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where NAME.csv and NAME.png go")
    parser.add_argument("--doc", type=Path, default=DOC, help="markdown file whose sections are rewritten")
    parser.add_argument("--no-doc", action="store_true", help="do not touch the markdown file")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="scratch directory (default: a new temp dir)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny inputs, to check the harness (implies --no-doc)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-run lines")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in names]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(names)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    broken: dict[str, str] = {}
    benchmarks = discover(broken)
    for name, error in broken.items():
        print(f"warning: bench/{name}.py could not be imported ({error})", file=sys.stderr)
    args = parse_args(argv, sorted(benchmarks))
    selected = [benchmarks[n] for n in (args.names or sorted(benchmarks))]
    machine = report.machine_facts()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()), flush=True)
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="kiln-bench-", dir=args.workdir) as tmp:
        for bench in selected:
            print(f"\n== {bench.name}: {bench.title} (kiln vs {bench.peer}, {args.runs} runs)", flush=True)
            config = BenchConfig(runs=args.runs, workdir=Path(tmp), verbose=not args.quiet, quick=args.quick)
            load_before = os.getloadavg()[0]
            try:
                result = bench.run(config)
            except Exception:
                traceback.print_exc()
                failed.append(bench.name)
                continue
            when = report.now()
            # Other work on the machine moves the numbers; say how busy it was.
            conditions = {
                **machine,
                "scratch filesystem": report.filesystem_of(Path(tmp)),
                "load (1 min) before/after": f"{load_before:.1f}/{os.getloadavg()[0]:.1f}",
            }
            print(report.text_table(result), flush=True)
            csv_path = args.results / f"{result.name}.csv"
            png_path = args.results / f"{result.name}.png"
            report.write_csv(result, csv_path, when)
            report.write_chart(result, png_path, when)
            print(f"wrote {csv_path} and {png_path}")
            if not (args.no_doc or args.quick):
                chart = os.path.relpath(png_path.resolve(), args.doc.resolve().parent)
                report.update_doc(args.doc, result.name, report.section(result, when, conditions, chart))
                print(f"updated {args.doc} (section {result.name})")
    if failed:
        print(f"\nbenchmarks that could not run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
