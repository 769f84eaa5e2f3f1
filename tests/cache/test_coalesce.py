"""cache.coalesce.Coalescer: one factory call per key in flight."""

from __future__ import annotations

import asyncio

import pytest

from cache.coalesce import Coalescer


async def test_concurrent_identical_calls_share_one_factory_call() -> None:
    c = Coalescer()
    calls = 0
    gate = asyncio.Event()

    async def factory() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        return "result"

    runs = [asyncio.create_task(c.run("k", factory)) for _ in range(10)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*runs)
    assert calls == 1
    assert [r for r, _ in results] == ["result"] * 10
    assert sorted(joined for _, joined in results) == [False] + [True] * 9
    assert c.inflight == 0 and c.stats()["coalesced"] == 9


async def test_different_keys_do_not_share() -> None:
    c = Coalescer()

    async def factory() -> int:
        await asyncio.sleep(0.01)
        return 1

    results = await asyncio.gather(c.run("a", factory), c.run("b", factory))
    assert list(results) == [(1, False), (1, False)]


async def test_leader_cancelled_waiters_still_get_the_result() -> None:
    c = Coalescer()
    gate = asyncio.Event()
    calls = 0

    async def factory() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        return "ok"

    leader = asyncio.create_task(c.run("k", factory))
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(c.run("k", factory)) for _ in range(3)]
    await asyncio.sleep(0)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    gate.set()
    assert await asyncio.gather(*waiters) == [("ok", True)] * 3
    assert calls == 1


async def test_exception_reaches_all_waiters_and_next_call_retries() -> None:
    c = Coalescer()
    gate = asyncio.Event()
    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise RuntimeError("backend down")

    runs = [asyncio.create_task(c.run("k", failing)) for _ in range(4)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*runs, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert calls == 1
    await asyncio.sleep(0)
    assert c.inflight == 0

    async def ok() -> str:
        return "recovered"

    assert await c.run("k", ok) == ("recovered", False)


async def test_all_callers_cancelled_the_flight_finishes() -> None:
    c = Coalescer()
    done = asyncio.Event()

    async def factory() -> str:
        await asyncio.sleep(0.01)
        done.set()
        return "ok"

    run = asyncio.create_task(c.run("k", factory))
    await asyncio.sleep(0)
    run.cancel()
    await asyncio.wait_for(done.wait(), 1.0)
    await asyncio.sleep(0)
    assert c.inflight == 0


async def test_close_cancels_flights() -> None:
    c = Coalescer()

    async def forever() -> None:
        await asyncio.sleep(60)

    run = asyncio.create_task(c.run("k", forever))
    await asyncio.sleep(0)
    await c.close()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert c.inflight == 0
