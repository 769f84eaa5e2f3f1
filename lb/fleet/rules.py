"""The declared list: how each figure of `/stats` and `/metrics` adds up across processes.

Read by `lb.fleet.merge` (`STATS`) and `lb.fleet.prom` (the metric sets below).
This is the one place to edit when a figure is added to `/stats` or `/metrics`:

* a count that only grows (requests, errors, hedges sent): `COUNTER` in `/stats`;
  a Prometheus counter or histogram needs nothing, every one is summed;
* a level where the sum is the proxy's (in flight, queue length, bytes): `SUM`
  in `/stats`, and its name in `GAUGE_SUM` for `/metrics`;
* a setting or a state every process should share (weight, policy, enabled):
  `SAME` in `/stats`, `GAUGE_MAX` for `/metrics`;
* anything else (τ, a learned limit of one process): `MEAN`/`MAX`/... in
  `/stats`; in `/metrics` an undeclared gauge is reported per process, with a
  `pid` label, which is never wrong;
* a rate or an average: a derived rule (`Ratio`, `WMean`, `Share`), computed from
  the summed counts, never an average of averages.

`tests/lb/test_fleet_merge.py` fails for a key of a real `/stats` document that no
rule covers, so a new figure cannot be summed (or not) by accident.
"""

from __future__ import annotations

from typing import Any

from lb.fleet.merge import (
    ANY,
    COUNTER,
    KEY,
    MAX,
    MEAN,
    MEAN_POSITIVE,
    MIN,
    NUMBERS,
    SAME,
    SUM,
    ByName,
    Each,
    Fields,
    Ratio,
    Share,
    WMean,
)

NODE = Fields({
    "name": KEY, "weight": SAME, "healthy": ANY, "inflight": SUM, "requests": COUNTER,
    "errors": COUNTER, "ewma_ms": MEAN_POSITIVE, "load": SUM,
    "share": Share("window_requests"), "window_requests": SUM, "state": SAME,
    "effective_weight": MEAN, "ejections": COUNTER,
    # lb.request.scheduler: each process learns its own limit on the node; together they are
    # the proxy's slots on it. The group is the config's (lb.rollout).
    "limit": SUM, "limit_state": SAME, "group": SAME,
})

# cache/result_cache.py `_Counts.as_dict`, plus the adaptive state of by_model entries.
CACHE_COUNTS = {
    "hits": COUNTER, "misses": COUNTER, "hit_rate": Ratio("hits", ("hits", "misses")),
    "bypasses": COUNTER, "adaptive_bypasses": COUNTER, "coalesced": COUNTER,
    "partial": COUNTER, "rows_hit": COUNTER, "rows_missed": COUNTER, "stores": COUNTER,
    "too_large": COUNTER, "errors": COUNTER, "lookup_ms_avg": WMean(("hits", "misses")),
}
ADAPTIVE = {
    "state": SAME, "since": MAX, "pinned": ANY, "window_hit_rate": MEAN,
    "window_estimated": ANY, "samples": COUNTER, "probe_backoff": MAX,
}

MRC = {"mrc": Each(MEAN), "mrc_simulated": Each(MEAN),
       "mrc_sampling": Fields({"rate": MEAN, "policy": SAME, "method": SAME}, NUMBERS)}

CACHE = Fields({
    "backend": SAME, **CACHE_COUNTS,
    "by_model": Each(Fields({**CACHE_COUNTS, **ADAPTIVE})),
    # Each process has its own memory tier: its figures add up; curves are averaged;
    # the policy a curve models is the config's (cache.mrc `sampling`).
    "store": Fields({**MRC, "memory": Fields({**MRC, "sketch_width": SAME}, NUMBERS),
                     "sketch_width": SAME}, NUMBERS),
    **MRC,
    "signatures": Fields({"known": MAX, "fetches": COUNTER, "failures": COUNTER}),
    "key_modes": Each(SAME),
    "coalescing": Fields({"inflight": SUM, "leaders": COUNTER, "joined": COUNTER}),
})

BATCH = Fields({
    "batches": COUNTER, "rows": COUNTER, "members": COUNTER,
    "rows_per_batch": Ratio("rows", ("batches",), 3), "wait_ms_avg": WMean(("members",)),
    "resends": COUNTER, "rows_histogram": Each(COUNTER),
})

POOL = Fields({"open": SUM, "idle": SUM, "busy": SUM, "connecting": SUM, "waiting": SUM,
               "created": COUNTER, "reused": COUNTER, "failed": COUNTER})

DISCOVERY = Fields({
    "name": SAME, "nameserver": SAME, "last_ok": MAX, "last_error": SAME,
    "consecutive_failures": MAX, "resolutions": COUNTER, "failures": COUNTER,
    "changes": COUNTER, "addresses": SAME, "ttl": MIN,
})

# The config as each process runs it; under a supervisor, `lb.fleet.view` replaces
# it with the supervisor's own record of reloads (one per reload, not one per process).
CONFIG = Fields({
    "path": SAME, "reloads": MAX, "failures": MAX, "last_error": SAME, "last_result": SAME,
    "loaded_at": MAX, "version": SAME,
})

# lb.edge.gate `stats`: TLS and keys are the config's; each process counts its own
# checks (and, without Redis, spends its own rate-limit budgets).
SECURITY = Fields({
    "tls": Fields({"enabled": SAME, "rotations": MAX, "failures": MAX, "last_error": SAME,
                   "loaded_at": MAX, "not_after": MIN, "client_certs": SAME}),
    "auth": Fields({
        "enabled": SAME, "keys": SAME, "hashed": COUNTER, "open": SAME,
        "unauthenticated": Each(COUNTER), "keys_file": SAME, "keys_file_error": SAME,
        "by_key": Each(Fields({"allowed": COUNTER, "forbidden": COUNTER,
                               "limited": COUNTER, "models": SAME, "limits": SAME}))}),
    "rate_limit": Fields({"shared": SAME, "state": SAME, "round_trips": COUNTER,
                          "checks": COUNTER, "local_decisions": COUNTER,
                          "errors": COUNTER, "last_error": SAME}),
})

STATS = Fields({
    "nodes": ByName(NODE),
    "cache": CACHE,
    "policy": SAME, "pid": SAME, "data_path": SAME,
    "config": CONFIG,
    "retries": Fields({"retries": COUNTER, "budget_rejections": COUNTER}),
    "hedge": Fields({"enabled": SAME, "rescue": SAME, "sent": COUNTER, "won": COUNTER,
                     "rescues": COUNTER, "no_better": COUNTER, "budget_rejections": COUNTER,
                     "budget_available": SUM, "max_ratio": SAME}),
    # lb.request.scheduler: the proxy's queue in each process; what waits adds up.
    "queue": Fields({"started": COUNTER, "queued": COUNTER, "refused": COUNTER,
                     "shed": COUNTER, "timeouts": COUNTER, "deadline": COUNTER,
                     "probes": COUNTER, "waiting": Each(SUM), "standing": SAME}),
    "waits": Fields({"waits": COUNTER, "seconds": COUNTER, "max_s": MAX, "timeouts": COUNTER}),
    "inflight": SUM, "shed": COUNTER,
    "batching": Each(BATCH),
    "upstream": Fields({"rest": Each(POOL), "grpc_channels": SUM}),
    "discovery": DISCOVERY,
    # lb.rollout: each process routes (and runs its rollouts) on its own.
    "routing": SAME,
    "security": SECURITY,
    # Added by lb.admin.app.stats_doc for this issue: client requests, memory, the process.
    "requests": Fields({"total": COUNTER, "errors": COUNTER, "by_code": Each(COUNTER)}),
    "memory": Fields({"rss_bytes": SUM, "cache_bytes": SUM, "cache_budget_bytes": SUM,
                      "cache_entries": SUM}),
    "process": Fields({"cpu_seconds": COUNTER, "open_fds": SUM, "started_at": MIN}),
})

# -- /metrics ---------------------------------------------------------------------------
# Counters and histograms are summed (with the counts of replaced processes carried
# over). Gauges are reported per process (label `pid`) unless listed here.

GAUGE_SUM = frozenset({
    "tfslb_node_inflight", "tfslb_node_inflight_units", "tfslb_node_load", "tfslb_inflight",
    "tfslb_hedge_budget_available", "tfslb_cache_bytes", "tfslb_cache_budget_bytes",
    "tfslb_cache_entries", "tfslb_resident_memory_bytes", "tfslb_open_fds",
})
GAUGE_MAX = frozenset({
    "tfslb_node_weight", "tfslb_cache_info", "tfslb_config_loaded_timestamp_seconds",
    "tfslb_discovery_nodes", "tfslb_discovery_consecutive_failures",
    "tfslb_discovery_last_success_timestamp_seconds",
})
GAUGE_MIN = frozenset({"tfslb_config_last_reload_ok"})
# Derived from the summed counters of the same labels: name -> (numerator, denominators).
GAUGE_RATIO = {
    "tfslb_cache_hit_ratio": ("tfslb_cache_hits_total",
                              ("tfslb_cache_hits_total", "tfslb_cache_misses_total")),
}
# prometheus_client's process and GC collectors: every family per process, even the
# counters (a process's CPU seconds are its own); the sums below are the proxy's.
PER_PROCESS_PREFIXES = ("process_", "python_")
# Totals over the processes, made from each process's own series: name -> (source, type).
TOTALS = {
    "tfslb_resident_memory_bytes": ("process_resident_memory_bytes", "gauge",
                                    "Resident memory of all the proxy's processes"),
    "tfslb_open_fds": ("process_open_fds", "gauge",
                       "Open file descriptors of all the proxy's processes"),
    "tfslb_cpu_seconds": ("process_cpu_seconds_total", "counter",
                          "CPU seconds of all the proxy's processes, replaced ones included"),
}

# -- /stats "processes" -------------------------------------------------------------
# Each process's own figures, beside the merged ones: top-level keys kept whole, and
# the listed fields of sections and of each node.
OWN_WHOLE = ("pid", "data_path", "inflight", "shed", "requests", "memory", "process")
OWN_FIELDS = {"config": ("version", "reloads", "failures", "last_result", "loaded_at"),
              "cache": ("hits", "misses", "hit_rate"),
              "hedge": ("sent", "won", "budget_available")}
OWN_NODE = ("name", "inflight", "requests", "errors", "ewma_ms", "load", "state",
            "effective_weight")


def own_figures(doc: dict[str, Any], worker: int, state: str) -> dict[str, Any]:
    """One process's entry of /stats "processes" from its own /stats document."""
    out: dict[str, Any] = {"worker": worker, "state": state}
    out.update({k: doc[k] for k in OWN_WHOLE if k in doc})
    for section, keys in OWN_FIELDS.items():
        part = doc.get(section) or {}
        out[section] = {k: part.get(k) for k in keys}
    out["nodes"] = [{k: n.get(k) for k in OWN_NODE} for n in doc.get("nodes", ())]
    return out
