"""cache.result_cache.ResultCache counters over real stores."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cache.adaptive import BYPASS, SAMPLE, USE, AdaptiveController, AdaptiveParams, Decision
from cache.memory import MemoryStore
from cache.redis_store import RedisStore
from cache.result_cache import MAX_MODELS, ResultCache
from cache.tinylfu import TinyLfuStore
from tests.procs import RedisServer, free_port


async def test_counters_add_up() -> None:
    rc = ResultCache(MemoryStore(10_000, 1000), ttl_s=60, max_entry_bytes=100)
    assert rc.stats()["hit_rate"] == 0.0
    assert await rc.lookup("k1", "mnist") is None
    await rc.fill("k1", "mnist", b"body")
    assert await rc.lookup("k1", "mnist") == b"body"
    assert await rc.lookup("k1", "mnist") == b"body"
    assert await rc.lookup("k2", "other") is None
    await rc.fill("k3", "mnist", b"x" * 101)          # over max_entry_bytes
    rc.bypass("mnist")
    s = rc.stats()
    assert s["backend"] == "memory"
    assert (s["hits"], s["misses"], s["hit_rate"]) == (2, 2, 0.5)
    assert s["stores"] == 1 and s["too_large"] == 1 and s["bypasses"] == 1
    assert s["by_model"]["mnist"]["hits"] == 2 and s["by_model"]["mnist"]["misses"] == 1
    assert s["by_model"]["other"]["hit_rate"] == 0.0
    assert s["store"]["entries"] == 1
    assert sum(m["hits"] + m["misses"] for m in s["by_model"].values()) == 4


async def test_redis_backend(redis_server: RedisServer) -> None:
    rc = ResultCache(RedisStore(redis_server.url, timeout_s=0.5), ttl_s=60, max_entry_bytes=1000)
    key = f"test:{uuid.uuid4().hex}"
    try:
        assert await rc.lookup(key, "m") is None
        await rc.fill(key, "m", b"{}")
        assert await rc.lookup(key, "m") == b"{}"
        s = rc.stats()
        assert s["backend"] == "redis" and s["hit_rate"] == 0.5 and s["errors"] == 0
    finally:
        await rc.close()


async def test_dead_redis_counts_errors_and_misses() -> None:
    rc = ResultCache(RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.05),
                     ttl_s=60, max_entry_bytes=1000)
    try:
        assert await rc.lookup("k", "m") is None
        await rc.fill("k", "m", b"v")
        s = rc.stats()
        assert s["misses"] == 1 and s["errors"] >= 1
    finally:
        await rc.close()


class BrokenStore:
    name = "broken"

    async def get(self, key: str) -> bytes | None:
        raise RuntimeError("bug in a store")

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        raise RuntimeError("bug in a store")

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        raise RuntimeError("bug in a store")

    async def close(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {}


async def test_a_raising_store_is_a_miss() -> None:
    rc = ResultCache(BrokenStore(), ttl_s=60, max_entry_bytes=1000)
    assert await rc.lookup("k", "m") is None
    await rc.fill("k", "m", b"v")
    s = rc.stats()
    assert (s["misses"], s["errors"], s["stores"]) == (1, 2, 0)


async def test_model_cardinality_is_bounded() -> None:
    rc = ResultCache(MemoryStore(10_000, 1000), ttl_s=60, max_entry_bytes=100)
    for i in range(MAX_MODELS + 10):
        await rc.lookup("k", f"model-{i}")
    s = rc.stats()
    assert len(s["by_model"]) == MAX_MODELS + 1
    assert s["by_model"]["(other)"]["misses"] == 10


# --- adaptive bypass ---------------------------------------------------------------

def adaptive_cache(**params: Any) -> ResultCache:
    p = AdaptiveParams(**{"window": 16, "sample_every": 2, "patience": 1, **params})
    pins = {"pinned-on": "on", "pinned-off": "off"}
    return ResultCache(TinyLfuStore(100_000, 1000, mrc_keys=64), ttl_s=60, max_entry_bytes=1000,
                       adaptive=AdaptiveController(p, pin=pins, seed=3))


async def serve(rc: ResultCache, model: str, key: str) -> Decision:
    """What the proxy does with one cacheable request."""
    decision = rc.decide(model)
    if decision == USE:
        if await rc.lookup(key, model) is None:
            await rc.fill(key, model, b"body")
    elif decision == SAMPLE:
        rc.sampled(model, key)
    return decision


async def test_decide_is_use_without_a_controller() -> None:
    rc = ResultCache(MemoryStore(10_000, 1000), ttl_s=60, max_entry_bytes=100)
    assert rc.decide("m") == USE and rc.model_states() == {}
    rc.sampled("m", "k")
    assert rc.stats()["bypasses"] == 0


async def test_a_model_without_reuse_is_bypassed_and_comes_back() -> None:
    rc = adaptive_cache()
    for i in range(16):
        assert await serve(rc, "m", f"unique-{i}") == USE
    decisions = [await serve(rc, "m", f"unique-x{i}") for i in range(100)]
    assert USE not in decisions and SAMPLE in decisions and BYPASS in decisions
    s = rc.stats()
    m = s["by_model"]["m"]
    assert (m["hits"], m["misses"], m["bypasses"], m["adaptive_bypasses"]) == (0, 16, 100, 100)
    assert m["state"] == "bypass" and m["pinned"] is False and m["since"] > 0
    assert s["store"]["entries"] == 16                       # bypassed requests fill nothing
    rows = ["hot-1", "hot-2"]
    for _ in range(20):                                      # reuse appears: back on
        if rc.decide("m") == SAMPLE:
            rc.sampled_rows("m", rows)
    assert rc.stats()["by_model"]["m"]["state"] == "on"
    assert rc.model_states()["m"]["state"] == "on"


async def test_pinned_models() -> None:
    rc = adaptive_cache()
    for i in range(64):
        await serve(rc, "pinned-on", f"k{i}")
        assert await serve(rc, "pinned-off", f"k{i}") == BYPASS
    s = rc.stats()["by_model"]
    assert s["pinned-on"]["state"] == "on" and s["pinned-on"]["misses"] == 64
    assert s["pinned-off"]["state"] == "bypass" and s["pinned-off"]["bypasses"] == 64
    assert s["pinned-off"]["pinned"] is True


async def test_row_lookups_feed_the_window() -> None:
    rc = adaptive_cache()
    assert rc.decide("m") == USE
    await rc.lookup_rows([f"r{i}" for i in range(16)], "m")  # 16 rows: one full window
    assert rc.decide("m") in (BYPASS, SAMPLE)


requests_strategy = st.lists(st.tuples(
    st.sampled_from(["a", "b", "pinned-off", "pinned-on"]),
    st.integers(0, 30),                    # key: small ranges repeat, so hits happen
    st.sampled_from(["plain", "plain", "plain", "no-store", "rows"])), max_size=400)


@settings(max_examples=60, deadline=None)
@given(requests_strategy, st.sampled_from([0.05, 0.3, 0.9]))
def test_property_hits_misses_bypasses_add_up(reqs: list[tuple[str, int, str]],
                                              min_hit_rate: float) -> None:
    async def scenario() -> None:
        rc = adaptive_cache(min_hit_rate=min_hit_rate)
        per_model: dict[str, int] = {}
        for model, k, kind in reqs:
            per_model[model] = per_model.get(model, 0) + 1
            key = f"{model}:{k % (3 if kind == 'rows' else 31)}"
            if kind == "no-store":                       # Cache-Control: no decide
                rc.bypass(model)
            elif kind == "rows":
                decision = rc.decide(model)
                keys = [key, key + ":2"]
                if decision == USE:
                    values = await rc.lookup_rows(keys, model)
                    await rc.fill_many([(x, b"r") for x, v in zip(keys, values, strict=True)
                                        if v is None], model)
                elif decision == SAMPLE:
                    rc.sampled_rows(model, keys)
            else:
                await serve(rc, model, key)
        s = rc.stats()
        assert s["hits"] + s["misses"] + s["bypasses"] == len(reqs)
        for model, n in per_model.items():
            m = s["by_model"][model]
            assert m["hits"] + m["misses"] + m["bypasses"] == n
            assert m["adaptive_bypasses"] <= m["bypasses"]
    asyncio.run(scenario())


async def test_stats_show_the_memory_tiers_miss_ratio_curve() -> None:
    for backend_store in (TinyLfuStore(10_000, 1000, mrc_keys=64),
                          MemoryStore(10_000, 1000, mrc_keys=64)):
        rc = ResultCache(backend_store, ttl_s=60, max_entry_bytes=1000)
        for i in range(100):
            if await rc.lookup(f"k{i % 10}", "m") is None:
                await rc.fill(f"k{i % 10}", "m", b"v" * 100)
        mrc = rc.stats()["mrc"]
        assert set(mrc) == {"0.5", "1", "2", "4"} and mrc["4"] >= mrc["0.5"]
    assert "mrc" not in ResultCache(MemoryStore(10_000, 1000), 60, 1000).stats()
