"""A count-min frequency sketch with aging, for TinyLFU admission.

Called by `cache.tinylfu.TinyLfuStore` on every get (`increment`) and on every
admission duel (`frequency`). Pure and synchronous.

Guarantees: `frequency(h)` is never below the key's own count (the
`increment(h)` calls, halved at each aging, capped at 15); it may be above
it through collisions, which the minimum over 4 rows keeps rare. Every
`sample` increments all counters are halved, so old popularity fades
(TinyLFU's "reset"); `grow` widens the rows without losing any estimate;
`increment` says when a key's counters are all saturated, which stays true
until the next aging (`epoch`).

Hashing: the caller passes `hash(key)` (a str caches its hash, so this costs
nothing after the dict lookup; SipHash is salted per process, so clients
cannot aim collisions at a victim). The 4 row indices come from that one
64-bit value by double hashing (Kirsch & Mitzenmacher): row i's index is
(a + i·b) mod width, a the low bits of h, b its high 32 bits made odd.
Counters are capped at 15: TinyLFU needs an entry's rank among others, not
its exact count.
"""

from __future__ import annotations

_CAP = 15
_HALVE = bytes(v >> 1 for v in range(256))
MAX_WIDTH = 1 << 22


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


class FrequencySketch:
    """4 rows × `width` byte counters; see module docstring.

    One bytearray per row (a list of ints would be ~15 % faster to update in
    CPython 3.11, for 8× the memory); at most 16 MB at MAX_WIDTH.
    """

    __slots__ = ("_mask", "_ops", "_r0", "_r1", "_r2", "_r3", "_sample", "epoch", "width")

    def __init__(self, width: int) -> None:
        self.width = min(_pow2(width), MAX_WIDTH)      # counters per row (read-only)
        self._mask = self.width - 1
        self._r0, self._r1, self._r2, self._r3 = (bytearray(self.width) for _ in range(4))
        self._ops = 0
        self._sample = 10 * self.width       # TinyLFU's sample size W (Caffeine: 10 × size)
        self.epoch = 0                       # agings so far (read-only)

    def increment(self, h: int) -> bool:
        """Count one occurrence of the key whose hash is `h`. True when its 4
        counters are all at the cap: until the next aging (`epoch` changes),
        further increments of it would change nothing, so callers may skip them.
        Only increments that change a counter count towards the sample, as in
        Caffeine."""
        m = self._mask
        a = h & m
        b = (h >> 32) | 1
        row = self._r0
        v0 = row[a]
        if v0 < _CAP:
            row[a] = v0 + 1
        a = (a + b) & m
        row = self._r1
        v1 = row[a]
        if v1 < _CAP:
            row[a] = v1 + 1
        a = (a + b) & m
        row = self._r2
        v2 = row[a]
        if v2 < _CAP:
            row[a] = v2 + 1
        a = (a + b) & m
        row = self._r3
        v3 = row[a]
        if v3 < _CAP:
            row[a] = v3 + 1
        low = min(v0, v1, v2, v3)
        if low < _CAP:
            self._ops += 1
            if self._ops >= self._sample:
                self.age()
                return False
        return low >= _CAP - 1

    def frequency(self, h: int) -> int:
        """Estimated occurrences of hash `h` (0–15), recent ones weighing more."""
        m = self._mask
        a = h & m
        b = (h >> 32) | 1
        f0 = self._r0[a]
        a = (a + b) & m
        f1 = self._r1[a]
        a = (a + b) & m
        f2 = self._r2[a]
        a = (a + b) & m
        return min(f0, f1, f2, self._r3[a])

    def age(self) -> None:
        """Halve every counter (C-speed translate), so history decays."""
        self._r0, self._r1, self._r2, self._r3 = (
            row.translate(_HALVE) for row in (self._r0, self._r1, self._r2, self._r3))
        self._ops //= 2
        self.epoch += 1

    def grow(self, width: int) -> None:
        """Widen to at least `width` counters per row, keeping every estimate.

        Row indices are (a + i·b) mod width with a power-of-two width, so a key's
        index in a row twice as wide is its old index or that plus the old
        width: tiling each old row twice carries every counter over.
        """
        target = min(_pow2(width), MAX_WIDTH)
        while self.width < target:
            for row in (self._r0, self._r1, self._r2, self._r3):
                row.extend(row)
            self.width *= 2
            self._mask = self.width - 1
            self._sample = 10 * self.width
