"""The result cache through the real proxy: equivalences, near misses, rows,
coalescing (counted at the worker), Redis outages, shared Redis, rollouts."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.lb.conftest import Pool
from tests.procs import ProxyProc, RedisServer, get_json, http, node, start_worker, wait_until

HP2 = "half_plus_two"


@pytest.fixture(scope="module")
def worker_url(hp2_pool: Pool) -> str:
    return hp2_pool.fast[0]


@pytest.fixture(scope="module")
def proxy(logs_dir: Path, worker_url: str) -> Iterator[ProxyProc]:
    """One worker behind the proxy, so backend calls can be counted at the worker."""
    p = ProxyProc(logs_dir, [node("a", worker_url)], name="proxy-cache",
                  models={HP2: {"row_cache": False}, "half_plus_two_2v": {"row_cache": True}})
    yield p
    p.stop()


def post(url: str, body: Any, headers: dict[str, str] | None = None
         ) -> tuple[int, str, Any]:
    status, hdrs, raw = http("POST", url, body, headers)
    return status, hdrs.get("X-Cache", ""), json.loads(raw)


def worker_calls(url: str) -> tuple[int, int]:
    doc = get_json(f"{url}/_worker/stats")
    return doc["inferences"], doc["rows"]


_counter = iter(range(10**9))


def fresh() -> float:
    """A value no other test has sent (entries outlive tests in a module)."""
    return 1000.0 + next(_counter) * 0.25


# -- equivalence classes and near misses ---------------------------------------

def test_equivalent_encodings_share_one_entry(proxy: ProxyProc) -> None:
    v = fresh()
    url = f"{proxy.url}/v1/models/{HP2}:predict"
    status, x, first = post(url, {"instances": [v, 2.0]})
    assert (status, x) == (200, "MISS")
    variants: list[Any] = [
        f'{{"instances": [{v}, 2]}}'.encode(),                          # 2 == 2.0
        f'{{"instances": [{v}, 2e0]}}'.encode(),                        # == 2e0
        {"signature_name": "serving_default", "instances": [v, 2.0]},  # default named
        f'{{"instances": [{v}, 2.0], "signature_name": ""}}'.encode(),
    ]
    for body in variants:
        status, x, doc = post(url, body)
        assert (status, x, doc) == (200, "HIT", first), body
    # The columnar encoding of the same tensor hits too, answered in its own shape.
    status, x, doc = post(url, {"inputs": [v, 2.0]})
    assert (status, x, doc) == (200, "HIT", {"outputs": first["predictions"]})
    # Key order inside the JSON object does not matter either.
    raw = f'{{"signature_name": "serving_default", "instances": [{v}, 2.0]}}'.encode()
    assert post(url, raw)[1] == "HIT"
    assert get_json(f"{proxy.admin}/stats")["cache"]["key_modes"][HP2] == "tensor"


def test_near_misses_never_share_an_entry(proxy: ProxyProc) -> None:
    v = fresh()
    base = f"{proxy.url}/v1/models"
    assert post(f"{base}/{HP2}:predict", {"instances": [v]})[1] == "MISS"
    near: list[tuple[str, Any]] = [
        (f"{base}/{HP2}:predict", {"instances": [[v]]}),                 # shape [1,1] vs [1]
        (f"{base}/{HP2}:predict", {"instances": [v, v]}),                # batch of 2
        (f"{base}/half_plus_two_2v/versions/123:predict", {"instances": [v]}),  # other model
        (f"{base}/half_plus_two_2v/versions/124:predict", {"instances": [v]}),  # other version
    ]
    for url, body in near:
        status, x, _ = post(url, body)
        assert (status, x) == (200, "MISS"), (url, body, x)
    # Without a version the latest AVAILABLE one (124) is meant: its entry, not 123's.
    assert post(f"{base}/half_plus_two_2v:predict", {"instances": [v]})[1] == "HIT"
    # Other verbs and signatures on the same examples.
    ex = {"examples": [{"x": v}]}
    assert post(f"{base}/{HP2}:regress", {**ex, "signature_name": "regress_x_to_y"})[1] == "MISS"
    assert post(f"{base}/{HP2}:regress", {**ex, "signature_name": "regress_x_to_y2"})[1] == "MISS"
    status, x, doc = post(f"{base}/{HP2}:classify", {**ex, "signature_name": "classify_x_to_y"})
    assert (status, x, doc) == (200, "MISS", {"results": [[["", v * 0.5 + 2]]]})


def test_errors_are_not_cached(proxy: ProxyProc) -> None:
    url = f"{proxy.url}/v1/models/{HP2}:predict"
    for _ in range(2):
        status, x, doc = post(url, {"instances": [{"nope": 1.0}]})
        assert status == 400 and x == "MISS" and "error" in doc


# -- row-level cache --------------------------------------------------------------

def test_partial_hits_forward_only_missing_rows_in_order(proxy: ProxyProc,
                                                         worker_url: str) -> None:
    url = f"{proxy.url}/v1/models/half_plus_two_2v:predict"
    a, b, c = fresh(), fresh(), fresh()
    _, rows0 = worker_calls(worker_url)
    status, x, doc = post(url, {"instances": [a, b]})
    assert (status, x, doc) == (200, "MISS", {"predictions": [a / 2 + 2, b / 2 + 2]})
    _, rows1 = worker_calls(worker_url)
    assert rows1 - rows0 == 2
    # b and a are cached, c is new and appears twice: one row goes to the worker.
    status, x, doc = post(url, {"instances": [b, c, a, c, b]})
    assert (status, x) == (200, "PARTIAL")
    assert doc == {"predictions": [b / 2 + 2, c / 2 + 2, a / 2 + 2, c / 2 + 2, b / 2 + 2]}
    _, rows2 = worker_calls(worker_url)
    assert rows2 - rows1 == 1
    status, x, doc = post(url, {"instances": [c, a]})
    assert (status, x, doc) == (200, "HIT", {"predictions": [c / 2 + 2, a / 2 + 2]})
    stats = get_json(f"{proxy.admin}/stats")["cache"]["by_model"]["half_plus_two_2v"]
    assert stats["partial"] >= 1 and stats["rows_hit"] >= 5 and stats["rows_missed"] >= 3


@pytest.mark.parametrize("model", [HP2, "half_plus_two_2v"])     # whole-request, row cache
def test_no_store_bypasses_the_cache_and_the_counters_agree(proxy: ProxyProc,
                                                             model: str) -> None:
    url = f"{proxy.url}/v1/models/{model}:predict"
    a = fresh()
    assert post(url, {"instances": [a]})[1] == "MISS"           # cached now
    before = get_json(f"{proxy.admin}/stats")["cache"]["by_model"][model]
    status, x, doc = post(url, {"instances": [a]}, {"Cache-Control": "no-store"})
    assert (status, x, doc) == (200, "BYPASS", {"predictions": [a / 2 + 2]})
    after = get_json(f"{proxy.admin}/stats")["cache"]["by_model"][model]
    assert after["bypasses"] == before["bypasses"] + 1
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])
    assert after["stores"] == before["stores"]                   # nothing stored either


# -- coalescing ---------------------------------------------------------------------

async def _burst(url: str, body: Any, n: int) -> list[tuple[int, str]]:
    async with aiohttp.ClientSession() as s:
        async def one() -> tuple[int, str]:
            async with s.post(url, json=body) as r:
                await r.read()
                return r.status, r.headers.get("X-Cache", "")
        return await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), 30)


@pytest.mark.parametrize(("model", "n"), [(HP2, 20), ("half_plus_two_2v", 20)])
def test_concurrent_identical_misses_make_one_backend_call(proxy: ProxyProc, worker_url: str,
                                                           model: str, n: int) -> None:
    before, _ = worker_calls(worker_url)
    results = asyncio.run(_burst(f"{proxy.url}/v1/models/{model}:predict",
                                 {"instances": [fresh()]}, n))
    after, _ = worker_calls(worker_url)
    assert all(status == 200 for status, _ in results)
    assert after - before == 1, Counter(x for _, x in results)
    kinds = Counter(x for _, x in results)
    assert kinds["MISS"] == 1 and kinds["MISS"] + kinds["COALESCED"] + kinds["HIT"] == n


# -- Redis: outages, sharing ----------------------------------------------------

class Load:
    """A steady stream of repeated requests from a thread; records every status."""

    def __init__(self, url: str, values: list[float]):
        self.url, self.values = url, values
        self.statuses: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            v = self.values[i % len(self.values)]
            status, hdrs, _ = http("POST", self.url, {"instances": [v]}, timeout=10)
            self.statuses.append((time.monotonic(), status, hdrs.get("X-Cache", "")))
            i += 1
            time.sleep(0.01)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)

    def hit_rate_since(self, t: float) -> float:
        recent = [x for ts, _, x in self.statuses if ts >= t]
        return sum(x == "HIT" for x in recent) / max(len(recent), 1)


@pytest.mark.parametrize("backend", ["redis", "tiered"])
def test_redis_outage_gives_zero_client_errors_and_recovers(
        logs_dir: Path, worker_url: str, backend: str, private_redis: RedisServer) -> None:
    redis = private_redis
    p = ProxyProc(logs_dir, [node("a", worker_url)], name=f"proxy-outage-{backend}",
                  cache={"backend": backend, "redis_url": redis.url, "redis_timeout_ms": 50})
    try:
        values = [fresh() for _ in range(5)]
        with Load(f"{p.url}/v1/models/{HP2}:predict", values) as load:
            wait_until(lambda: load.hit_rate_since(time.monotonic() - 1) > 0.5, 20, "hits")
            redis.kill()
            killed = time.monotonic()
            time.sleep(2.0)
            redis.start()                                   # same port, empty
            restarted = time.monotonic()
            wait_until(lambda: load.hit_rate_since(time.monotonic() - 1) > 0.5, 30,
                       "the hit rate to recover after the restart")
        failed = [s for _, s, _ in load.statuses if s != 200]
        during = [s for ts, s, _ in load.statuses if killed <= ts < restarted]
        assert failed == [] and len(during) > 20, (failed, len(during))
    finally:
        p.stop()


def test_two_proxies_sharing_redis_see_each_others_entries(logs_dir: Path, worker_url: str,
                                                           redis_server: RedisServer) -> None:
    cache = {"backend": "tiered", "redis_url": redis_server.url}
    p1 = ProxyProc(logs_dir, [node("a", worker_url)], name="proxy-r1", cache=cache)
    p2 = ProxyProc(logs_dir, [node("a", worker_url)], name="proxy-r2", cache=cache)
    try:
        body = {"instances": [fresh()]}
        assert post(f"{p1.url}/v1/models/{HP2}:predict", body)[1] == "MISS"
        status, x, doc = post(f"{p2.url}/v1/models/{HP2}:predict", body)
        assert (status, x) == (200, "HIT")
        assert post(f"{p2.url}/v1/models/{HP2}:predict", {"inputs": body["instances"]})[2] == {
            "outputs": doc["predictions"]}
    finally:
        p1.stop()
        p2.stop()


# -- rollout ------------------------------------------------------------------------

def test_new_version_stops_old_hits_without_a_flush(logs_dir: Path, tmp_path: Path,
                                                    test_models: Path) -> None:
    base = tmp_path / "hp2"
    base.mkdir()
    shutil.copytree(test_models / "half_plus_two_cpu" / "00000123", base / "00000123")
    proc, url = start_worker(logs_dir, {"rollout": base}, name="rollout-worker",
                             extra=["--poll-s", "0.2"])
    p = ProxyProc(logs_dir, [node("a", url)], name="proxy-rollout",
                  health={"interval_s": 0.2, "timeout_s": 1.0})
    try:
        predict = f"{p.url}/v1/models/rollout:predict"
        assert post(predict, {"instances": [2.0]})[1] == "MISS"
        assert post(predict, {"instances": [2.0]})[1] == "HIT"
        shutil.copytree(test_models / "half_plus_two_cpu" / "00000123", base / "00000124")
        wait_until(lambda: post(predict, {"instances": [2.0]})[1] == "MISS", 30,
                   "a miss after version 124 became AVAILABLE")
        assert post(predict, {"instances": [2.0]})[1] == "HIT"        # the new entry
        assert post(f"{p.url}/v1/models/rollout/versions/123:predict",
                    {"instances": [2.0]})[1] == "HIT"                  # the old one, by version
    finally:
        p.stop()
        proc.stop()
