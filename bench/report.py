"""Turning a Result into a terminal table, a CSV, a PNG chart and a section of docs/performance.md.

docs/performance.md holds one section per benchmark between ``<!-- bench:NAME:begin -->`` and
``<!-- bench:NAME:end -->``; a run replaces only the sections of the benchmarks it ran (appending
a section the first time), so the intro and other benchmarks' tables stay as they are.
"""

from __future__ import annotations

import csv
import os
import platform
import re
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from statistics import median

from bench.harness import Result, Row

Facts = Mapping[str, str]


def machine_facts() -> dict[str, str]:
    """nproc, memory, kernel, CPU model and Python: what the numbers depend on."""
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count() or 0),
        "memory": f"{mem_kib / (1 << 20):.1f} GiB",
        "kernel": platform.release(),
        "cpu": cpu,
        "python": platform.python_version(),
    }


def filesystem_of(path: Path) -> str:
    """The type of the filesystem holding ``path`` (ext4, tmpfs, ...), from /proc/mounts."""
    target = str(Path(path).resolve())
    best, kind = "", "unknown"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) < 3:
                continue
            mount = fields[1]
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, fields[2]
    except OSError:
        pass
    return kind


def _runs(row: Row, who: str) -> str:
    samples = row.kiln if who == "kiln" else row.peer
    return " ".join(f"{s.seconds:.3f}" for s in samples)


def _has_engine(result: Result) -> bool:
    return any(row.kiln_engine for row in result.rows)


def text_table(result: Result) -> str:
    """A fixed-width table for the terminal."""
    peer = result.peer
    engine = _has_engine(result)
    head = f"{'case':<6} {'kiln s':>8} {peer + ' s':>10} {'kiln/' + peer:>12}"
    head += f" {'engine s':>9}" if engine else ""
    head += f"   all runs (kiln | {peer})"
    lines = [f"{result.title} — best of {result.runs} runs", head, "-" * len(head)]
    for row in result.rows:
        line = (
            f"{row.case:<6} {row.kiln_best.seconds:>8.3f} {row.peer_best.seconds:>10.3f} {row.ratio:>11.2f}x"
        )
        if engine:
            best = row.kiln_engine_best
            line += f" {best:>9.3f}" if best is not None else f" {'-':>9}"
        lines.append(f"{line}   {_runs(row, 'kiln')} | {_runs(row, 'peer')}")
    return "\n".join(lines)


def markdown_table(result: Result) -> str:
    peer = result.peer
    engine = _has_engine(result)
    head = f"| case | what | kiln (s) | {peer} (s) | kiln / {peer} | kiln CPU (s) | {peer} CPU (s) |"
    rule = "|---|---|---:|---:|---:|---:|---:|"
    if engine:
        head += " kiln engine (s) |"
        rule += "---:|"
    lines = [head, rule]
    for row in result.rows:
        line = (
            f"| {row.case} | {row.description} | {row.kiln_best.seconds:.2f} | {row.peer_best.seconds:.2f} "
            f"| **{row.ratio:.2f}x** | {row.kiln_best.cpu_seconds:.2f} | {row.peer_best.cpu_seconds:.2f} |"
        )
        if engine:
            best = row.kiln_engine_best
            line += f" {best:.2f} |" if best is not None else " - |"
        lines.append(line)
    return "\n".join(lines)


def write_csv(result: Result, path: Path, when: datetime) -> None:
    """One line per case: best times, ratio, CPU seconds of the best runs, and every run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "date",
                "benchmark",
                "case",
                "peer",
                "runs",
                "kiln_best_s",
                "peer_best_s",
                "ratio_kiln_over_peer",
                "kiln_cpu_s",
                "peer_cpu_s",
                "kiln_median_s",
                "peer_median_s",
                "kiln_runs_s",
                "peer_runs_s",
                "kiln_engine_best_s",
                "kiln_engine_runs_s",
            ]
        )
        for row in result.rows:
            w.writerow(
                [
                    when.isoformat(timespec="seconds"),
                    result.name,
                    row.case,
                    result.peer,
                    result.runs,
                    f"{row.kiln_best.seconds:.4f}",
                    f"{row.peer_best.seconds:.4f}",
                    f"{row.ratio:.4f}",
                    f"{row.kiln_best.cpu_seconds:.3f}",
                    f"{row.peer_best.cpu_seconds:.3f}",
                    f"{median(s.seconds for s in row.kiln):.4f}",
                    f"{median(s.seconds for s in row.peer):.4f}",
                    _runs(row, "kiln"),
                    _runs(row, "peer"),
                    f"{row.kiln_engine_best:.4f}" if row.kiln_engine_best is not None else "",
                    " ".join(f"{t:.3f}" for t in row.kiln_engine),
                ]
            )
    os.replace(tmp, path)


def write_chart(result: Result, path: Path, when: datetime) -> None:
    """Grouped bars (kiln vs the peer, best run) per case, the ratio written above each pair; kiln's
    in-process engine time, when measured, as a narrow bar inside kiln's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [row.case for row in result.rows]
    kiln = [row.kiln_best.seconds for row in result.rows]
    peer = [row.peer_best.seconds for row in result.rows]
    engine = [row.kiln_engine_best or 0.0 for row in result.rows]
    xs = range(len(cases))
    width = 0.38
    fig, ax = plt.subplots(figsize=(max(5.0, 1.8 * len(cases) + 1.5), 4.0), dpi=100)
    ax.bar([x - width / 2 for x in xs], kiln, width, label="kiln (CLI)", color="#c0504d")
    if _has_engine(result):
        # Drawn over kiln's bar: the part of kiln's time spent moving the image.
        ax.bar(
            [x - width / 2 for x in xs],
            engine,
            width * 0.5,
            label="kiln engine (in-process)",
            color="#f2b8b6",
            edgecolor="#c0504d",
            hatch="//",
        )
    ax.bar([x + width / 2 for x in xs], peer, width, label=result.peer, color="#4f81bd")
    top = max([*kiln, *peer, 0.001])
    for x, row in zip(xs, result.rows, strict=True):
        ax.text(
            x,
            max(row.kiln_best.seconds, row.peer_best.seconds) + top * 0.03,
            f"{row.ratio:.2f}x",
            ha="center",
            va="bottom",
            fontsize=9,
        )
    ax.set_xticks(list(xs), cases)
    ax.set_ylabel("seconds (best run)")
    ax.set_ylim(0, top * 1.2)
    ax.set_title(
        f"{result.title}: kiln vs {result.peer} ({when:%Y-%m-%d}, best of {result.runs})", fontsize=10
    )
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8, frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def section(result: Result, when: datetime, machine: Facts, chart: str | None) -> str:
    """The markdown of one benchmark's section, markers included."""
    facts = ", ".join(f"{k} {v}" for k, v in machine.items())
    tools = ", ".join(f"{k} {v}" for k, v in result.facts.items())
    lines = [
        f"<!-- bench:{result.name}:begin (generated by bench/run.py; edits here are overwritten) -->",
        f"## {result.title}",
        "",
        f"Measured {when:%Y-%m-%d %H:%M} UTC, best of {result.runs} runs each. Machine: {facts}."
        + (f" Tools: {tools}." if tools else ""),
        "",
        *(f"- {note}" for note in result.notes),
        "",
        markdown_table(result),
        "",
    ]
    if chart:
        lines += [f"![{result.title}]({chart})", ""]
    lines.append(f"<!-- bench:{result.name}:end -->")
    return "\n".join(lines)


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"<!-- bench:{re.escape(name)}:begin.*?<!-- bench:{re.escape(name)}:end -->", re.S)


def update_doc(path: Path, name: str, text: str, *, intro: str = "# Performance\n") -> None:
    """Replace benchmark ``name``'s section of ``path`` with ``text`` (append it if absent), atomically."""
    old = path.read_text() if path.exists() else intro
    pattern = _pattern(name)
    if pattern.search(old):
        new = pattern.sub(lambda _m: text, old, count=1)
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(new)
    os.chmod(tmp, mode)  # mkstemp makes 0600; keep the document readable as it was
    os.replace(tmp, path)


def now() -> datetime:
    return datetime.now(UTC)
