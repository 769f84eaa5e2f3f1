"""GET /metrics and the access log, against the real proxy and real workers."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lb.conftest import Pool
from tests.procs import ProxyProc, family_of, http, node, sample, scrape, wait_until

HP2 = "half_plus_two"

FAMILIES = {
    "tfslb_requests": "counter",
    "tfslb_request_duration_seconds": "histogram",
    "tfslb_node_inflight": "gauge",
    "tfslb_node_inflight_units": "gauge",
    "tfslb_node_ewma_seconds": "gauge",
    "tfslb_node_load": "gauge",
    "tfslb_node_weight": "gauge",
    "tfslb_node_effective_weight": "gauge",
    "tfslb_node_healthy": "gauge",
    "tfslb_node_requests": "counter",
    "tfslb_node_errors": "counter",
    "tfslb_node_ejections": "counter",
    "tfslb_retries": "counter",
    "tfslb_retry_budget_rejections": "counter",
    "tfslb_cache_info": "gauge",
    "tfslb_cache_hits": "counter",
    "tfslb_cache_misses": "counter",
    "tfslb_cache_hit_ratio": "gauge",
    "tfslb_cache_bypasses": "counter",
    "tfslb_cache_errors": "counter",
    "tfslb_cache_mrc_hit_ratio": "gauge",
    "tfslb_cache_mrc_simulated_hit_ratio": "gauge",
    "tfslb_cache_mrc_sampling_rate": "gauge",
    "tfslb_config_reloads": "counter",
    "tfslb_config_reload_failures": "counter",
    "tfslb_config_last_reload_ok": "gauge",
    "tfslb_config_loaded_timestamp_seconds": "gauge",
}


@pytest.fixture(scope="module")
def proxy(logs_dir: Path, hp2_pool: Pool) -> Iterator[ProxyProc]:
    """Two fast workers (weights 2 and 1), memory cache, JSON access log."""
    p = ProxyProc(logs_dir, [node("a", hp2_pool.fast[0], 2.0), node("b", hp2_pool.fast[1])],
                  name="proxy-metrics", models={HP2: {"cost": 1.0}},
                  log={"access": True, "format": "json"})
    yield p
    p.stop()


_calls = itertools.count()


def _traffic(url: str) -> None:
    """12 new predicts (misses), 3 repeats (hits), one status GET, one unknown model."""
    base = next(_calls) * 100.0
    for i in range(12):
        status = http("POST", f"{url}/v1/models/{HP2}:predict", {"instances": [base + i]})[0]
        assert status == 200
    for _ in range(3):
        status, hdrs, _ = http("POST", f"{url}/v1/models/{HP2}:predict", {"instances": [base]})
        assert status == 200 and hdrs["X-Cache"] == "HIT"
    assert http("GET", f"{url}/v1/models/{HP2}")[0] == 200
    assert http("POST", f"{url}/v1/models/nope:predict", {"instances": [1.0]})[0] == 404


def test_metrics_parse_and_carry_the_families(proxy: ProxyProc) -> None:
    _traffic(proxy.url)
    fams = scrape(proxy.admin)
    for name, kind in FAMILIES.items():
        assert name in fams, f"{name} missing from /metrics"
        assert fams[name].type == kind, (name, fams[name].type)
    assert http("GET", f"{proxy.admin}/metrics")[1]["Content-Type"].startswith("text/plain")


def test_request_counts_and_latency(proxy: ProxyProc) -> None:
    before = scrape(proxy.admin)
    _traffic(proxy.url)
    fams = scrape(proxy.admin)

    def delta(name: str, **labels: str) -> float:
        total = 0.0
        for s in fams[family_of(name)].samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                try:
                    was = sample(before, name, **s.labels)
                except KeyError:
                    was = 0.0
                total += s.value - was
        return total

    assert delta("tfslb_requests_total", model=HP2, code="200") == 16     # 12 + 3 + 1 GET
    assert delta("tfslb_requests_total", model=HP2, code="200", node="") == 3   # the hits
    assert delta("tfslb_requests_total", model="(other)", code="404") == 1
    assert delta("tfslb_request_duration_seconds_count", model=HP2) == 16
    # Misses took the worker's 50 ms; hits do not reach a node.
    assert delta("tfslb_request_duration_seconds_sum", model=HP2, node="a") \
        + delta("tfslb_request_duration_seconds_sum", model=HP2, node="b") >= 13 * 0.045
    assert delta("tfslb_request_duration_seconds_sum", model=HP2, node="") < 3 * 0.045


def test_node_cache_and_config_values(proxy: ProxyProc) -> None:
    _traffic(proxy.url)
    fams = scrape(proxy.admin)
    for name, weight in (("a", 2.0), ("b", 1.0)):
        assert sample(fams, "tfslb_node_weight", node=name) == weight
        assert sample(fams, "tfslb_node_effective_weight", node=name) == weight
        assert sample(fams, "tfslb_node_healthy", node=name) == 1.0
        assert sample(fams, "tfslb_node_inflight", node=name) == 0.0
        assert sample(fams, "tfslb_node_ejections_total", node=name) == 0.0
        assert sample(fams, "tfslb_node_load", node=name) >= 0.0
    taus = [sample(fams, "tfslb_node_ewma_seconds", node=n) for n in ("a", "b")]
    assert any(taus)
    for tau in filter(None, taus):     # seconds per unit on a 50 ms worker (0: no sample yet)
        assert 0.04 < tau < 2.0
    assert sample(fams, "tfslb_retries_total") == 0.0
    assert sample(fams, "tfslb_retry_budget_rejections_total") == 0.0
    assert sample(fams, "tfslb_cache_info", backend="memory") == 1.0
    hits = sample(fams, "tfslb_cache_hits_total", model=HP2)
    misses = sample(fams, "tfslb_cache_misses_total", model=HP2)
    assert hits >= 3 and misses >= 12
    assert sample(fams, "tfslb_cache_hit_ratio", model=HP2) == pytest.approx(
        hits / (hits + misses))
    stats = proxy.stats()["cache"]
    assert (stats["hits"], stats["misses"]) == (hits, misses)
    # the miss-ratio curve says which policy it models (the default: W-TinyLFU)
    assert stats["mrc_sampling"]["policy"] == "w-tinylfu"
    assert sample(fams, "tfslb_cache_mrc_sampling_rate", policy="w-tinylfu") == pytest.approx(
        stats["mrc_sampling"]["rate"])
    for budget in ("0.5x", "1x", "2x", "4x"):
        assert 0.0 <= sample(fams, "tfslb_cache_mrc_hit_ratio", budget=budget,
                             policy="w-tinylfu") <= 1.0
    assert sample(fams, "tfslb_config_reloads_total") == 0.0
    assert sample(fams, "tfslb_config_reload_failures_total") == 0.0
    assert sample(fams, "tfslb_config_last_reload_ok") == 1.0


def test_json_access_log(proxy: ProxyProc) -> None:
    path = f"/v1/models/{HP2}:predict"

    def lines() -> list[dict[str, object]]:
        out = []
        for line in proxy.proc.log_path.read_text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return [r for r in out if r["path"] == path]

    before = len(lines())              # other tests' predicts went through this proxy
    http("POST", f"{proxy.url}{path}", {"instances": [123.5]})
    wait_until(lambda: len(lines()) > before, 5.0, "this request's access log line")
    rec = lines()[before]
    assert set(rec) >= {"ts", "remote", "method", "status", "bytes", "ms", "model", "node",
                        "cache"}
    assert rec["method"] == "POST" and rec["model"] == HP2 and rec["node"] in ("a", "b")
    assert rec["status"] == 200 and rec["cache"] in ("MISS", "HIT")


def test_text_access_log(logs_dir: Path, hp2_pool: Pool) -> None:
    import re

    p = ProxyProc(logs_dir, [node("a", hp2_pool.fast[0])], name="proxy-textlog",
                  log={"access": True, "format": "text"})
    try:
        http("POST", f"{p.url}/v1/models/{HP2}:predict", {"instances": [321.5]})
        http("POST", f"{p.url}/v1/models/{HP2}:predict", {"instances": [321.5]})
        line = re.compile(r'lb\.access: 127\.0\.0\.1 "POST /v1/models/half_plus_two:predict" '
                          r"200 \d+B [\d.]+ms node=(a|-) cache=(MISS|HIT)")
        wait_until(lambda: len(line.findall(p.proc.log())) >= 2, 5.0, "two access log lines")
        assert [m[1] for m in line.findall(p.proc.log())][-2:] == ["MISS", "HIT"]
    finally:
        p.stop()


def test_mrc_gauges_carry_the_curve_and_its_policy() -> None:
    """In process: the curve of a real LRU store, as /metrics renders it."""
    from cache.memory import MemoryStore
    from cache.result_cache import ResultCache
    from lb.admin.metrics import _cache_metrics

    store = MemoryStore(10_000, 1000, mrc_keys=64, mrc_rate=1.0)
    for key in ("a", "b", "a", "c", "a"):
        if store.get_now(key) is None:
            store.set_now(key, b"v" * 100, 60.0)
    stats = ResultCache(store, 60, 1000).stats()
    fams = {f.name: f for f in _cache_metrics(stats)}
    got = {(s.labels["budget"], s.labels["policy"]): s.value
           for s in fams["tfslb_cache_mrc_hit_ratio"].samples}
    assert got == {(f"{k}x", "lru"): v for k, v in stats["mrc"].items()}
    assert got[("1x", "lru")] == pytest.approx(0.4)         # 2 hits in 5 lookups, measured
    (rate,) = fams["tfslb_cache_mrc_sampling_rate"].samples
    assert rate.labels == {"policy": "lru"} and rate.value == 1.0
    assert "tfslb_cache_mrc_hit_ratio" not in {
        f.name for f in _cache_metrics(ResultCache(MemoryStore(10_000, 1000), 60, 1000).stats())}
