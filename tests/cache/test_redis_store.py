"""cache.redis_store.RedisStore against a real redis-server (no mocks)."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cache.redis_store import RedisStore, redact_url
from cache.store import make_store
from cache.tiered import TieredStore
from tests.procs import RedisServer, free_port


@pytest.fixture
def prefix() -> str:
    return f"test:{uuid.uuid4().hex}:"


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    s = RedisStore(redis_server.url, timeout_s=0.5)
    yield s
    await s.close()


async def test_get_set_mget(store: RedisStore, prefix: str) -> None:
    assert await store.get(prefix + "a") is None
    await store.set(prefix + "a", b"\x00bytes\xff", 60)
    await store.set(prefix + "b", b"2", 60)
    assert await store.get(prefix + "a") == b"\x00bytes\xff"
    assert await store.mget([prefix + "a", prefix + "x", prefix + "b"]) == [
        b"\x00bytes\xff", None, b"2"]
    assert await store.mget([]) == []
    assert store.stats()["errors"] == 0 and store.stats()["breaker"] == "closed"


async def test_ttl(store: RedisStore, prefix: str) -> None:
    await store.set(prefix + "t", b"v", 0.2)
    assert await store.get(prefix + "t") == b"v"
    await asyncio.sleep(0.35)
    assert await store.get(prefix + "t") is None
    await store.set(prefix + "z", b"v", 0)     # ttl <= 0 stores nothing
    assert await store.get(prefix + "z") is None


async def test_unreachable_redis_is_a_fast_miss() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.05,
                       breaker_failures=3, breaker_reset_s=60)
    try:
        for _ in range(5):
            start = time.monotonic()
            assert await store.get("k") is None
            await store.set("k", b"v", 10)
            assert await store.mget(["a", "b"]) == [None, None]
            assert time.monotonic() - start < 0.5
        stats = store.stats()
        assert stats["breaker"] == "open" and stats["errors"] == 3 and stats["skipped"] > 0
    finally:
        await store.close()


async def test_outage_opens_breaker_and_recovers_by_itself(logs_dir: Path, prefix: str) -> None:
    server = RedisServer(logs_dir)
    server.start()
    store = RedisStore(server.url, timeout_s=0.05, breaker_failures=3, breaker_reset_s=0.2)
    try:
        await store.set(prefix + "k", b"v", 60)
        assert await store.get(prefix + "k") == b"v"
        await asyncio.to_thread(server.kill)
        for _ in range(6):
            start = time.monotonic()
            assert await store.get(prefix + "k") is None
            assert time.monotonic() - start < 0.5
        assert store.breaker_state == "open"
        await asyncio.to_thread(server.start)  # same port, empty data
        await _eventually(store, prefix + "k2")
        assert store.breaker_state == "closed"
        assert store.stats()["breaker_opens"] >= 1
    finally:
        await store.close()
        server.stop()


async def _eventually(store: RedisStore, key: str, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        await store.set(key, b"back", 60)
        if await store.get(key) == b"back":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"redis store did not recover: {store.stats()}")


async def test_slow_redis_times_out(logs_dir: Path) -> None:
    """A Redis that accepts but never answers (paused with SIGSTOP) costs ~timeout_s."""
    server = RedisServer(logs_dir)
    server.start()
    store = RedisStore(server.url, timeout_s=0.05, breaker_failures=100)
    try:
        assert await store.get("warm") is None
        assert server.proc is not None
        server.proc.signal(signal.SIGSTOP)
        start = time.monotonic()
        assert await store.get("k") is None
        assert time.monotonic() - start < 0.5
        assert store.stats()["timeouts"] == 1
    finally:
        if server.proc is not None:
            server.proc.signal(signal.SIGCONT)
        await store.close()
        server.stop()


async def test_cancellation_is_not_swallowed(store: RedisStore) -> None:
    task = asyncio.create_task(store.get("k"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await store.set("cancel-test", b"ok", 5)      # the store is still usable
    assert await store.get("cancel-test") == b"ok"
    assert store.stats()["breaker"] == "closed" and store.stats()["errors"] == 0


async def test_tiered_store(redis_server: RedisServer, prefix: str) -> None:
    store = make_store("tiered", redis_url=redis_server.url, memory_bytes=10_000,
                       max_entry_bytes=1000, timeout_s=0.5)
    assert isinstance(store, TieredStore)
    other = RedisStore(redis_server.url, timeout_s=0.5)   # another replica
    try:
        await other.set(prefix + "k", b"shared", 60)
        assert await store.get(prefix + "k") == b"shared"          # from redis
        assert await store.get(prefix + "k") == b"shared"          # from memory
        assert await store.mget([prefix + "k", prefix + "x"]) == [b"shared", None]
        stats = store.stats()
        assert stats["back_hits"] == 1 and stats["front_hits"] == 2
    finally:
        await other.close()
        await store.close()


def test_make_store_and_redaction() -> None:
    assert make_store("memory", redis_url="", memory_bytes=10, max_entry_bytes=5,
                      timeout_s=0.1).name == "memory"
    with pytest.raises(ValueError, match="unknown cache backend"):
        make_store("memcached", redis_url="", memory_bytes=10, max_entry_bytes=5, timeout_s=0.1)
    assert redact_url("redis://:secret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("rediss://u:pw@h/1") == "rediss://u:***@h/1"
    assert redact_url("unix:///tmp/r.sock") == "unix:///tmp/r.sock"
