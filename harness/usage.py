"""What a process uses, from /proc: CPU seconds (its own or its tree's) and RSS.

Called by the benchmarks (scripts/bench_*.py, through benchenv too) and their
tests: on a shared box, CPU per request is steadier than wall-clock throughput.
Linux only; a process that exits meanwhile raises OSError (`tree_cpu_seconds`
skips it).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def rss_mb(pid: int) -> float:
    """Resident memory of the process in MiB (NaN if /proc does not say)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (all its threads): on a
    shared box, CPU per request is steadier than wall-clock throughput."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()      # the name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """`cpu_seconds` of a process and all its descendants (a supervisor's workers):
    processes that exited in between are not counted."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += cpu_seconds(p)
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    return total
