"""Prometheus metrics (`GET /metrics` on the admin port), prefix `tfslb_`.

Two kinds, one private `CollectorRegistry` per proxy (never the global one,
so several proxies in one process, as in tests, do not collide):

* hot-path counters and histograms, incremented by `lb.observe` once per
  client request: `tfslb_requests_total{model,node,code}` and
  `tfslb_request_duration_seconds{model,node}`;
* everything else is read at scrape time by `StateCollector` from the live
  objects, so it costs nothing per request: per-node in-flight, τ (EWMA),
  load (the seed's formula over the window), configured and effective
  weight, health, requests, errors and ejections; the proxy's retries and
  retry-budget rejections; cache hits, misses and hit ratio by model; config
  reloads and failures (`ConfigStatus`, written by `lb.reload`).

Ejections come from `Node.outlier.ejections`, the effective weight from
`Node.effective_weight`; retries and budget rejections from `Proxy.retries`
and `Proxy.retry_budget_rejections` (read with a default of 0).

`metrics_for(proxy)` is the one way to reach a proxy's `Metrics`; it is called
by the REST middleware, the admin app and the reloader, and creates the
object on first use. Everything here runs on the event loop thread.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lb.nodes import Node
from lb.outlier import OutlierPolicy
from lb.proxy import Proxy

PREFIX = "tfslb_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Client-observed latency: cache hits take ~0.1 ms, slow models tens of seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(slots=True)
class ConfigStatus:
    """Config loads as /stats ("config") and /metrics report them; `lb.reload` writes it."""

    path: str | None = None
    reloads: int = 0                 # successful reloads since start
    failures: int = 0                # rejected reloads (the old config kept serving)
    last_error: str | None = None    # message of the latest rejected reload
    last_result: str = "started"     # started | ok | failed
    loaded_at: float = field(default_factory=time.time)   # wall time of the config in use

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "reloads": self.reloads, "failures": self.failures,
                "last_error": self.last_error, "last_result": self.last_result,
                "loaded_at": self.loaded_at}


def _node_gauges(nodes: list[Node], now: float, opolicy: OutlierPolicy) -> Iterator[Metric]:
    def fam(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(PREFIX + name, doc, labels=["node"])

    inflight = fam("node_inflight", "Requests in flight on the node")
    units = fam("node_inflight_units", "Units (rows x model cost) in flight on the node")
    ewma = fam("node_ewma_seconds", "Peak-sensitive EWMA of seconds per unit (tau)")
    load = fam("node_load", "Sum of w_j * t_j over the load window divided by the weight")
    weight = fam("node_weight", "Configured weight")
    effective = fam("node_effective_weight", "Weight the policy uses now (slow start, ejection)")
    healthy = fam("node_healthy", "1 when the health checks find the node serving")
    for n in nodes:
        label = [n.name]
        inflight.add_metric(label, n.inflight)
        units.add_metric(label, n.inflight_units)
        ewma.add_metric(label, n.tau.value or 0.0)
        load.add_metric(label, n.window.work(now) / n.weight)
        weight.add_metric(label, n.weight)
        effective.add_metric(label, n.effective_weight(now, opolicy))
        healthy.add_metric(label, 1.0 if n.healthy else 0.0)
    yield from (inflight, units, ewma, load, weight, effective, healthy)


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


def _config_metrics(status: ConfigStatus) -> Iterator[Metric]:
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


class StateCollector(Collector):
    """Reads the proxy's live state at scrape time (called by `generate_latest`)."""

    def __init__(self, proxy: Proxy, status: ConfigStatus) -> None:
        self._proxy = weakref.proxy(proxy)     # the registry must not keep a proxy alive
        self._status = status

    def collect(self) -> Iterator[Metric]:
        proxy = self._proxy
        nodes = list(proxy.pool)
        yield from _node_gauges(nodes, proxy.pool.now(), proxy.pool.outlier)
        yield from _node_counters(nodes)
        retries = CounterMetricFamily(PREFIX + "retries", "Requests retried on another node")
        retries.add_metric([], getattr(proxy, "retries", 0))
        rejected = CounterMetricFamily(PREFIX + "retry_budget_rejections",
                                       "Retries refused because the retry budget was spent")
        rejected.add_metric([], getattr(proxy, "retry_budget_rejections", 0))
        yield from (retries, rejected)
        yield from _cache_metrics(proxy.cache.stats() if proxy.cache is not None else None)
        yield from _config_metrics(self._status)


class Metrics:
    """One proxy's registry: hot-path families plus the scrape-time collector."""

    def __init__(self, proxy: Proxy) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.config = ConfigStatus()
        self.requests = Counter(
            PREFIX + "requests", "Client requests by model, answering node and status code",
            ["model", "node", "code"], registry=self.registry)
        self.latency = Histogram(
            PREFIX + "request_duration_seconds",
            "Client-observed request time by model and answering node ('' for cache hits)",
            ["model", "node"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(StateCollector(proxy, self.config))

    def exposition(self) -> bytes:
        """The text format for GET /metrics."""
        return generate_latest(self.registry)


_BY_PROXY: weakref.WeakKeyDictionary[Proxy, Metrics] = weakref.WeakKeyDictionary()


def metrics_for(proxy: Proxy) -> Metrics:
    """The proxy's `Metrics`, created on first use."""
    metrics = _BY_PROXY.get(proxy)
    if metrics is None:
        metrics = _BY_PROXY[proxy] = Metrics(proxy)
    return metrics
