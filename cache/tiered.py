"""Tiered store: an in-process MemoryStore in front of a shared RedisStore.

Called by `ResultCache` (backend "tiered"). Reads try memory first, then
Redis; a Redis hit is copied into memory for at most `front_ttl_s` (the
remaining Redis TTL is unknown, so the copy is kept short). Writes go to
both. Inherits both stores' guarantees: never raises for backend trouble,
every Redis call has a deadline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cache.memory import MemoryStore

if TYPE_CHECKING:       # the Redis client library loads only with a Redis backend
    from cache.redis_store import RedisStore


class TieredStore:
    """Memory front + Redis back; see module docstring."""

    name = "tiered"

    def __init__(self, front: MemoryStore, back: RedisStore, front_ttl_s: float = 5.0) -> None:
        self._front = front
        self._back = back
        self._front_ttl_s = front_ttl_s
        self._front_hits = 0
        self._back_hits = 0

    def peek(self, key: str) -> bytes | None:
        """A hit from the memory front only (`ResultCache.peek`); None: ask `get`."""
        value = self._front.get_now(key)
        if value is not None:
            self._front_hits += 1
        return value

    async def get(self, key: str) -> bytes | None:
        value = self._front.get_now(key)
        if value is not None:
            self._front_hits += 1
            return value
        value = await self._back.get(key)
        if value is not None:
            self._back_hits += 1
            self._front.set_now(key, value, self._front_ttl_s)
        return value

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        values = [self._front.get_now(k) for k in keys]
        missing = [i for i, v in enumerate(values) if v is None]
        self._front_hits += len(keys) - len(missing)
        if not missing:
            return values
        fetched = await self._back.mget([keys[i] for i in missing])
        for i, value in zip(missing, fetched, strict=True):
            if value is not None:
                self._back_hits += 1
                self._front.set_now(keys[i], value, self._front_ttl_s)
                values[i] = value
        return values

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self._front.set_now(key, value, min(ttl_s, self._front_ttl_s))
        await self._back.set(key, value, ttl_s)

    async def close(self) -> None:
        await self._front.close()
        await self._back.close()

    def stats(self) -> dict[str, Any]:
        front, back = self._front.stats(), self._back.stats()
        return {
            "name": self.name, "front_hits": self._front_hits, "back_hits": self._back_hits,
            "errors": front["errors"] + back["errors"], "memory": front, "redis": back,
        }
