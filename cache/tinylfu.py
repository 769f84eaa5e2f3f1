"""W-TinyLFU memory store: frequency-aware admission and eviction under a byte budget.

Called where a MemoryStore is (make_store with admission "tinylfu", and as
TieredStore's front); same interface and guarantees as cache.memory.MemoryStore
(byte budget, TTL, max_entry_bytes, counters), plus `rejected`. Its
miss-ratio curve (cache.mrc) runs miniature TinyLfuStores (`_miniature`:
budget and sketch floor scaled by the sampling rate), so the curve is
W-TinyLFU's own.

Policy (Einziger, Friedman & Manes, "TinyLFU: A Highly Efficient Cache
Admission Policy", ACM ToS 2017; as in Caffeine): every get counts the key in
a count-min sketch with aging (cache.sketch), hits and misses alike. New
entries enter a small LRU *window* (1 % of the bytes). An entry pushed out of
the window is a *candidate* for the main region, a segmented LRU: *probation*
(new and demoted entries) and *protected* (80 % of the main bytes, entries hit
again while on probation; its overflow is demoted to probation). While the
store is over budget the candidate duels the main region's victim (probation's
least recent entry, protected's if probation is empty): it is admitted only if
its estimated frequency is strictly higher, otherwise it is dropped (counted
as `rejected`). So a burst of one-off keys (a scan) cycles through the window
and never displaces entries that are asked for again and again, while a key
that becomes popular earns its way in.

Differences from Caffeine: fixed window (no hill climbing), no doorkeeper, no
random admission of warm candidates (Caffeine's guard against hash flooding:
Python salts str hashes per process, so clients cannot aim collisions).
Cost per operation: one cached str hash, 4 counter updates (skipped for an
entry whose counters are known to be saturated until the next aging: the
hot keys, most of the hits), one or two OrderedDict moves.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from cache.memory import MemoryStore, _Entry
from cache.mrc import M32
from cache.sketch import FrequencySketch

WINDOW, PROBATION, PROTECTED = 0, 1, 2
WINDOW_FRACTION = 0.01
PROTECTED_FRACTION = 0.8
SKETCH_PER_ENTRY = 4
SKETCH_FLOOR = 256


class TinyLfuStore(MemoryStore):
    """W-TinyLFU over a byte budget; see module docstring. `_entries` is the index."""

    admission = "tinylfu"
    policy = "w-tinylfu"

    def __init__(self, max_bytes: int, max_entry_bytes: int,
                 clock: Callable[[], float] = time.monotonic, *,
                 mrc_keys: int = 0, mrc_rate: float = 0.1,
                 sketch_floor: int = SKETCH_FLOOR) -> None:
        super().__init__(max_bytes, max_entry_bytes, clock, mrc_keys=mrc_keys, mrc_rate=mrc_rate)
        self._budget_changed()
        self._window: OrderedDict[str, _Entry] = OrderedDict()
        self._probation: OrderedDict[str, _Entry] = OrderedDict()
        self._protected: OrderedDict[str, _Entry] = OrderedDict()
        self._regions = (self._window, self._probation, self._protected)
        self._window_bytes = self._probation_bytes = self._protected_bytes = 0
        # 4 counters per row per entry, as Caffeine's (16 four-bit counters per
        # entry); sized for ~2 KB entries at first, grown with the entry count.
        # A miniature (cache.mrc) scales the floor by its sampling rate.
        self._sketch = FrequencySketch(max(sketch_floor,
                                           SKETCH_PER_ENTRY * (max_bytes // 2048)))

    def _miniature(self, max_bytes: int, rate: float) -> TinyLfuStore:
        """A miss-ratio curve's point (cache.mrc): W-TinyLFU at `max_bytes`, its
        window, segments and sketch all scaled with the budget, no curve of its own."""
        return TinyLfuStore(max_bytes, self._max_entry_bytes, self._clock,
                            sketch_floor=max(1, round(SKETCH_FLOOR * rate)))

    def get_now(self, key: str) -> bytes | None:
        """Synchronous get: counts the key's frequency, refreshes its recency,
        and promotes an entry hit on probation to protected."""
        entry = self._entries.get(key)
        h = hash(key)
        sketch = self._sketch
        if entry is None:
            sketch.increment(h)
        elif entry.saturated != sketch.epoch and sketch.increment(h):
            entry.saturated = sketch.epoch      # increments are no-ops until the next aging
        mrc = self._mrc
        if mrc is not None:
            mrc.refs += 1
            if h & M32 < mrc.threshold:
                mrc.reference(key, 0 if entry is None else entry.size)
        if entry is None:
            return None
        if entry.expires_at <= self._clock():
            self._drop(key, entry)
            self._counters.expirations += 1
            return None
        region = entry.region
        if region == PROTECTED:
            self._protected.move_to_end(key)
        elif region == PROBATION:
            self._promote(key, entry)
        else:
            self._window.move_to_end(key)
        if mrc is not None:
            mrc.hits += 1
        return entry.value

    def set_now(self, key: str, value: bytes, ttl_s: float) -> None:
        """Synchronous set: a new key enters the window; then the window's overflow
        duels for the main region, and the budget is restored."""
        size = len(key) + len(value)
        if ttl_s <= 0:
            return
        if len(value) > self._max_entry_bytes or size > self._max_bytes:
            self._counters.refused += 1
            return
        expires_at = self._clock() + ttl_s
        entry = self._entries.get(key)
        if entry is not None:           # replace in place: same segment, most recent
            self._add_bytes(entry.region, size - entry.size)
            entry.value, entry.expires_at, entry.size = value, expires_at, size
            self._regions[entry.region].move_to_end(key)
        else:
            entry = _Entry(value, expires_at, size, WINDOW)
            self._entries[key] = entry
            self._window[key] = entry
            self._window_bytes += size
            self._bytes += size
            if SKETCH_PER_ENTRY * len(self._entries) > self._sketch.width:
                self._sketch.grow(SKETCH_PER_ENTRY * len(self._entries))
        self._resized(key, size, ttl_s)
        if self._window_bytes > self._window_max or self._bytes > self._max_bytes:
            self._evict()

    async def close(self) -> None:
        await super().close()
        for region in self._regions:
            region.clear()
        self._window_bytes = self._probation_bytes = self._protected_bytes = 0

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        out.update(window_bytes=self._window_bytes, probation_bytes=self._probation_bytes,
                   protected_bytes=self._protected_bytes, sketch_width=self._sketch.width)
        return out

    # -- internals ----------------------------------------------------------------

    def _budget_changed(self) -> None:
        self._window_max = max(int(self._max_bytes * WINDOW_FRACTION), 1)
        self._protected_max = int((self._max_bytes - self._window_max) * PROTECTED_FRACTION)

    def _fit(self) -> None:
        """After `rescale`: the segments to their new shares, then the budget."""
        self._demote()
        self._evict()

    def _evict(self) -> None:
        window = self._window
        while self._window_bytes > self._window_max and window:
            key, candidate = window.popitem(last=False)
            self._window_bytes -= candidate.size
            candidate.region = PROBATION
            self._probation[key] = candidate
            self._probation_bytes += candidate.size
            if self._bytes > self._max_bytes:
                self._duel(key, candidate)
        while self._bytes > self._max_bytes:
            self._evict_one()

    def _duel(self, key: str, candidate: _Entry) -> None:
        """Admit `candidate` (on probation, most recent) only over less frequent victims."""
        freq = self._sketch.frequency(hash(key))
        while self._bytes > self._max_bytes:
            victim_key = next(iter(self._probation))
            if victim_key == key:                       # probation holds only the candidate
                victim_key = next(iter(self._protected), key)
            if victim_key == key:                       # nothing else in main: cannot fit
                self._drop(key, candidate)
                self._counters.evictions += 1
                return
            victim = self._entries[victim_key]
            if (victim.saturated != self._sketch.epoch     # else its frequency is the cap
                    and freq > self._sketch.frequency(hash(victim_key))):
                self._drop(victim_key, victim)
                self._counters.evictions += 1
            else:
                self._drop(key, candidate)
                self._counters.rejected += 1
                return

    def _evict_one(self) -> None:
        """Plain eviction when no candidate is dueling (e.g. a replaced entry grew)."""
        for region in (self._probation, self._protected, self._window):
            if region:
                key = next(iter(region))
                self._drop(key, region[key])
                self._counters.evictions += 1
                return

    def _promote(self, key: str, entry: _Entry) -> None:
        del self._probation[key]
        self._probation_bytes -= entry.size
        entry.region = PROTECTED
        self._protected[key] = entry
        self._protected_bytes += entry.size
        self._demote()

    def _demote(self) -> None:
        """Protected's overflow (least recent first) back to probation."""
        protected = self._protected
        while self._protected_bytes > self._protected_max and len(protected) > 1:
            k, demoted = protected.popitem(last=False)
            self._protected_bytes -= demoted.size
            demoted.region = PROBATION
            self._probation[k] = demoted
            self._probation_bytes += demoted.size

    def _add_bytes(self, region: int, delta: int) -> None:
        self._bytes += delta
        if region == WINDOW:
            self._window_bytes += delta
        elif region == PROBATION:
            self._probation_bytes += delta
        else:
            self._protected_bytes += delta

    def _drop(self, key: str, entry: _Entry) -> None:
        del self._entries[key]
        del self._regions[entry.region][key]
        self._add_bytes(entry.region, -entry.size)
