"""What memory would buy: an online miss-ratio curve by spatial sampling (SHARDS).

Called by the memory stores (cache.memory, cache.tinylfu): on every get they
count `refs` and, for a key whose hash falls under `threshold`, call
`reference`; on a set of such a key, `resize`. `curve()` feeds their stats.
Pure and synchronous; memory is bounded by `max_keys` tracked keys.

Method (Waldspurger et al., "Efficient MRC Construction with SHARDS", FAST
2015): a key is sampled iff the low 32 bits of its hash are under a threshold
T, i.e. at rate R = T / 2**32, so every reference to a sampled key is seen.
Each sampled reference's byte-weighted LRU stack distance, the bytes of the
distinct sampled keys referenced since its previous reference, scaled by 1/R,
plus its own size, goes to a histogram with weight 1/R. Each tracked key
weighs its size at the timestamp of its last access; the bytes after a
timestamp are the running sum of what was placed after it minus what left
since (a Fenwick tree over timestamps: one O(log n) query and update per
reference; timestamps are compacted when they run out). A cache of C bytes run as LRU
would hit exactly the references with distance <= C. Fixed-size SHARDS: past
`max_keys` tracked keys, T drops to the largest tracked hash and those keys
are dropped; older samples keep their 1/R_old weight, which is the paper's
rescaling. SHARDS_adj: the hit ratio divides by the true reference count
(`refs`), not the sampled one, correcting for hot keys that happen to be in
or out of the sample. History halves every `16 · max_keys` samples, so the
curve follows a changing workload.

What it estimates: the hit rate of an LRU cache of 0.5×, 1×, 2×, 4× the
budget over the same lookups, ignoring TTL (expiry only lowers the real
rates). The memory tier may run W-TinyLFU instead (cache.tinylfu): on skewed
(Zipf-like) traffic and under scans TinyLFU hits at least as often as LRU of
the same size, usually more, so read the curve as a floor for TinyLFU, and
its slope (what doubling the memory adds) as the useful signal; on purely
recency-driven traffic (loops) TinyLFU's 1 % window can fall below LRU.
"""

from __future__ import annotations

import heapq
import math

M32 = 0xFFFFFFFF
SIZES = {"0.5": 0.5, "1": 1.0, "2": 2.0, "4": 4.0}
_STEPS = 64                    # histogram buckets per budget
_SPAN = 4                      # the histogram covers up to 4× the budget
_MIN_CAP = 256


class MissRatioCurve:
    """Fixed-size SHARDS over byte-weighted stack distances; see module docstring."""

    def __init__(self, budget_bytes: int, max_keys: int = 8192, rate: float = 0.1) -> None:
        if budget_bytes <= 0 or max_keys < 1 or not 0 < rate <= 1:
            raise ValueError("need budget_bytes > 0, max_keys >= 1, 0 < rate <= 1")
        self.threshold = max(1, min(int(rate * 2**32), 2**32))  # sample iff hash & M32 < it
        self.refs = 0                  # every lookup, counted by the store
        self._max_keys = max_keys
        self._bucket = budget_bytes / _STEPS
        self._hist = [0.0] * (_STEPS * _SPAN + 1)   # the last bucket: beyond 4× budget
        self._cold = 0.0
        self._weight = 2**32 / self.threshold
        self._last: dict[int, int] = {}             # key hash -> timestamp of last access
        self._heap: list[tuple[int, int]] = []      # (-spatial hash, key hash): max first
        # The bytes of the keys accessed after timestamp t: what was placed after t
        # (running sums, `_placed`) minus what was taken away since from after t
        # (a Fenwick tree over timestamps, `_tree`): one tree query and one tree
        # update per reference.
        self._cap = _MIN_CAP                        # timestamps until the next compaction
        self._placed = [0]                          # _placed[t + 1]: bytes placed at <= t
        self._tree = [0] * (self._cap + 1)          # removals, 1-based
        self._removed = 0
        self._size_at = [0] * self._cap             # the live weight at each timestamp
        self._samples = 0
        self._horizon = 16 * max_keys

    @property
    def rate(self) -> float:
        return self.threshold / 2**32

    def __len__(self) -> int:
        return len(self._last)

    def reference(self, h: int, size: int) -> None:
        """A lookup of the sampled key with hash `h`; `size` is its entry's bytes
        (0 when unknown, e.g. a miss: the later `resize` tells)."""
        if len(self._placed) > self._cap:
            self._compact()
        self._samples += 1
        if self._samples >= self._horizon:
            self._decay()
        ts = self._last.get(h)
        if ts is None:
            self._cold += self._weight
            self._place(h, size)
            heapq.heappush(self._heap, (-(h & M32), h))
            if len(self._last) > self._max_keys:
                self._lower()
            return
        own = size or self._size_at[ts]
        tree = self._tree
        upto = 0                                    # removals at timestamps <= ts
        i = ts + 1
        while i > 0:
            upto += tree[i]
            i &= i - 1
        placed = self._placed
        after = placed[-1] - placed[ts + 1] - (self._removed - upto)
        distance = after * self._weight + own
        index = min(max(math.ceil(distance / self._bucket) - 1, 0), len(self._hist) - 1)
        self._hist[index] += self._weight
        self._take(ts)
        self._place(h, own)

    def resize(self, h: int, size: int) -> None:
        """The sampled key `h` now holds `size` bytes (a fill)."""
        ts = self._last.get(h)
        if ts is not None and size != self._size_at[ts]:
            self._remove_at(ts, self._size_at[ts] - size)
            self._size_at[ts] = size

    def curve(self) -> dict[str, float]:
        """Estimated LRU hit rate at 0.5×, 1×, 2×, 4× the budget (SHARDS_adj)."""
        refs = self.refs
        if refs <= 0:
            return {name: 0.0 for name in SIZES}
        out: dict[str, float] = {}
        for name, factor in SIZES.items():
            upto = round(factor * _STEPS)
            missed = self._cold + sum(self._hist[upto:])
            out[name] = round(min(max(1.0 - missed / refs, 0.0), 1.0), 4)
        return out

    # -- internals ----------------------------------------------------------------

    def _place(self, h: int, size: int) -> None:
        """Key `h` accessed now, weighing `size` bytes."""
        ts = len(self._placed) - 1
        self._last[h] = ts
        self._size_at[ts] = size
        self._placed.append(self._placed[-1] + size)

    def _take(self, ts: int) -> None:
        """The weight at `ts` leaves (its key moved on, or is no longer sampled)."""
        weight = self._size_at[ts]
        if weight:
            self._size_at[ts] = 0
            self._remove_at(ts, weight)

    def _remove_at(self, ts: int, weight: int) -> None:
        self._removed += weight
        tree = self._tree
        n = len(tree)
        i = ts + 1
        while i < n:
            tree[i] += weight
            i += i & -i

    def _lower(self) -> None:
        """Fixed-size SHARDS: drop the largest spatial hash(es); T becomes that hash."""
        top = -self._heap[0][0]
        while self._heap and -self._heap[0][0] >= top:
            _, h = heapq.heappop(self._heap)
            self._take(self._last.pop(h))
        self.threshold = max(top, 1)
        self._weight = 2**32 / self.threshold

    def _decay(self) -> None:
        self._hist = [v / 2 for v in self._hist]
        self._cold /= 2
        self.refs //= 2
        self._samples = 0

    def _compact(self) -> None:
        """Renumber the tracked keys 0..n-1 in access order, with no removals yet;
        the timestamps are sized 4× the tracked keys (so the tree stays shallow
        and a compaction comes at most once per 3 n references)."""
        order = sorted(self._last.items(), key=lambda item: item[1])
        self._cap = min(max(_MIN_CAP, 4 * len(order)), 4 * self._max_keys + 4)
        sizes = [0] * self._cap
        placed = [0]
        for ts, (h, old) in enumerate(order):
            sizes[ts] = self._size_at[old]
            placed.append(placed[-1] + sizes[ts])
            self._last[h] = ts
        self._size_at, self._placed = sizes, placed
        self._tree = [0] * (self._cap + 1)
        self._removed = 0
