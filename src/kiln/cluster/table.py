"""`kiln get builds`: the table `oc get builds` prints."""

from __future__ import annotations

from datetime import datetime

from kiln.cluster.models import Build
from kiln.cluster.result import parse_time


def human_duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60}s" if s < 600 else f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60}m"
    return f"{s // 86400}d"


def builds_table(builds: list[Build], *, now: datetime, namespaces: bool = False) -> str:
    header = ["NAME", "TYPE", "FROM", "STATUS", "STARTED", "DURATION"]
    if namespaces:
        header.insert(0, "NAMESPACE")
    rows = [header]
    for b in sorted(builds, key=lambda b: (b.namespace, b.config_name or "", b.number, b.name)):
        st = b.status
        source = b.spec.source
        frm = "Git" if source.git else "Binary" if source.binary else "Dockerfile" if source.dockerfile else ""
        if source.git and source.git.ref:
            frm += f"@{source.git.ref[:7]}"
        status = st.phase.value + (f" ({st.reason})" if st.reason and st.phase.value != st.reason else "")
        started = human_duration((now - parse_time(st.start_timestamp)).total_seconds()) + " ago" if st.start_timestamp else ""
        duration = human_duration(st.duration / 1e9) if st.duration is not None else ""
        row = [b.name, b.spec.strategy.type.value, frm, status, started, duration]
        if namespaces:
            row.insert(0, b.namespace)
        rows.append(row)
    if len(rows) == 1:
        return "No builds found."
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
