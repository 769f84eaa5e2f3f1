"""lb.request.flights.Flights: one backend call per key in flight, no Task per flight."""

from __future__ import annotations

import asyncio

import pytest

from lb.errors import DeadlineExceeded
from lb.request.call import Deadline
from lb.request.flights import Flights


def _far() -> Deadline:
    return Deadline.after(30.0)


async def test_concurrent_identical_calls_share_one_factory_call() -> None:
    f = Flights()
    calls = 0
    gate = asyncio.Event()

    async def factory() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        return "result"

    runs = [asyncio.create_task(f.run("k", factory, _far())) for _ in range(10)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*runs)
    assert calls == 1
    assert [r for r, _ in results] == ["result"] * 10
    assert sorted(joined for _, joined in results) == [False] + [True] * 9
    assert f.inflight == 0 and f.stats() == {"inflight": 0, "leaders": 1, "joined": 9}


async def test_different_keys_do_not_share() -> None:
    f = Flights()

    async def factory() -> int:
        await asyncio.sleep(0.01)
        return 1

    results = await asyncio.gather(f.run("a", factory, _far()), f.run("b", factory, _far()))
    assert list(results) == [(1, False), (1, False)]


async def test_leader_cancelled_a_follower_takes_over_and_all_get_the_result() -> None:
    f = Flights()
    gates: list[asyncio.Event] = []

    async def factory() -> str:
        gate = asyncio.Event()
        gates.append(gate)
        await gate.wait()
        return "ok"

    leader = asyncio.create_task(f.run("k", factory, _far()))
    await asyncio.sleep(0)
    followers = [asyncio.create_task(f.run("k", factory, _far())) for _ in range(3)]
    await asyncio.sleep(0)
    leader.cancel()                        # its client left: its own call is cancelled
    with pytest.raises(asyncio.CancelledError):
        await leader
    for _ in range(20):                    # the followers wake within a few loop turns
        await asyncio.sleep(0)
    assert len(gates) == 2                 # exactly one follower became the new leader
    gates[1].set()
    results = await asyncio.gather(*followers)
    assert sorted(results) == [("ok", False), ("ok", True), ("ok", True)]
    assert f.inflight == 0


async def test_exception_reaches_all_followers_and_next_call_runs_again() -> None:
    f = Flights()
    gate = asyncio.Event()
    calls = 0

    async def failing() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise RuntimeError("backend down")

    runs = [asyncio.create_task(f.run("k", failing, _far())) for _ in range(4)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*runs, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert calls == 1 and f.inflight == 0

    async def ok() -> str:
        return "recovered"

    assert await f.run("k", ok, _far()) == ("recovered", False)


async def test_a_follower_waits_only_until_its_own_deadline() -> None:
    f = Flights()
    gate = asyncio.Event()

    async def slow() -> str:
        await gate.wait()
        return "late"

    leader = asyncio.create_task(f.run("k", slow, _far()))
    await asyncio.sleep(0)
    with pytest.raises(DeadlineExceeded):
        await f.run("k", slow, Deadline.after(0.05))
    gate.set()
    assert await leader == ("late", False)


async def test_cancelled_follower_does_not_disturb_the_leader() -> None:
    f = Flights()
    gate = asyncio.Event()

    async def factory() -> str:
        await gate.wait()
        return "ok"

    leader = asyncio.create_task(f.run("k", factory, _far()))
    await asyncio.sleep(0)
    follower = asyncio.create_task(f.run("k", factory, _far()))
    await asyncio.sleep(0)
    follower.cancel()
    gate.set()
    assert await leader == ("ok", False)
    with pytest.raises(asyncio.CancelledError):
        await follower
