"""Prometheus metrics (`GET /metrics` on the admin port), prefix `tfslb_`.

Built by the composition root (`lb.server.Proxy`) with one private
`CollectorRegistry` per proxy (never the global one, so several proxies in
one process, as in tests, do not collide). Everything is read at scrape time
from the live objects, so it costs nothing per request beyond what
`lb.request.observe.Recorder` counts:

* `tfslb_requests_total{model,node,code}` and
  `tfslb_request_duration_seconds{model,node}` from the Recorder's counts;
* per-node in-flight, τ (the median seconds per unit; `node_ewma_seconds`, an old
  name kept for dashboards), load (the seed's formula over the window),
  configured and effective weight, health, requests, errors and ejections;
* retries and retry-budget rejections, hedges (sent, won, budget), requests
  that waited for a model to become available, load shed at the in-flight cap;
* cache hits, misses, bypasses and hit ratio by model, the memory tier's bytes
  against its budget; config reloads and failures (`ConfigStatus`, written by
  `lb.reload`);
* node groups, shadows and rollouts (`lb.rollout.metrics`);
* prometheus_client's process and GC collectors (`process_*`, `python_gc_*`).

`families()` hands them to `lb.fleet` (the admin view), which merges the
processes of `serve --workers N` and renders the text; `exposition()` is this
process alone.

Everything here runs on the event loop thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from lb.admin.source import ConfigStatus, ProxySource
from lb.fleet.procinfo import cache_memory
from lb.fleet.prom import Family, families_of
from lb.pool.nodes import Node
from lb.pool.outlier import OutlierPolicy
from lb.request.batching import ROW_BUCKETS
from lb.request.observe import LATENCY_BUCKETS, Recorder
from lb.rollout.metrics import families as rollout_families

PREFIX = "tfslb_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _node_gauges(nodes: list[Node], now: float, opolicy: OutlierPolicy) -> Iterator[Metric]:
    def fam(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(PREFIX + name, doc, labels=["node"])

    inflight = fam("node_inflight", "Requests in flight on the node")
    units = fam("node_inflight_units", "Units (rows x model cost) in flight on the node")
    ewma = fam("node_ewma_seconds", "tau: median seconds per unit of recent replies")
    load = fam("node_load", "Sum of w_j * t_j over the load window divided by the node's "
                            "capacity (its concurrency limit)")
    limit = fam("node_limit", "The node's concurrency limit: seeded by its weight, learned")
    weight = fam("node_weight", "Configured weight")
    effective = fam("node_effective_weight", "Weight the policy uses now (slow start, ejection)")
    healthy = fam("node_healthy", "1 when the health checks find the node serving")
    for n in nodes:
        label = [n.name]
        inflight.add_metric(label, n.inflight)
        units.add_metric(label, n.inflight_units)
        ewma.add_metric(label, n.tau.value or 0.0)
        load.add_metric(label, n.window.work(now) / max(n.limit.value, 1))
        limit.add_metric(label, n.limit.value)
        weight.add_metric(label, n.weight)
        effective.add_metric(label, n.effective_weight(now, opolicy))
        healthy.add_metric(label, 1.0 if n.healthy else 0.0)
    yield from (inflight, units, ewma, load, limit, weight, effective, healthy)


def _node_counters(nodes: list[Node]) -> Iterator[Metric]:
    def fam(name: str, doc: str) -> CounterMetricFamily:
        return CounterMetricFamily(PREFIX + name, doc, labels=["node"])

    requests = fam("node_requests", "Attempts sent to the node that finished")
    errors = fam("node_errors", "Attempts that got no response or a 5xx")
    ejections = fam("node_ejections", "Times outlier detection ejected the node")
    for n in nodes:
        requests.add_metric([n.name], n.requests)
        errors.add_metric([n.name], n.errors)
        ejections.add_metric([n.name], n.outlier.ejections)
    yield from (requests, errors, ejections)


def _cache_metrics(stats: dict[str, Any] | None) -> Iterator[Metric]:
    backend = stats["backend"] if stats else "none"
    info = GaugeMetricFamily(PREFIX + "cache_info", "The cache backend in use",
                             labels=["backend"])
    info.add_metric([backend], 1.0)
    yield info
    hits = CounterMetricFamily(PREFIX + "cache_hits", "Cache lookups that hit",
                               labels=["model"])
    misses = CounterMetricFamily(PREFIX + "cache_misses", "Cache lookups that missed",
                                 labels=["model"])
    ratio = GaugeMetricFamily(PREFIX + "cache_hit_ratio", "hits / (hits + misses) since start",
                              labels=["model"])
    bypasses = CounterMetricFamily(PREFIX + "cache_bypasses",
                                   "Cacheable requests that skipped the cache (Cache-Control)",
                                   labels=["model"])
    for model, c in (stats or {}).get("by_model", {}).items():
        hits.add_metric([model], c["hits"])
        misses.add_metric([model], c["misses"])
        ratio.add_metric([model], c["hit_rate"])
        bypasses.add_metric([model], c["bypasses"])
    errors = CounterMetricFamily(PREFIX + "cache_errors",
                                 "Cache store errors (each one served as a miss)")
    errors.add_metric([], (stats or {}).get("errors", 0))
    yield from (hits, misses, ratio, bypasses, errors)
    tier = cache_memory((stats or {}).get("store"))
    yield _gauge("cache_bytes", "Bytes held by the in-process cache tier", tier["cache_bytes"])
    yield _gauge("cache_budget_bytes", "Byte budget of the in-process cache tier (memory_mb)",
                 tier["cache_budget_bytes"])
    yield _gauge("cache_entries", "Entries in the in-process cache tier", tier["cache_entries"])
    yield from _mrc_metrics(stats or {})


def _mrc_metrics(stats: dict[str, Any]) -> Iterator[Metric]:
    """The memory tier's miss-ratio curve (cache.mrc): per process, labelled with the
    policy its miniatures run; nothing without a curve."""
    curve, sampling = stats.get("mrc"), stats.get("mrc_sampling")
    if not curve or not sampling:
        return
    policy = str(sampling.get("policy", ""))
    families = []
    for key, name, doc in (
            ("mrc", "cache_mrc_hit_ratio",
             "Estimated hit ratio of the memory tier at a multiple of its budget (the 1x "
             "point is the measured one; the slope is what memory buys)"),
            ("mrc_simulated", "cache_mrc_simulated_hit_ratio",
             "Hit ratio of the curve's miniature caches (1x against the measured ratio: "
             "the sampling error)")):
        family = GaugeMetricFamily(PREFIX + name, doc, labels=["budget", "policy"])
        for factor, value in (stats.get(key) or {}).items():
            family.add_metric([f"{factor}x", policy], float(value))
        families.append(family)
    rate = GaugeMetricFamily(PREFIX + "cache_mrc_sampling_rate",
                             "Share of keys the miss-ratio curve samples", labels=["policy"])
    rate.add_metric([policy], float(sampling.get("rate", 0.0)))
    yield from (*families, rate)


def config_metrics(status: ConfigStatus) -> Iterator[Metric]:
    reloads = CounterMetricFamily(PREFIX + "config_reloads", "Config reloads applied")
    reloads.add_metric([], status.reloads)
    failures = CounterMetricFamily(PREFIX + "config_reload_failures",
                                   "Config reloads rejected (the running config kept serving)")
    failures.add_metric([], status.failures)
    ok = GaugeMetricFamily(PREFIX + "config_last_reload_ok",
                           "0 when the latest reload was rejected, else 1")
    ok.add_metric([], 0.0 if status.last_result == "failed" else 1.0)
    loaded = GaugeMetricFamily(PREFIX + "config_loaded_timestamp_seconds",
                               "Unix time the running config was loaded")
    loaded.add_metric([], status.loaded_at)
    yield from (reloads, failures, ok, loaded)


def _request_metrics(recorder: Recorder) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        PREFIX + "requests", "Client requests by model, answering node and status code",
        labels=["model", "node", "code"])
    for (model, node, code), count in list(recorder.requests.items()):
        requests.add_metric([model, node, str(code)], count)
    latency = HistogramMetricFamily(
        PREFIX + "request_duration_seconds",
        "Client-observed request time by model and answering node ('' for cache hits)",
        labels=["model", "node"])
    bounds = [*(str(b) for b in LATENCY_BUCKETS), "+Inf"]
    for (model, node), hist in list(recorder.latency.items()):
        cumulative, buckets = 0, []
        for bound, count in zip(bounds, hist.buckets, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        latency.add_metric([model, node], buckets, hist.sum)
    yield from (requests, latency)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, doc)
    family.add_metric([], value)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, doc)
    family.add_metric([], value)
    return family


def _flow_metrics(proxy: ProxySource) -> Iterator[Metric]:
    d = proxy.dispatcher
    yield _counter("retries", "Requests retried on another node", d.budget.retries)
    yield _counter("retry_budget_rejections",
                   "Retries refused because the retry budget was spent", d.budget.rejected)
    h = d.hedging
    yield _counter("hedges", "Hedged copies sent to a second node", h.sent)
    yield _counter("hedges_won", "Hedged copies whose answer was returned", h.won)
    yield _counter("hedge_rescues", "Hedges sent because the first node counted as stalled",
                   h.rescues)
    yield _counter("hedge_budget_rejections", "Hedges refused by the hedge budget",
                   h.budget.rejected)
    yield _gauge("hedge_budget_available", "Hedges the budget would grant now",
                 max(h.budget.available(time.monotonic()), 0.0))
    w = proxy.core.waits
    yield _counter("model_waits", "Requests that waited for a model to become AVAILABLE",
                   w.waits)
    yield _counter("model_wait_seconds", "Time requests spent waiting for a model", w.seconds)
    yield _counter("model_wait_timeouts",
                   "Requests answered 503 after waiting limits.queue_timeout_s", w.timeouts)
    yield _counter("shed", "Requests answered 503 at limits.max_inflight", proxy.core.shed)
    q = d.scheduler.stats
    yield _counter("queue_started", "Requests that got a slot on a node", q.started)
    yield _counter("queue_queued", "... of which waited in the proxy's queue first", q.queued)
    yield _counter("queue_refused", "Requests refused at once: expected wait past their budget",
                   q.refused)
    yield _counter("queue_shed", "Requests shed from a standing queue (CoDel)", q.shed)
    yield _counter("queue_probes", "Requests sent one over a node's limit, to learn it",
                   q.probes)
    waiting = GaugeMetricFamily(PREFIX + "queue_waiting", "Requests waiting in the proxy's "
                                "queue", labels=["model"])
    for model, n in d.scheduler.queue_lengths().items():
        waiting.add_metric([model], n)
    yield waiting
    yield _gauge("inflight", "Client requests in progress", proxy.core.inflight)


def _batch_metrics(proxy: ProxySource) -> Iterator[Metric]:
    def fam(name: str, doc: str) -> CounterMetricFamily:
        return CounterMetricFamily(PREFIX + name, doc, labels=["model"])

    batches = fam("batches", "Batches sent by the proxy's micro-batcher")
    waited = fam("batch_wait_seconds", "Time batched requests waited in the proxy's queue")
    resends = fam("batch_resends", "Requests resent alone after their batch got a 4xx")
    rows = HistogramMetricFamily(PREFIX + "batch_rows", "Rows per batch", labels=["model"])
    for model, st in list(proxy.dispatcher.batches.stats.items()):
        batches.add_metric([model], st.batches)
        waited.add_metric([model], st.wait_s)
        resends.add_metric([model], st.resends)
        cumulative, buckets = 0, []
        for bound, count in zip([*map(str, ROW_BUCKETS), "+Inf"], st.row_buckets,
                                strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        rows.add_metric([model], buckets, float(st.rows))
    yield from (batches, waited, resends, rows)


def _adaptive_metrics(proxy: ProxySource) -> Iterator[Metric]:
    bypassing = GaugeMetricFamily(PREFIX + "cache_adaptive_bypassing",
                                  "1 while the adaptive cache bypasses the model",
                                  labels=["model"])
    since = GaugeMetricFamily(PREFIX + "cache_adaptive_since_timestamp_seconds",
                              "Unix time of the model's last adaptive state change",
                              labels=["model"])
    states = proxy.cache.model_states() if proxy.cache is not None else {}
    for model, state in states.items():
        bypassing.add_metric([model], 1.0 if state["state"] == "bypass" else 0.0)
        since.add_metric([model], float(state["since"] or 0.0))
    yield from (bypassing, since)


class StateCollector(Collector):
    """Reads the proxy's live state at scrape time (called by `generate_latest`)."""

    def __init__(self, proxy: ProxySource) -> None:
        self._proxy = proxy

    def collect(self) -> Iterator[Metric]:
        proxy = self._proxy
        nodes = list(proxy.pool)
        yield from _request_metrics(proxy.recorder)
        yield from _node_gauges(nodes, proxy.pool.now(), proxy.pool.outlier)
        yield from _node_counters(nodes)
        yield from _flow_metrics(proxy)
        yield from _batch_metrics(proxy)
        yield from _adaptive_metrics(proxy)
        yield from _cache_metrics(proxy.cache.stats() if proxy.cache is not None else None)
        yield from config_metrics(proxy.status)
        if proxy.discovery is not None:
            yield from proxy.discovery.status.metrics(PREFIX)
        yield from rollout_families(proxy.rollouts)
        yield from proxy.edge.metrics(PREFIX)


class Metrics:
    """One proxy's registry, read at scrape time."""

    def __init__(self, proxy: ProxySource) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StateCollector(proxy))
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)

    def families(self) -> list[Family]:
        """Every family now, JSON-friendly (`lb.fleet.prom.families_of`)."""
        return families_of([self.registry])

    def exposition(self) -> bytes:
        """This process's text format (the admin port merges through `lb.fleet`)."""
        return generate_latest(self.registry)
