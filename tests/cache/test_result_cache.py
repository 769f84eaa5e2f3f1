"""cache.result_cache.ResultCache counters over real stores."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from cache.memory import MemoryStore
from cache.redis_store import RedisStore
from cache.result_cache import MAX_MODELS, ResultCache
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
