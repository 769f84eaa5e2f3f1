"""Coalescing concurrent identical cache misses, without a Task per flight.

Called by `lb.request.core` after a whole-request miss: `await flights.run(key,
factory, deadline)`. The first caller for a key (the leader) runs `factory`
itself; callers that arrive while it runs (followers) await its result.

Guarantees:
* one backend call per key at a time; followers get the leader's result or
  its exception (errors are not cached: the next caller runs the factory);
* a follower waits at most until its own deadline (`DeadlineExceeded`);
  cancelling a follower never disturbs the leader or the others;
* cancelling the leader (its client left) does not fail the followers: they
  wake with `LeaderGone` internally and one of them becomes the new leader,
  so a request that could be served is served;
* no Task is created: the leader's own coroutine does the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from lb.errors import DeadlineExceeded
from lb.request.call import Deadline

T = TypeVar("T")


class LeaderGone(Exception):
    """The leader of a flight was cancelled; a follower takes over."""


class Flights:
    """In-flight factory calls by key; see the module docstring."""

    def __init__(self) -> None:
        self._flights: dict[str, asyncio.Future[Any]] = {}
        self.leaders = 0
        self.joined = 0

    async def run(self, key: str, factory: Callable[[], Awaitable[T]],
                  deadline: Deadline) -> tuple[T, bool]:
        """(result, joined): joined is True when this caller shared another's call."""
        while True:
            flight = self._flights.get(key)
            if flight is None:
                return await self._lead(key, factory), False
            try:
                result = await asyncio.wait_for(asyncio.shield(flight), deadline.check())
            except LeaderGone:
                continue
            except TimeoutError:
                raise DeadlineExceeded("Deadline exceeded") from None
            self.joined += 1
            return cast(T, result), True

    async def _lead(self, key: str, factory: Callable[[], Awaitable[T]]) -> T:
        flight: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._flights[key] = flight
        self.leaders += 1
        try:
            result = await factory()
        except asyncio.CancelledError:
            self._settle(key, flight, exc=LeaderGone())
            raise
        except BaseException as exc:
            self._settle(key, flight, exc=exc)
            raise
        self._settle(key, flight, result=result)
        return result

    def _settle(self, key: str, flight: asyncio.Future[Any], result: Any = None,
                exc: BaseException | None = None) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if exc is None:
            flight.set_result(result)
            return
        flight.set_exception(exc)
        flight.exception()          # retrieved: there may be no follower

    @property
    def inflight(self) -> int:
        return len(self._flights)

    def stats(self) -> dict[str, int]:
        return {"inflight": len(self._flights), "leaders": self.leaders, "joined": self.joined}
