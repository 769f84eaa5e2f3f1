"""What memory would buy: an online miss-ratio curve by miniature simulation.

Called by the memory stores (cache.memory, cache.tinylfu), which build it with a
factory of miniatures of themselves (`MemoryStore._miniature`): on every get
they count `refs` and, for a key whose hash falls under `threshold`, call
`reference(key, size)`; on a set of such a key, `filled(key, size, ttl_s)`.
`curve()` and `sampling()` feed their stats. Pure and synchronous; memory is
bounded by `max_keys` entries held by the miniatures.

Method (Waldspurger, Saemundsson, Ahmad & Park, "Cache Modeling and
Optimization using Miniature Simulations", USENIX ATC 2017): a key is sampled
iff the low 32 bits of its hash are under a threshold T, i.e. at rate
R = T / 2**32 (SHARDS' spatial sampling), so every reference to a sampled key
is seen. Each point of the curve (0.5×, 1×, 2×, 4× the budget) is a miniature
of the store that runs, the same class with the same policy (W-TinyLFU's
window, sketch and segments, or LRU), its byte budget scaled by R (and its
sketch's floor width with it, to a power of two, so the sketch ages after
about as many sampled references as the full store's after all of them), fed
only the sampled references: a get per reference, a fill where the miniature
missed (with the entry's size if the store holds it, else at the store's own
fill, `filled`), and the store's own fills of keys a miniature does not hold.
Entries keep their true sizes; a miniature holds lengths, not values. A miss weighs 1/R; the
miniatures' hit rates (`simulated`) divide by the true reference count
(`refs`), not the sampled one (SHARDS_adj: hot keys that happen to be in or
out of the sample are corrected for). The published curve (`curve`) is
anchored on the store's measured hit rate over the same lookups (`hits`): the
measured miss ratio times each miniature's miss ratio over the 1× one's, so
the luck of the sample, shared by the four miniatures, cancels.

Fixed size: past `max_keys` entries over all miniatures, T drops by a quarter,
the miniatures drop the keys no longer sampled and shrink to the new rate
(`MemoryStore.rescale`); older misses keep their 1/R_old weight. History halves
every `16 · max_keys` samples, so the curve follows a changing workload.

Cost per sampled reference: one get per miniature, a set per miniature that
missed; at most 4 lookups and 4 fills, each the store's own O(1) amortised
work; the entries are counted only when the fills since the last count could
pass `max_keys`. TTLs are the store's (the last one set); expiry is checked as
the store does.

Accuracy (scripts/bench_cache.py `curve`, tests/cache/test_mrc.py): within 2
points of the store run at 0.5×–4× on Zipf(0.9), with or without one-off scans,
down to miniatures of a few dozen entries (0.05 MB at R = 0.1). A loop a little
longer than the cache is the weak case: its hit rate falls off a cliff with
the loop's length, and a sampled loop of a few dozen keys is a coarse copy of
it (`simulated` at 1× far from the measured rate says so).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, cast

M32 = 0xFFFFFFFF
SIZES = {"0.5": 0.5, "1": 1.0, "2": 2.0, "4": 4.0}
_LOWER = 0.75                   # T's step down when the miniatures hold too much


class Miniature(Protocol):
    """What the curve needs of a store (cache.memory.MemoryStore and its subclasses)."""

    def get_now(self, key: str) -> bytes | None: ...

    def set_now(self, key: str, value: bytes, ttl_s: float) -> None: ...

    def rescale(self, max_bytes: int, keep: Callable[[str], bool]) -> None: ...

    def __len__(self) -> int: ...

    def __contains__(self, key: str) -> bool: ...


class _Length:
    """A miniature's value: only its length is ever read (the store sizes entries by it)."""

    __slots__ = ("n",)

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n


class MissRatioCurve:
    """Miniature simulations over a spatial sample; see module docstring.

    `make(max_bytes, rate)` builds one miniature of the store (rate: the sampling
    rate it stands for, so it can scale what else it sizes by the budget)."""

    def __init__(self, budget_bytes: int, make: Callable[[int, float], Miniature],
                 max_keys: int = 8192, rate: float = 0.1, policy: str = "lru") -> None:
        if budget_bytes <= 0 or max_keys < 1 or not 0 < rate <= 1:
            raise ValueError("need budget_bytes > 0, max_keys >= 1, 0 < rate <= 1")
        self.threshold = max(1, min(int(rate * 2**32), 2**32))  # sample iff hash & M32 < it
        self.refs = 0                  # every lookup, counted by the store
        self.hits = 0                  # the store's own hits among them, counted by it
        self.policy = policy
        self._budget = budget_bytes
        self._max_keys = max_keys
        self._weight = 2**32 / self.threshold
        r = self.rate
        self._minis: Sequence[Miniature] = [make(self._scaled(f, r), r) for f in SIZES.values()]
        self._missed = [0.0] * len(SIZES)       # sampled misses, each weighing 1/R
        self._ttl = 1e18                        # the store's latest TTL, for self-fills
        self._samples = 0
        self._horizon = 16 * max_keys
        self._room = max_keys           # fills left before the entries are counted again

    @property
    def rate(self) -> float:
        return self.threshold / 2**32

    def __len__(self) -> int:
        """Entries held over all miniatures (at most `max_keys` after any call)."""
        return sum(len(m) for m in self._minis)

    def reference(self, key: str, size: int) -> None:
        """A lookup of the sampled `key`; `size` is its entry's bytes in the store
        (0 on a miss: the store's fill, `filled`, fills the miniatures that missed)."""
        self._samples += 1
        if self._samples >= self._horizon:
            self._decay()
        weight = self._weight
        missed = self._missed
        for i, mini in enumerate(self._minis):
            if mini.get_now(key) is None:
                missed[i] += weight
                if size:
                    mini.set_now(key, cast(bytes, _Length(size - len(key))), self._ttl)
                    self._room -= 1
        if self._room < 0:
            self._bound()

    def filled(self, key: str, size: int, ttl_s: float) -> None:
        """The store set the sampled `key` to an entry of `size` bytes (its fill after
        a miss): every miniature that does not hold the key fills it too."""
        self._ttl = ttl_s
        value = cast(bytes, _Length(size - len(key)))
        for mini in self._minis:
            if key not in mini:
                mini.set_now(key, value, ttl_s)
                self._room -= 1
        if self._room < 0:
            self._bound()

    def simulated(self) -> dict[str, float]:
        """The miniatures' own hit rates at 0.5×, 1×, 2×, 4× (SHARDS_adj): their 1×
        point against the store's measured rate shows the sampling error."""
        refs = self.refs
        if refs <= 0:
            return {name: 0.0 for name in SIZES}
        return {name: round(_clip(1.0 - missed / refs), 4)
                for name, missed in zip(SIZES, self._missed, strict=True)}

    def curve(self) -> dict[str, float]:
        """Estimated hit rate at 0.5×, 1×, 2×, 4× the budget: the store's measured
        miss ratio times each miniature's miss ratio over the 1× miniature's (a
        ratio estimator: the sample's luck, shared by all miniatures, cancels), so
        the 1× point is the measured hit rate. Falls back to `simulated` while the
        1× miniature has not missed."""
        refs, base = self.refs, self._missed[1]
        if refs <= 0 or base <= 0:
            return self.simulated()
        measured_miss = 1.0 - min(self.hits, refs) / refs
        return {name: round(_clip(1.0 - measured_miss * missed / base), 4)
                for name, missed in zip(SIZES, self._missed, strict=True)}

    def sampling(self) -> dict[str, float | int | str]:
        """What the curve models and from how much: for the store's stats."""
        return {"policy": self.policy, "method": "miniature", "rate": self.rate,
                "keys": len(self), "lookups": self.refs, "hits": self.hits}

    # -- internals ----------------------------------------------------------------

    def _scaled(self, factor: float, rate: float) -> int:
        return max(1, int(factor * self._budget * rate))

    def _bound(self) -> None:
        """Fixed size: lower T until the miniatures hold at most `max_keys` entries
        (counted here only, when the fills since the last count could exceed it)."""
        held = len(self)
        while held > self._max_keys and self.threshold > 1:
            self.threshold = max(1, int(self.threshold * _LOWER))
            self._weight = 2**32 / self.threshold
            keep = _Under(self.threshold)
            for factor, mini in zip(SIZES.values(), self._minis, strict=True):
                mini.rescale(self._scaled(factor, self.rate), keep)
            held = len(self)
        self._room = self._max_keys - held

    def _decay(self) -> None:
        self._missed = [v / 2 for v in self._missed]
        self.refs //= 2
        self.hits //= 2
        self._samples = 0


class _Under:
    """Whether a key is still sampled under threshold `t` (for `rescale`)."""

    __slots__ = ("t",)

    def __init__(self, t: int) -> None:
        self.t = t

    def __call__(self, key: str) -> bool:
        return hash(key) & M32 < self.t


def _clip(v: float) -> float:
    return min(max(v, 0.0), 1.0)
