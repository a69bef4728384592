"""What the build benchmark reports beyond bench/report.py's kiln-vs-one-peer table: every builder
side by side (markdown, CSV, PNG), the memory runs, and the issue's goals met or missed."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from bench.build_rss import MemorySample
from bench.harness import Row, Sample

#: kiln / buildah, best runs: what the issue asks for.
GOALS = {"cold": 0.7, "unchanged": 0.25, "changed": 0.7, "push": 1.0}
RSS_GOAL_MIB = 256
MIB = 1 << 20
KANIKO_NOTE = (
    "kaniko is not in the table: the Go module proxy refuses its module here "
    '(github.com/GoogleContainerTools/kaniko and the forks tried: 403 "not available"), so it cannot be '
    "built; it would also have to run inside its own root filesystem (`kiln run` of a kaniko image), "
    "since it writes to `/`."
)

Times = dict[str, dict[str, tuple[Sample, ...]]]


def best(samples: tuple[Sample, ...]) -> Sample:
    return min(samples, key=lambda s: s.seconds)


def _tools(times: Times) -> list[str]:
    names: list[str] = []
    for by_tool in times.values():
        names += [n for n in by_tool if n not in names]
    return names


def peers_markdown(times: Times, *, indent: str = "") -> str:
    tools = _tools(times)
    others = [t for t in tools if t != "kiln"]
    head = (
        "| case | "
        + " | ".join(f"{t} (s)" for t in tools)
        + " | "
        + " | ".join(f"kiln / {t}" for t in others)
        + " |"
    )
    lines = [head, "|---|" + "---:|" * (len(tools) + len(others))]
    for case, by_tool in times.items():
        kiln = best(by_tool["kiln"]).seconds
        cells = [f"{best(by_tool[t]).seconds:.2f}" if t in by_tool else "-" for t in tools]
        ratios = [f"{kiln / best(by_tool[t]).seconds:.2f}x" if t in by_tool else "-" for t in others]
        lines.append(f"| {case} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    return "\n".join(indent + line for line in lines)


def write_peers_csv(path: Path, times: Times) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case", "tool", "best_s", "best_cpu_s", "kiln_over_tool", "runs_s"])
        for case, by_tool in times.items():
            kiln = best(by_tool["kiln"]).seconds
            for tool, samples in by_tool.items():
                b = best(samples)
                w.writerow(
                    [
                        case,
                        tool,
                        f"{b.seconds:.4f}",
                        f"{b.cpu_seconds:.3f}",
                        f"{kiln / b.seconds:.4f}",
                        " ".join(f"{s.seconds:.3f}" for s in samples),
                    ]
                )
    os.replace(tmp, path)


def write_peers_chart(path: Path, times: Times, runs: int) -> None:
    """Grouped bars, one group per case, one bar per builder (best run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tools = _tools(times)
    cases = list(times)
    width = 0.8 / len(tools)
    colors = {"kiln": "#c0504d", "buildah": "#4f81bd", "buildkit": "#9bbb59"}
    fig, ax = plt.subplots(figsize=(max(5.0, 1.9 * len(cases) + 1.5), 3.8), dpi=100)
    for i, tool in enumerate(tools):
        xs = [c + (i - (len(tools) - 1) / 2) * width for c in range(len(cases))]
        ys = [best(times[case][tool]).seconds if tool in times[case] else 0.0 for case in cases]
        ax.bar(xs, ys, width, label=tool, color=colors.get(tool, "#8064a2"))
    ax.set_xticks(list(range(len(cases))), cases)
    ax.set_ylabel("seconds (best run)")
    ax.set_title(f"Build benchmark: every builder, best of {runs}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def memory_lines(memory: dict[str, list[MemorySample]]) -> list[str]:
    lines = []
    for name, samples in memory.items():
        tree = max(s.tree_peak for s in samples) / MIB
        proc = max(s.process_peak for s in samples) / MIB
        lines.append(
            f"1gib peak memory, {name}: {tree:.0f} MiB RSS summed over the process tree, "
            f"{proc:.0f} MiB for its largest process (worst of {len(samples)} runs)"
        )
    return lines


def goal_lines(rows: tuple[Row, ...], memory: dict[str, list[MemorySample]]) -> list[str]:
    out = []
    for row in rows:
        goal = GOALS.get(row.case)
        if goal is not None:
            verdict = "met" if row.ratio <= goal else "MISSED"
            out.append(f"{row.case} {row.ratio:.2f}x (goal ≤ {goal}) {verdict}")
    kiln = memory.get("kiln")
    if kiln:
        tree = max(s.tree_peak for s in kiln) / MIB
        verdict = "met" if tree <= RSS_GOAL_MIB else "MISSED"
        out.append(f"1 GiB layer peak RSS {tree:.0f} MiB (goal ≤ {RSS_GOAL_MIB} MiB) {verdict}")
    return out


def write_memory_csv(path: Path, memory: dict[str, list[MemorySample]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["tool", "run", "seconds", "cpu_s", "tree_peak_rss_mib", "largest_process_rss_mib", "processes"]
        )
        for name, samples in memory.items():
            for i, s in enumerate(samples, 1):
                w.writerow(
                    [
                        name,
                        i,
                        f"{s.sample.seconds:.3f}",
                        f"{s.sample.cpu_seconds:.2f}",
                        f"{s.tree_peak / MIB:.1f}",
                        f"{s.process_peak / MIB:.1f}",
                        s.processes,
                    ]
                )
    os.replace(tmp, path)
