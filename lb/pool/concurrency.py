"""How many requests a node serves at once, learned from its replies: one `Limit` per node.

Called by the scheduler (`lb.request.scheduler`): `observe` for every reply that
measured real work, `allowed` and `wants_probe` whenever it looks for a free
slot, `probe_sent` when it sends one. Pure: no clock, no I/O; compiled with
the data path.

The signal. Each reply is a sample of the node's seconds per unit for its key
(model, row bucket), divided — when it is judged, so that every sample of a
judgement is divided by the same value — by the node's τ for that key (the
median of its recent replies): samples of different models and batch sizes
compare. It is filed under `k`, the number of our requests already in flight
on the node when it was sent. A node with c slots starts requests with k < c
at once and makes one with k ≥ c wait for k − c + 1 of them to finish: the
normalized latency is flat up to k = c − 1 and rises from k = c on (by about
a third of a service time at k = c for c = 2). That rise is the gradient that
Envoy's adaptive concurrency and Netflix's Gradient2 measure against a
minimum latency taken at low concurrency; here each level is compared with
the levels below it, over the same recent replies, so the comparison holds
while τ itself moves, and the minimum is re-measured whenever the node drains.

Each level keeps its last `RING` replies (raw seconds per unit and their key's
τ), so the levels below L keep their samples while a busy node only ever
answers at L − 1. When they are too few, or older than `REMEASURE_S`, the
limit measures again: for a short while it allows half of L, so that requests
go out at low levels (Envoy's periodic minRTT window).

The rule, judged every `JUDGE` replies:
* a level k < L whose mean exceeds the mean of the levels below it by more
  than `down`, and by `Z` standard errors, lowers L (the node has fewer slots
  than we thought, or someone else now uses them): to k, or lower when the
  excess says so — a saturated node with c slots takes (k + 1) / c times as
  long with k + 1 in flight, so c ≈ (k + 1) / e^excess (the gradient); never
  below `floor`;
* probes — one request at a time sent at k = L, while requests wait for this
  node, one per `gap` replies — are compared with the levels below L as they
  land; when `PROBE_JUDGE` of them average within `up`, L grows by one (never
  above `ceiling`). In a slow start, which lasts until the first setback, up to
  L probes go at once (levels L to 2L − 1) and `START_JUDGE` of them within
  `up` double L;
  a round that fails doubles the gap, up to `MAX_PROBE_GAP`, so a node at its
  true limit pays for few probes.
The comparisons are of logs (service times are close to lognormal), and a
normalized latency counts at most `CAP` (a stall's few replies do not decide).
Before there are samples, `value` is the configured start (the node's weight
as capacity). A pinned limit (a node's `max_inflight`) never moves.
"""

from __future__ import annotations

import math
from typing import Final

from lb.pool.policy import Tau

RING: Final = 64            # replies kept per in-flight level
JUDGE: Final = 64           # replies between two judgements
MIN_LEVEL: Final = 12       # replies a level needs to be judged ...
MIN_REF: Final = 32         # ... and the levels below it, together
REMEASURE_S: Final = 30.0   # the levels below L are measured again when older than this
Z: Final = 4.0              # a level is slower only when its excess is this many std errors
PROBE_JUDGE: Final = 24     # probe replies that decide a raise ...
START_JUDGE: Final = 12     # ... in the slow start (every reply may be a probe then),
                            # which judges the levels below L this often too
PROBE_GAP: Final = 4        # replies between two probes, at first ...
MAX_PROBE_GAP: Final = 256  # ... doubling after each probe round that fails, up to this
CAP: Final = 4.0            # a normalized latency counts at most this (a stall's replies)
MAX_LEVELS: Final = 256     # levels tracked (the ceiling is clamped to it)


class Level:
    """The last RING replies sent at one in-flight level: seconds per unit, and the τ
    of each one's key (read when judged, so one judgement divides by one τ)."""

    __slots__ = ("at", "pos", "taus", "xs")

    def __init__(self) -> None:
        self.xs: list[float] = []
        self.taus: list[Tau] = []
        self.pos = 0
        self.at = -math.inf             # when its newest reply came

    def add(self, per_unit: float, tau: Tau, now: float) -> None:
        if len(self.xs) < RING:
            self.xs.append(per_unit)
            self.taus.append(tau)
        else:
            self.xs[self.pos] = per_unit
            self.taus[self.pos] = tau
            self.pos = (self.pos + 1) % RING
        self.at = now

    def sums(self) -> tuple[float, float, int]:
        """Σ y, Σ y², n of the normalized log latencies y (`_norm`)."""
        total = square = 0.0
        n = 0
        for x, tau in zip(self.xs, self.taus, strict=True):
            if tau.value is not None:
                y = _norm(x, tau)
                total += y
                square += y * y
                n += 1
        return total, square, n

    def clear(self) -> None:
        self.xs, self.taus, self.pos = [], [], 0


class Limit:
    """One node's concurrency limit (see the module docstring)."""

    __slots__ = ("ceiling", "decreases", "down", "floor", "gap", "increases", "levels",
                 "measuring", "pinned", "probe_n", "probe_sum", "probes", "since_judge",
                 "since_probe", "starting", "up", "value")

    def __init__(self, start: float, floor: int = 1, ceiling: int = 64,
                 pinned: bool = False, up: float = 0.12, down: float = 0.2) -> None:
        self.floor = max(1, floor)
        self.ceiling = max(self.floor, min(ceiling, MAX_LEVELS - 1))
        self.value = int(min(max(round(start), self.floor), self.ceiling))
        self.pinned = pinned
        self.up = up                # probes within this of the levels below: L + 1
        self.down = down            # a level below L past this: L drops to it
        self.levels: list[Level] = []
        self.since_judge = 0
        self.measuring = False      # allowing half of L, to sample the levels below
        self.probes = 0             # probe requests in flight
        self.since_probe = 0
        self.gap = PROBE_GAP        # replies between two probes now
        self.starting = True        # slow start: doubles until the first setback
        self.probe_sum = 0.0        # Σ probe latency − the levels below, at the time
        self.probe_n = 0
        self.increases = 0
        self.decreases = 0

    def allowed(self) -> int:
        """Requests the node may have in flight now (probes aside)."""
        if self.measuring:
            return max(self.floor, self.value - max(1, self.value // 2))
        return self.value

    def wants_probe(self) -> bool:
        """Whether one more request than `allowed` may go now, to test the levels above
        (the scheduler asks only while requests wait for this node): one probe at a
        time at level L, one reply in `gap`; in the slow start, up to L probes at once,
        levels L to 2L − 1 (TCP's slow start sends a whole window)."""
        if self.pinned or self.measuring or self.value >= self.ceiling:
            return False
        if self.starting:
            return self.probes < self.value
        return self.probes == 0 and self.since_probe >= self.gap

    def probe_sent(self) -> None:
        self.probes += 1
        self.since_probe = 0

    def observe(self, k: int, per_unit: float, tau: Tau, now: float) -> None:
        """A reply sent with `k` of our requests already in flight on the node, that
        took `per_unit` seconds per unit; `tau` is the node's τ for its key."""
        if self.pinned or k < 0 or per_unit <= 0.0 or tau.value is None:
            return
        self.since_probe += 1
        if k >= self.value:
            if not self.measuring and (k == self.value or (self.starting
                                                          and k < 2 * self.value)):
                self._probe(per_unit, tau, now)
            return
        levels = self.levels
        while len(levels) <= k:
            levels.append(Level())
        levels[k].add(per_unit, tau, now)
        self.since_judge += 1
        if self.measuring and self._reference(self.value - 1, now) is not None:
            self.measuring = False
            self.since_judge = JUDGE        # judge now, with what was measured
        if self.since_judge >= (START_JUDGE if self.starting else JUDGE):
            self.since_judge = 0
            self._judge(now)

    def _probe(self, per_unit: float, tau: Tau, now: float) -> None:
        ref = self._reference(self.value, now)
        if ref is None:                 # the levels below are not measured yet
            return
        self.probe_sum += _norm(per_unit, tau) - ref[0] / ref[2]
        self.probe_n += 1
        if self.probe_n >= (START_JUDGE if self.starting else PROBE_JUDGE):
            if self.probe_sum / self.probe_n <= math.log1p(self.up):
                self._set(self.value + 1 if not self.starting else 2 * self.value)
                self.increases += 1
                self.gap = PROBE_GAP
            else:
                self.gap = min(2 * self.gap, MAX_PROBE_GAP)
                self.starting = False
            self.probe_sum, self.probe_n = 0.0, 0

    def _reference(self, k: int, now: float) -> tuple[float, float, int] | None:
        """Σ y, Σ y², n of the levels below `k`; None when fewer than MIN_REF (MIN_LEVEL
        in the slow start, whose doubling a later judgement corrects) or all older than
        REMEASURE_S."""
        total = square = 0.0
        n = 0
        fresh = False
        for level in self.levels[:k]:
            t, q, m = level.sums()
            total, square, n = total + t, square + q, n + m
            fresh = fresh or now - level.at < REMEASURE_S
        need = MIN_LEVEL if self.starting else MIN_REF
        return (total, square, n) if n >= need and fresh else None

    def _judge(self, now: float) -> None:
        """Lower L to the first level that is slower than the levels below it: by more
        than `down`, and by `Z` standard errors; measure again when the levels below
        L − 1 are too few or too old to judge by."""
        top = self.value - 1
        if top >= 1 and self._reference(top, now) is None:
            self.measuring = True
            return
        total = square = 0.0
        n = 0
        for k, level in enumerate(self.levels[:self.value]):
            sk, qk, nk = level.sums()
            if k > 0 and nk >= MIN_LEVEL and n >= (MIN_LEVEL if self.starting else MIN_REF):
                mean_k, mean = sk / nk, total / n
                spread = max(qk / nk - mean_k * mean_k, square / n - mean * mean, 0.0)
                excess = mean_k - mean
                if excess > math.log1p(self.down) and excess * excess > Z * Z * spread * (
                        1.0 / nk + 1.0 / n):
                    if k >= self.floor:
                        # A saturated node serves c at once: k + 1 in flight take
                        # (k + 1) / c times as long (Little), so c ≈ (k + 1) / e^excess.
                        self._set(min(k, max(round((k + 1) * math.exp(-excess)), 1)))
                        self.decreases += 1
                        self.starting = False
                        self.gap = PROBE_GAP     # a false alarm comes back soon
                    return
            total, square, n = total + sk, square + qk, n + nk

    def _set(self, value: int) -> None:
        self.value = int(min(max(value, self.floor), self.ceiling))
        self.probe_sum, self.probe_n = 0.0, 0
        for level in self.levels[self.value:]:     # judged again from fresh samples
            level.clear()

    def retune(self, start: float, floor: int, ceiling: int, pinned: bool) -> None:
        """A reload's settings: new bounds; the start counts only while nothing was
        learned (or when pinned)."""
        learned = (self.increases or self.decreases) and not pinned and not self.pinned
        self.floor = max(1, floor)
        self.ceiling = max(self.floor, min(ceiling, MAX_LEVELS - 1))
        self.pinned = pinned
        value = self.value if learned else round(start)
        self.value = int(min(max(value, self.floor), self.ceiling))

    def slow_start(self) -> None:
        """From one slot, doubling while probes stay fast: a node added to a running
        pool, or back after an outage, takes no flood (a pinned limit stays)."""
        if self.pinned:
            return
        self.reset(float(self.floor))

    def reset(self, start: float) -> None:
        """Back to `start`, samples forgotten (a node readmitted after an outage)."""
        self.value = int(min(max(round(start), self.floor), self.ceiling))
        self.levels = []
        self.probes = 0
        self.probe_sum, self.probe_n = 0.0, 0
        self.starting = True
        self.measuring = False


LOG_CAP: Final = math.log(CAP)


def _norm(per_unit: float, tau: Tau) -> float:
    """The log of seconds per unit over the key's τ now, at most log(CAP): service
    times are close to lognormal, so means and standard errors of logs behave."""
    value = tau.value
    if value is None or value <= 0.0 or per_unit <= 0.0:
        return 0.0
    return min(math.log(per_unit / value), LOG_CAP)
