"""The proxy end to end: real workers running TensorFlow, the real proxy process."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.lb.conftest import SPREAD_DELAY_MS, Pool, assert_weight_shares, worker_delay
from tests.procs import ProxyProc, free_port, get_json, http, node

HP2 = "half_plus_two"


@pytest.fixture(scope="module")
def proxy(logs_dir: Path, hp2_pool: Pool) -> Iterator[ProxyProc]:
    """Two fast workers behind the proxy, memory cache."""
    p = ProxyProc(logs_dir, [node("a", hp2_pool.fast[0]), node("b", hp2_pool.fast[1])],
                  models={HP2: {"cost": 1.0}})
    yield p
    p.stop()


def post(url: str, body: object, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], object]:
    status, hdrs, raw = http("POST", url, body, headers)
    return status, hdrs, json.loads(raw)


# -- TF Serving's values for half_plus_two, through the proxy -------------------

def test_predict_row_format(proxy: ProxyProc) -> None:
    status, _, doc = post(f"{proxy.url}/v1/models/{HP2}:predict", {"instances": [1.0, 2.0, 5.0]})
    assert (status, doc) == (200, {"predictions": [2.5, 3.0, 4.5]})


def test_predict_columnar_format(proxy: ProxyProc) -> None:
    status, _, doc = post(f"{proxy.url}/v1/models/{HP2}:predict", {"inputs": [2.0, 3.0, 4.0]})
    assert (status, doc) == (200, {"outputs": [3.0, 3.5, 4.0]})


def test_classify_and_regress(proxy: ProxyProc) -> None:
    status, _, doc = post(f"{proxy.url}/v1/models/{HP2}:classify",
                          {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
    assert (status, doc) == (200, {"results": [[["", 3.0]]]})
    status, _, doc = post(f"{proxy.url}/v1/models/{HP2}:regress",
                          {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})
    assert (status, doc) == (200, {"results": [3.0]})


def test_model_status_and_metadata(proxy: ProxyProc) -> None:
    assert get_json(f"{proxy.url}/v1/models/{HP2}") == {"model_version_status": [
        {"version": "123", "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}}]}
    meta = get_json(f"{proxy.url}/v1/models/{HP2}/versions/123/metadata")
    assert meta["model_spec"]["name"] == HP2 and meta["model_spec"]["version"] == "123"
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["x"]["dtype"] == "DT_FLOAT"


def test_versions_are_addressed(proxy: ProxyProc) -> None:
    for v in (123, 124):
        status, _, doc = post(f"{proxy.url}/v1/models/half_plus_two_2v/versions/{v}:predict",
                              {"instances": [2.0]})
        assert (status, doc) == (200, {"predictions": [3.0]})


# -- errors ---------------------------------------------------------------------

def test_malformed_json_is_400_with_error(proxy: ProxyProc) -> None:
    status, _, raw = http("POST", f"{proxy.url}/v1/models/{HP2}:predict", b'{"instances": [1,')
    assert status == 400
    assert "error" in json.loads(raw)


@pytest.mark.parametrize("body", [b"[]", b"{}", b'{"instances": 1}', b"\xff\xfe"])
def test_bad_bodies_are_400(proxy: ProxyProc, body: bytes) -> None:
    status, _, raw = http("POST", f"{proxy.url}/v1/models/{HP2}:predict", body)
    assert status == 400 and set(json.loads(raw)) == {"error"}


def test_unknown_model_passes_through_as_404(proxy: ProxyProc) -> None:
    status, _, raw = http("POST", f"{proxy.url}/v1/models/nope:predict", {"instances": [1.0]})
    assert status == 404 and "error" in json.loads(raw)
    status, _, raw = http("GET", f"{proxy.url}/v1/models/{HP2}/versions/999")
    assert status == 404 and "error" in json.loads(raw)


def test_backend_input_errors_pass_through(proxy: ProxyProc) -> None:
    status, _, doc = post(f"{proxy.url}/v1/models/{HP2}:predict", {"instances": [{"nope": 1.0}]})
    assert status == 400 and "error" in doc   # type: ignore[operator]


def test_unknown_routes_are_404_with_error(proxy: ProxyProc) -> None:
    for method, path in (("GET", "/"), ("GET", "/v1/models"), ("POST", "/v1/models/m:fly")):
        status, _, raw = http(method, proxy.url + path, b"{}" if method == "POST" else None)
        assert status == 404 and "error" in json.loads(raw)


# -- cache --------------------------------------------------------------------

def _hit_then_miss(url: str) -> None:
    body = {"instances": [7.25, 8.5]}
    first = post(f"{url}/v1/models/{HP2}:predict", body)
    second = post(f"{url}/v1/models/{HP2}:predict", body)
    assert first[0] == second[0] == 200
    assert first[1]["X-Cache"] == "MISS" and second[1]["X-Cache"] == "HIT"
    assert first[2] == second[2] == {"predictions": [5.625, 6.25]}
    # 1 and 1.0 and 1e0 are one tensor: same entry.
    again = post(f"{url}/v1/models/{HP2}:predict", {"instances": [7.25, 8.5e0]})
    assert again[1]["X-Cache"] == "HIT"


def test_repeated_request_hits_memory_cache(proxy: ProxyProc) -> None:
    before = proxy.stats()["cache"]
    _hit_then_miss(proxy.url)
    after = proxy.stats()["cache"]
    assert after["backend"] == "memory"
    assert after["hits"] - before["hits"] == 2 and after["misses"] - before["misses"] == 1
    assert 0.0 < after["hit_rate"] <= 1.0


def test_repeated_request_hits_redis_cache(logs_dir: Path, hp2_pool: Pool, redis_server) -> None:  # type: ignore[no-untyped-def]
    p = ProxyProc(logs_dir, [node("a", hp2_pool.fast[0])], name="proxy-redis",
                  cache={"backend": "redis", "redis_url": redis_server.url})
    try:
        _hit_then_miss(p.url)
        assert p.stats()["cache"]["backend"] == "redis"
    finally:
        p.stop()


def test_cache_control_directives(proxy: ProxyProc) -> None:
    url, body = f"{proxy.url}/v1/models/{HP2}:predict", {"instances": [11.0]}
    assert http("POST", url, body, {"Cache-Control": "only-if-cached"})[0] == 504
    assert post(url, body, {"Cache-Control": "no-store"})[1]["X-Cache"] == "BYPASS"
    assert post(url, body)[1]["X-Cache"] == "MISS"          # no-store did not fill
    assert post(url, body, {"Cache-Control": "no-cache"})[1]["X-Cache"] == "BYPASS"
    assert post(url, body, {"Cache-Control": "only-if-cached"})[1]["X-Cache"] == "HIT"


# -- stats contract and the proxy's own footprint --------------------------------

def test_stats_contract(proxy: ProxyProc) -> None:
    doc = proxy.stats()
    for n in doc["nodes"]:
        assert set(n) >= {"name", "weight", "healthy", "inflight", "requests", "errors",
                          "ewma_ms", "load", "share"}
    assert {n["name"] for n in doc["nodes"]} == {"a", "b"}
    assert set(doc["cache"]) >= {"backend", "hits", "misses", "hit_rate"}
    assert http("GET", f"{proxy.admin}/healthz")[0] == 200


def test_proxy_process_has_not_loaded_tensorflow(proxy: ProxyProc) -> None:
    post(f"{proxy.url}/v1/models/{HP2}:predict", {"instances": [1.0]})
    maps = Path(f"/proc/{proxy.proc.pid}/maps").read_text()
    assert "tensorflow" not in maps.lower()
    assert "tensorflow" not in Path(f"/proc/{proxy.proc.pid}/cmdline").read_text()


def test_dead_node_is_retried_and_marked_unhealthy(logs_dir: Path, hp2_pool: Pool) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    p = ProxyProc(logs_dir, [node("dead", dead, 10.0), node("ok", hp2_pool.fast[2])],
                  name="proxy-dead", cache={"backend": "none"},
                  health={"interval_s": 0.2, "timeout_s": 0.5, "unhealthy_after": 1})
    try:
        for i in range(20):
            status, hdrs, _ = post(f"{p.url}/v1/models/{HP2}:predict", {"instances": [float(i)]})
            assert status == 200 and hdrs["X-Node"] == "ok"
        nodes = {n["name"]: n for n in p.stats()["nodes"]}
        assert nodes["dead"]["healthy"] is False
    finally:
        p.stop()


# -- balancing ----------------------------------------------------------------

async def _spread(url: str, n: int, concurrency: int) -> Counter[str]:
    """n distinct (uncached) predicts with `concurrency` in flight; count X-Node."""
    counts, _limits = await _spread_sampled(url, n, concurrency, None)
    return counts


async def _spread_sampled(url: str, n: int, concurrency: int, admin: str | None
                          ) -> tuple[Counter[str], dict[str, float]]:
    """`_spread`, and with `admin` each node's concurrency limit averaged over the
    run (/stats read every 0.1 s while the calls are in flight)."""
    counts: Counter[str] = Counter()
    sums: Counter[str] = Counter()
    reads = 0
    queue = iter(range(n))
    async with aiohttp.ClientSession() as session:
        async def client() -> None:
            for i in queue:
                async with session.post(f"{url}/v1/models/{HP2}:predict",
                                        json={"instances": [float(i)]}) as resp:
                    assert resp.status == 200, await resp.text()
                    counts[resp.headers["X-Node"]] += 1

        async def sample() -> None:
            nonlocal reads
            while True:
                async with session.get(f"{admin}/stats") as resp:
                    for entry in (await resp.json())["nodes"]:
                        sums[entry["name"]] += entry["limit"]
                reads += 1
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample()) if admin is not None else None
        try:
            await asyncio.wait_for(asyncio.gather(*(client() for _ in range(concurrency))),
                                   120)
        finally:
            if sampler is not None:
                sampler.cancel()
    return counts, {name: total / max(reads, 1) for name, total in sums.items()}


def test_round_robin_keeps_the_configured_split(logs_dir: Path, hp2_pool: Pool) -> None:
    """`policy.name: round_robin` is the mode that keeps a split by weight (least_load
    reads weights as capacity and learns it)."""
    p = ProxyProc(logs_dir, [node("w3", hp2_pool.fast[0], 3), node("w1a", hp2_pool.fast[1], 1),
                             node("w1b", hp2_pool.fast[2], 1)],
                  name="proxy-311", cache={"backend": "none"}, policy={"name": "round_robin"})
    try:
        with worker_delay(hp2_pool.fast, SPREAD_DELAY_MS):
            counts = asyncio.run(_spread(p.url, 1200, 30))
    finally:
        p.stop()
    assert_weight_shares(counts, "REST")


def test_least_load_spreads_one_clients_calls_over_every_node(logs_dir: Path,
                                                               hp2_pool: Pool) -> None:
    """30 in flight over three equal nodes that take any concurrency (200 ms each, a
    sleep): the limits grow in their slow start to cover the demand, nothing waits
    long enough to be refused, and every node takes a part in proportion to its limit
    (the first node whose probes pass grows first: the limits need not be equal)."""
    p = ProxyProc(logs_dir, [node(f"e{i}", hp2_pool.fast[i]) for i in range(3)],
                  name="proxy-equal", cache={"backend": "none"})
    try:
        with worker_delay(hp2_pool.fast, SPREAD_DELAY_MS):
            counts, during = asyncio.run(_spread_sampled(p.url, 900, 30, p.admin))
            limits = {n["name"]: n["limit"] for n in p.stats()["nodes"]}
    finally:
        p.stop()
    total = sum(counts.values())
    print("least_load equal shares", {k: v / total for k, v in counts.items()}, limits,
          "average limits", during)
    assert sum(limits.values()) >= 30               # they grew to the demand
    # Each node's part against its limit as it was during the run (a limit grows in its
    # slow start while the calls go out: the final one overstated the early slots).
    for name, n in counts.items():
        assert n / total >= 0.8 * during[name] / sum(during.values()), (counts, during)


def test_slow_node_gets_less_than_its_weight_share(logs_dir: Path, hp2_pool: Pool) -> None:
    p = ProxyProc(logs_dir, [node("f1", hp2_pool.fast[0]), node("f2", hp2_pool.fast[1]),
                             node("slow", hp2_pool.slow)],
                  name="proxy-slow", cache={"backend": "none"})
    try:
        asyncio.run(_spread(p.url, 50, 12))
        counts = asyncio.run(_spread(p.url, 600, 12))
    finally:
        p.stop()
    total = sum(counts.values())
    print("slow-node shares", {k: v / total for k, v in counts.items()})
    assert counts["slow"] / total < 0.25            # weight alone would give 1/3
    assert counts["f1"] > counts["slow"] and counts["f2"] > counts["slow"]
