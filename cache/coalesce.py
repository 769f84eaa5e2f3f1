"""Coalescing of concurrent identical cache misses.

Called by the proxy after a cache miss: `await coalescer.run(key, forward)`.
While a call for `key` is in flight, later calls with the same key await the
same result instead of calling the backend again.

Guarantees:
- the factory runs in its own named task, referenced in `_inflight` until it
  finishes, so it is never garbage-collected mid-flight;
- cancelling any caller (the leader included) does not cancel the shared
  task: the other callers still get its result (each awaits it shielded);
- an exception reaches every caller, and the entry is removed when the task
  finishes, so the next call for the key runs the factory again;
- the result is not cached here: a call after completion starts a new task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

log = logging.getLogger("cache")
T = TypeVar("T")


class Coalescer:
    """Share one in-flight factory call per key among concurrent callers."""

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Task[Any]] = {}
        self._leaders = 0
        self._coalesced = 0

    async def run(self, key: str, factory: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """(result, was_coalesced): was_coalesced is True for callers that joined a flight."""
        task = self._inflight.get(key)
        joined = task is not None and not task.done()
        if task is None or not joined:
            task = asyncio.create_task(_call(factory), name=f"cache-coalesce:{key}")
            self._inflight[key] = task
            task.add_done_callback(lambda t: self._finished(key, t))
            self._leaders += 1
        else:
            self._coalesced += 1
        result = await asyncio.shield(task)
        return cast(T, result), joined

    def _finished(self, key: str, task: asyncio.Task[Any]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        # Mark the exception retrieved: every caller may have been cancelled.
        if not task.cancelled() and task.exception() is not None:
            log.debug("coalesced call for %s failed: %r", key, task.exception())

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def stats(self) -> dict[str, int]:
        return {"inflight": len(self._inflight), "leaders": self._leaders,
                "coalesced": self._coalesced}

    async def close(self) -> None:
        """Cancel flights still running (proxy shutdown) and wait for them."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel("cache coalescer closing")
        await asyncio.gather(*tasks, return_exceptions=True)


async def _call(factory: Callable[[], Awaitable[T]]) -> T:
    return await factory()
