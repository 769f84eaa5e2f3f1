"""cache.memory.MemoryStore: LRU by bytes, TTL, oversized entries."""

from __future__ import annotations

from cache.memory import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_get_set_mget() -> None:
    s = MemoryStore(1000, 100)
    assert await s.get("k") is None
    await s.set("k", b"v", 10)
    assert await s.get("k") == b"v"
    assert await s.mget(["k", "nope"]) == [b"v", None]
    assert s.stats()["bytes"] == 2


async def test_lru_eviction_by_bytes() -> None:
    s = MemoryStore(max_bytes=30, max_entry_bytes=30)
    for k in ("a", "b", "c"):
        await s.set(k, b"x" * 9, 10)          # 10 bytes each: full
    assert await s.get("a") == b"x" * 9         # a is now most recent
    await s.set("d", b"y" * 9, 10)              # evicts b (least recent)
    assert await s.get("b") is None
    assert [await s.get(k) is not None for k in ("a", "c", "d")] == [True, True, True]
    stats = s.stats()
    assert stats["evictions"] == 1 and stats["bytes"] == 30 and stats["entries"] == 3
    await s.set("big", b"z" * 25, 10)           # 28 bytes: evicts until it fits
    assert stats["bytes"] <= 30 and s.stats()["entries"] == 1


async def test_replacing_a_key_keeps_byte_count() -> None:
    s = MemoryStore(100, 100)
    await s.set("k", b"1234", 10)
    await s.set("k", b"12", 10)
    assert s.stats()["bytes"] == 3 and len(s) == 1


async def test_ttl_expiry() -> None:
    clock = Clock()
    s = MemoryStore(100, 100, clock=clock)
    await s.set("k", b"v", 5)
    clock.now += 4.9
    assert await s.get("k") == b"v"
    clock.now += 0.2
    assert await s.get("k") is None
    assert s.stats()["expirations"] == 1 and s.stats()["bytes"] == 0
    await s.set("z", b"v", 0)                   # ttl <= 0 stores nothing
    assert await s.get("z") is None


async def test_oversized_entry_refused() -> None:
    s = MemoryStore(max_bytes=1000, max_entry_bytes=10)
    await s.set("k", b"x" * 11, 10)
    assert await s.get("k") is None
    assert s.stats()["refused"] == 1
    tiny = MemoryStore(max_bytes=5, max_entry_bytes=100)   # bigger than the budget
    await tiny.set("key", b"xxxx", 10)
    assert await tiny.get("key") is None


def test_peek_counts_a_hit_once_and_a_miss_not_at_all() -> None:
    from cache.store import memory_store

    for admission in ("lru", "tinylfu"):
        s = memory_store(admission, 10_000, 1_000, mrc_keys=64, mrc_rate=1.0)
        s.set_now("k", b"v", 60.0)
        curve = s._mrc                       # the miss-ratio curve's reference count
        assert curve is not None
        refs = curve.refs
        assert s.peek("missing") is None     # the full lookup that follows counts it
        assert curve.refs == refs, admission
        assert s.peek("k") == b"v"
        assert curve.refs == refs + 1, admission
