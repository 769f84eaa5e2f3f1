"""In-process LRU store with a byte budget and per-entry TTL.

Called by `ResultCache` (backend "memory") and by `TieredStore` as its front,
built by `cache.store.make_store` (admission "lru"; "tinylfu" is the subclass
in cache.tinylfu). Single event loop, no awaits inside: every method is atomic
with respect to other coroutines, so no lock is needed.

Guarantees: the sum of len(key) + len(value) over stored entries never
exceeds `max_bytes` (least recently used entries are evicted first); an entry
larger than `max_entry_bytes` (or the whole budget) is refused; an expired
entry is never returned (expiry on time.monotonic(), checked on read). With
`mrc_keys` > 0 every get also feeds a miss-ratio curve (cache.mrc), shown in
`stats()["mrc"]`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cache.mrc import M32, MissRatioCurve

log = logging.getLogger("cache")


@dataclass(slots=True)
class _Entry:
    value: bytes
    expires_at: float
    size: int
    region: int = 0          # cache.tinylfu: its segment, and the sketch epoch in
    saturated: int = -1      # which its counters were seen saturated; unused by the LRU


@dataclass(slots=True)
class _MemoryCounters:
    evictions: int = 0
    expirations: int = 0
    refused: int = 0
    rejected: int = 0        # W-TinyLFU: window candidates that lost the admission duel


class MemoryStore:
    """LRU (OrderedDict, most recent last) bounded by bytes; see module docstring."""

    name = "memory"
    admission = "lru"

    def __init__(self, max_bytes: int, max_entry_bytes: int,
                 clock: Callable[[], float] = time.monotonic, *,
                 mrc_keys: int = 0, mrc_rate: float = 0.1) -> None:
        if max_bytes <= 0 or max_entry_bytes <= 0:
            raise ValueError("max_bytes and max_entry_bytes must be positive")
        self._max_bytes = max_bytes
        self._max_entry_bytes = max_entry_bytes
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._counters = _MemoryCounters()
        self._mrc = MissRatioCurve(max_bytes, mrc_keys, mrc_rate) if mrc_keys > 0 else None

    async def get(self, key: str) -> bytes | None:
        return self.get_now(key)

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self.get_now(k) for k in keys]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self.set_now(key, value, ttl_s)

    async def close(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def peek(self, key: str) -> bytes | None:
        """The synchronous hit path's get (`ResultCache.peek`): a hit is a `get_now`;
        a miss counts nothing (no frequency, no miss-ratio-curve reference), because
        the caller then does the full lookup, which counts it once."""
        entry = self._entries.get(key)
        if entry is None or entry.expires_at <= self._clock():
            return None
        return self.get_now(key)

    def get_now(self, key: str) -> bytes | None:
        """Synchronous get (the store never blocks); refreshes the entry's recency."""
        entry = self._entries.get(key)
        mrc = self._mrc
        if mrc is not None:
            mrc.refs += 1
            h = hash(key)
            if h & M32 < mrc.threshold:
                mrc.reference(h, 0 if entry is None else entry.size)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            self._drop(key, entry)
            self._counters.expirations += 1
            return None
        self._entries.move_to_end(key)
        return entry.value

    def set_now(self, key: str, value: bytes, ttl_s: float) -> None:
        """Synchronous set: replace, then evict LRU entries until within budget."""
        size = len(key) + len(value)
        if ttl_s <= 0:
            return
        if len(value) > self._max_entry_bytes or size > self._max_bytes:
            self._counters.refused += 1
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        self._entries[key] = _Entry(value, self._clock() + ttl_s, size)
        self._bytes += size
        self._resized(key, size)
        while self._bytes > self._max_bytes:
            lru_key, lru = next(iter(self._entries.items()))
            self._drop(lru_key, lru)
            self._counters.evictions += 1

    def _resized(self, key: str, size: int) -> None:
        mrc = self._mrc
        if mrc is not None:
            h = hash(key)
            if h & M32 < mrc.threshold:
                mrc.resize(h, size)

    def _drop(self, key: str, entry: _Entry) -> None:
        del self._entries[key]
        self._bytes -= entry.size

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict[str, Any]:
        c = self._counters
        out: dict[str, Any] = {
            "name": self.name, "admission": self.admission, "entries": len(self._entries),
            "bytes": self._bytes, "max_bytes": self._max_bytes, "evictions": c.evictions,
            "expirations": c.expirations, "refused": c.refused, "rejected": c.rejected,
            "errors": 0,
        }
        mrc = self._mrc
        if mrc is not None:
            out["mrc"] = mrc.curve()
            out["mrc_sampling"] = {"rate": mrc.rate, "keys": len(mrc), "lookups": mrc.refs}
        return out
