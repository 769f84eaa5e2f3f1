"""A process's own figures for `/stats`: resident memory, CPU seconds, open descriptors.

Called by `lb.admin.app.stats_doc` (each proxy process, about once a second and at
every read of /stats) and by `lb.fleet.view` for the supervisor itself. The
figures are the ones prometheus_client's `ProcessCollector` exposes on /metrics
(`process_resident_memory_bytes`, `process_cpu_seconds_total`,
`process_open_fds`), read the same way, so the two endpoints agree. Linux
(/proc) only: elsewhere every figure is 0. Never raises.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import ProcessCollector

_SOURCES = {"process_resident_memory_bytes": "rss_bytes",
            "process_cpu_seconds_total": "cpu_seconds", "process_open_fds": "open_fds",
            "process_start_time_seconds": "started_at"}


def figures(pid: int | str = "self") -> dict[str, Any]:
    """{"rss_bytes", "cpu_seconds", "open_fds", "started_at"} of `pid` (default: this one)."""
    out: dict[str, Any] = {"rss_bytes": 0, "cpu_seconds": 0.0, "open_fds": 0, "started_at": 0.0}
    collector = ProcessCollector(pid=lambda: str(pid), registry=None)
    try:
        for family in collector.collect():
            for s in family.samples:
                key = _SOURCES.get(s.name)
                if key == "cpu_seconds" or key == "started_at":
                    out[key] = round(s.value, 3)
                elif key is not None:
                    out[key] = int(s.value)
    except Exception:          # a process that just exited, or no /proc
        pass
    return out


def cache_memory(store: dict[str, Any] | None) -> dict[str, int]:
    """The in-process tier's bytes, budget and entries from a cache's store stats
    (memory: the store itself; tiered: its "memory" part; redis or none: 0)."""
    tier = (store or {}).get("memory", store) or {}
    if "max_bytes" not in tier:
        return {"cache_bytes": 0, "cache_budget_bytes": 0, "cache_entries": 0}
    return {"cache_bytes": int(tier.get("bytes", 0)),
            "cache_budget_bytes": int(tier.get("max_bytes", 0)),
            "cache_entries": int(tier.get("entries", 0))}
