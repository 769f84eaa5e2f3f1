"""lb.fleet: /stats and /metrics of several processes merged by the declared rules (in-process)."""

from __future__ import annotations

import asyncio
import copy
import random
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from lb.admin.app import LocalView, stats_doc
from lb.admin.history import RESERVOIR, Second, merge_seconds
from lb.config import parse_config
from lb.fleet.merge import COUNTER, ByName, Each, Fields, add_counters, counters, merge
from lb.fleet.prom import MetricMerger, families_of, render
from lb.fleet.rules import STATS, own_figures
from lb.pool.discovery import DnsDiscovery
from lb.request.batching import BatchStats
from lb.server import Proxy

NODES = [{"name": "a", "rest": "http://127.0.0.1:1"}, {"name": "b", "rest": "http://127.0.0.1:2"}]


def _proxy(**sections: Any) -> Proxy:
    return Proxy(parse_config({"nodes": NODES, **sections}), "lb.yaml")


def _full_doc(backend: str) -> dict[str, Any]:
    """A real /stats document with every optional section filled in."""
    async def build() -> dict[str, Any]:
        proxy = _proxy(cache={"backend": backend},
                       discovery={"dns": "tf.example", "nameserver": "127.0.0.1"},
                       auth={"keys": [{"id": "svc", "sha256": "0" * 64,
                                       "limits": {"requests_per_s": 5}}]},
                       rate_limit={"shared": "redis", "redis_url": "redis://127.0.0.1:1/0"})
        proxy.discovery = DnsDiscovery(proxy.cfg.discovery, proxy.set_discovered)  # type: ignore[arg-type]
        batch = proxy.dispatcher.batches.stats["m"] = BatchStats()
        batch.batches, batch.rows, batch.members, batch.wait_s = 2, 10, 4, 0.01
        proxy.rest_upstream.client(next(iter(proxy.pool)))
        proxy.recorder.record("m", "a", 200, 0.01)
        if proxy.cache is not None:
            proxy.cache.adaptive.decide("m")        # type: ignore[union-attr]
        proxy.keys.key_modes["m"] = "typed"
        doc = stats_doc(proxy)
        await proxy.rest_upstream.close()
        return doc
    return asyncio.run(build())


def _leaves(tree: Any, doc: Any, path: str = "") -> Iterator[tuple[str, bool]]:
    """(path, declared) for every leaf of `doc`; under a subtree default, declared."""
    if isinstance(tree, Fields) and isinstance(doc, dict):
        for key, value in doc.items():
            declared = key in tree.rules or tree.default is not None
            rule = tree.rule(key, value)
            if isinstance(rule, Fields | Each | ByName):
                yield from _leaves(rule, value, f"{path}.{key}")
            else:
                yield f"{path}.{key}", declared
    elif isinstance(tree, Each) and isinstance(doc, dict):
        for key, value in doc.items():
            if isinstance(tree.rule, Fields | Each | ByName):
                yield from _leaves(tree.rule, value, f"{path}.{key}")
            else:
                yield f"{path}.{key}", True
    elif isinstance(tree, ByName) and isinstance(doc, list):
        for entry in doc:
            yield from _leaves(tree.fields, entry, f"{path}[{entry[tree.key]}]")


@pytest.mark.parametrize("backend", ["memory", "tiered", "none"])
def test_every_stats_figure_has_a_declared_rule(backend: str) -> None:
    doc = _full_doc(backend)
    assert doc["batching"] and doc["upstream"]["rest"] and doc["discovery"]
    undeclared = [path for path, declared in _leaves(STATS, doc) if not declared]
    assert undeclared == [], f"declare these in lb/fleet/rules.py STATS: {undeclared}"


def test_one_document_merges_into_itself() -> None:
    doc = _full_doc("memory")
    assert merge(STATS, [doc]) == doc


def _two() -> tuple[dict[str, Any], dict[str, Any]]:
    a = {"nodes": [{"name": "x", "weight": 2.0, "inflight": 3, "requests": 100, "ewma_ms": 4.0,
                    "healthy": True, "state": "healthy", "window_requests": 30, "share": 1.0}],
         "cache": {"backend": "memory", "hits": 30, "misses": 10, "hit_rate": 0.75,
                   "lookup_ms_avg": 1.0,
                   "by_model": {"m": {"hits": 30, "misses": 10, "hit_rate": 0.75}}},
         "batching": {"m": {"batches": 2, "rows": 10, "members": 4, "wait_ms_avg": 1.0,
                            "rows_per_batch": 5.0}},
         "waits": {"max_s": 0.5}, "policy": "least_load", "inflight": 3}
    b = {"nodes": [{"name": "x", "weight": 2.0, "inflight": 1, "requests": 50, "ewma_ms": 0.0,
                    "healthy": False, "state": "unhealthy", "window_requests": 10, "share": 0.5},
                   {"name": "y", "weight": 1.0, "inflight": 0, "requests": 7, "ewma_ms": 2.0,
                    "healthy": True, "state": "healthy", "window_requests": 10, "share": 0.5}],
         "cache": {"backend": "memory", "hits": 10, "misses": 30, "hit_rate": 0.25,
                   "lookup_ms_avg": 3.0,
                   "by_model": {"m": {"hits": 10, "misses": 30, "hit_rate": 0.25}}},
         "batching": {"m": {"batches": 8, "rows": 10, "members": 12, "wait_ms_avg": 2.0,
                            "rows_per_batch": 1.25}},
         "waits": {"max_s": 0.2}, "policy": "least_load", "inflight": 1}
    return a, b


def test_counters_sum_gauges_sum_settings_agree_rates_are_recomputed() -> None:
    out = merge(STATS, list(_two()))
    x, y = out["nodes"]
    assert (x["name"], x["requests"], x["inflight"], x["weight"]) == ("x", 150, 4, 2.0)
    assert x["ewma_ms"] == 4.0                    # the τ of processes that have one
    assert x["healthy"] is True                   # some process finds it serving
    assert (x["share"], y["share"]) == (0.8, 0.2)  # 40 of 50 requests in the window
    assert y["requests"] == 7 and out["inflight"] == 4 and out["policy"] == "least_load"
    cache = out["cache"]
    assert (cache["hits"], cache["misses"], cache["hit_rate"]) == (40, 40, 0.5)
    assert cache["lookup_ms_avg"] == 2.0          # weighted by lookups (40 each)
    assert cache["by_model"]["m"]["hit_rate"] == 0.5
    batch = out["batching"]["m"]
    assert batch["rows_per_batch"] == 2.0         # 20 rows / 10 batches, not (5+1.25)/2
    assert batch["wait_ms_avg"] == 1.75           # weighted by members: (4*1 + 12*2) / 16
    assert out["waits"]["max_s"] == 0.5


def test_a_replaced_process_leaves_its_counts_behind() -> None:
    a, b = _two()
    before = merge(STATS, [a, b])
    carried = counters(STATS, b)
    assert carried is not None and "inflight" not in carried     # only counters carry over
    after = merge(STATS, [a], carried)
    assert after["nodes"][0]["requests"] == before["nodes"][0]["requests"] == 150
    assert after["cache"]["hits"] == 40 and after["inflight"] == 3
    assert [n["name"] for n in after["nodes"]] == ["x"]          # entries come from the living
    twice = add_counters(carried, copy.deepcopy(carried))
    assert merge(STATS, [a], twice)["nodes"][0]["requests"] == 200


def test_own_figures_of_a_process() -> None:
    doc = _full_doc("memory")
    own = own_figures(doc, 3, "up")
    assert own["worker"] == 3 and own["pid"] == doc["pid"] and own["state"] == "up"
    assert own["requests"]["total"] == 1 and own["memory"]["rss_bytes"] > 0
    assert own["config"]["version"] == doc["config"]["version"] is not None
    assert [n["name"] for n in own["nodes"]] == ["a", "b"]


def test_a_counter_rule_never_loses_the_carried_value() -> None:
    assert COUNTER.merge([], 5, []) == 5 and COUNTER.merge([1, 2], None, [{}, {}]) == 3


# --- /metrics --------------------------------------------------------------------------

def _families(requests: dict[str, float], inflight: float, tau: float,
              hits: float = 0.0, misses: float = 0.0,
              latency: tuple[float, float] = (0.0, 0.0)) -> list[Any]:
    req = CounterMetricFamily("tfslb_requests", "r", labels=["node"])
    for node, n in requests.items():
        req.add_metric([node], n)
    infl = GaugeMetricFamily("tfslb_inflight", "i")
    infl.add_metric([], inflight)
    ewma = GaugeMetricFamily("tfslb_node_ewma_seconds", "t", labels=["node"])
    ewma.add_metric(["a"], tau)
    h = CounterMetricFamily("tfslb_cache_hits", "h", labels=["model"])
    h.add_metric(["m"], hits)
    m = CounterMetricFamily("tfslb_cache_misses", "m", labels=["model"])
    m.add_metric(["m"], misses)
    ratio = GaugeMetricFamily("tfslb_cache_hit_ratio", "x", labels=["model"])
    ratio.add_metric(["m"], 0.123)
    lat = HistogramMetricFamily("tfslb_request_duration_seconds", "d")
    lat.add_metric([], [("0.1", latency[0]), ("+Inf", latency[0] + latency[1])], 1.0)
    cpu = CounterMetricFamily("process_cpu_seconds", "c", value=1.5)
    rss = GaugeMetricFamily("process_resident_memory_bytes", "r", value=1000.0)

    class C:
        def collect(self) -> list[Any]:
            return [req, infl, ewma, h, m, ratio, lat, cpu, rss]
    return families_of([C()])


def _parse(merged: list[Any]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(render(merged).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_of_two_processes() -> None:
    merger = MetricMerger()
    got = _parse(merger.merge({
        11: _families({"a": 10, "b": 5}, 2, 0.01, hits=3, misses=1, latency=(4, 1)),
        22: _families({"a": 1}, 1, 0.03, hits=1, misses=3, latency=(1, 0))}))
    assert got[("tfslb_requests_total", (("node", "a"),))] == 11
    assert got[("tfslb_requests_total", (("node", "b"),))] == 5
    assert got[("tfslb_inflight", ())] == 3                              # declared SUM
    assert got[("tfslb_node_ewma_seconds", (("node", "a"), ("pid", "11")))] == 0.01
    assert got[("tfslb_node_ewma_seconds", (("node", "a"), ("pid", "22")))] == 0.03
    assert got[("tfslb_cache_hit_ratio", (("model", "m"),))] == 0.5       # 4 / 8, derived
    assert got[("tfslb_request_duration_seconds_bucket", (("le", "0.1"),))] == 5
    assert got[("tfslb_request_duration_seconds_count", ())] == 6
    assert got[("process_cpu_seconds_total", (("pid", "11"),))] == 1.5    # per process ...
    assert got[("tfslb_cpu_seconds_total", ())] == 3.0                    # ... and the sum
    assert got[("tfslb_resident_memory_bytes", ())] == 2000.0


def test_counters_never_go_backwards_whatever_the_processes_do() -> None:
    rng = random.Random(7)
    merger = MetricMerger()
    counts = {1: 0.0, 2: 0.0}
    next_pid, last = 3, 0.0
    for _ in range(300):
        for pid in counts:
            counts[pid] += rng.randint(0, 5)
        event = rng.random()
        if event < 0.05:                     # a process replaced (SIGKILL: no final report)
            gone = rng.choice(list(counts))
            merger.retire(gone)
            del counts[gone]
            counts[next_pid], next_pid = 0.0, next_pid + 1
        elif event < 0.1:                    # a series restarts inside a process
            counts[rng.choice(list(counts))] = 0.0
        sources = {pid: _families({"a": n}, 0, 0.0) for pid, n in counts.items()
                   if rng.random() > 0.1}    # sometimes a process does not answer
        total = _parse(merger.merge(sources))[("tfslb_requests_total", (("node", "a"),))]
        assert total >= last
        last = total


# --- history ---------------------------------------------------------------------------

def _second(values: list[float], errors: int = 0) -> Second:
    acc = Second()
    acc.count, acc.errors, acc.samples = len(values), errors, list(values)
    return acc


def test_seconds_merge_exactly_while_they_fit() -> None:
    merged = merge_seconds([_second([0.1, 0.2], 1), _second([0.3])])
    assert (merged.count, merged.errors, sorted(merged.samples)) == (3, 1, [0.1, 0.2, 0.3])


def test_full_reservoirs_merge_in_proportion_to_their_counts() -> None:
    big, small = Second(), Second()
    big.count, big.samples = 30_000, [1.0] * RESERVOIR
    small.count, small.samples = 10_000, [2.0] * RESERVOIR
    merged = merge_seconds([big, small])
    assert merged.count == 40_000 and len(merged.samples) == RESERVOIR
    assert merged.samples.count(1.0) == 3 * merged.samples.count(2.0)


# --- one process answers in the same shape ---------------------------------------------

def test_local_view_has_the_processes_section() -> None:
    async def run() -> dict[str, Any]:
        proxy = _proxy()
        view = LocalView(proxy, None)
        doc = await view.stats()
        text = (await view.metrics()).decode()
        assert 'tfslb_workers 1.0' in text and "process_resident_memory_bytes{pid=" in text
        return doc
    doc = asyncio.run(run())
    assert doc["workers"] == 1 and len(doc["processes"]) == 1
    assert doc["processes"][0]["pid"] == doc["pid"]
    assert doc["memory"]["cache_budget_bytes"] == 64 * 2**20
