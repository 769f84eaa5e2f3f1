"""In-process LRU store with a byte budget and per-entry TTL.

Called by `ResultCache` (backend "memory") and by `TieredStore` as its front,
built by `cache.store.make_store` (admission "lru"; "tinylfu" is the subclass
in cache.tinylfu). Single event loop, no awaits inside: every method is atomic
with respect to other coroutines, so no lock is needed.

Guarantees: the sum of len(key) + len(value) over stored entries never
exceeds `max_bytes` (least recently used entries are evicted first); an entry
larger than `max_entry_bytes` (or the whole budget) is refused; an expired
entry is never returned (expiry on time.monotonic(), checked on read). With
`mrc_keys` > 0 every get and set of a sampled key also feeds a miss-ratio curve
(cache.mrc): miniatures of this very store (`_miniature`, resized by `rescale`),
shown in `stats()["mrc"]` and `stats()["mrc_sampling"]`.
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
    policy = "lru"           # what the miss-ratio curve says it models

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
        self._mrc = (MissRatioCurve(max_bytes, self._miniature, mrc_keys, mrc_rate,
                                    self.policy) if mrc_keys > 0 else None)

    def _miniature(self, max_bytes: int, rate: float) -> MemoryStore:
        """One point of the miss-ratio curve (cache.mrc): this store's policy at
        `max_bytes`, standing for a store 1/`rate` times larger; no curve of its own."""
        return type(self)(max_bytes, self._max_entry_bytes, self._clock)

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
                mrc.reference(key, 0 if entry is None else entry.size)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            self._drop(key, entry)
            self._counters.expirations += 1
            return None
        self._entries.move_to_end(key)
        if mrc is not None:
            mrc.hits += 1
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
        self._resized(key, size, ttl_s)
        self._fit()

    def rescale(self, max_bytes: int, keep: Callable[[str], bool]) -> None:
        """A miniature's shrink (cache.mrc, when its sampling rate drops): drop the
        entries whose key `keep` refuses, take `max_bytes` as the budget, and evict
        as the policy does until within it. O(entries)."""
        for key in [k for k in self._entries if not keep(k)]:
            self._drop(key, self._entries[key])
        self._max_bytes = max(1, max_bytes)
        self._budget_changed()
        self._fit()

    def _budget_changed(self) -> None:
        """Hook for subclasses sizing parts of the store by the budget."""

    def _fit(self) -> None:
        while self._bytes > self._max_bytes:
            lru_key, lru = next(iter(self._entries.items()))
            self._drop(lru_key, lru)
            self._counters.evictions += 1

    def _resized(self, key: str, size: int, ttl_s: float) -> None:
        mrc = self._mrc
        if mrc is not None and hash(key) & M32 < mrc.threshold:
            mrc.filled(key, size, ttl_s)

    def _drop(self, key: str, entry: _Entry) -> None:
        del self._entries[key]
        self._bytes -= entry.size

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        """Whether an entry (maybe expired) is held; counts nothing (cache.mrc)."""
        return key in self._entries

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
            out["mrc_simulated"] = mrc.simulated()
            out["mrc_sampling"] = mrc.sampling()
        return out
