"""The balancing policy: pure functions and small value types, no I/O, no clock.

Called by `lb.pool.nodes.NodePool.pick` with a snapshot of the candidate nodes and
the request's cost; time is always passed in, so everything here can be tested
with plain asserts and benchmarked in isolation (scripts/bench_policy.py).

The formula (docs/ARCHITECTURE.md, "The policy"):

* A request j costs w_j units (rows × the model's cost factor) and takes t_j
  seconds on the node that served it.
* Each node keeps τ_i, the median seconds per unit of its recent replies (`Tau`).
* Routing picks the node with the least expected outstanding work per weight,

      score_i = (Σ_{k in flight on i} w_k + w_j) · τ_i / W_i

  ties broken at random in proportion to weight. A node without samples is
  scored with the least τ of the nodes that have them (optimistic: slow start
  limits what a wrong guess costs, and it gets the node its first samples),
  and a τ above that least one which no sample has refreshed for a while
  relaxes towards it. The time constant is `tau_relax_s` for a τ of a full
  ring of samples and proportionally shorter for one of fewer: a node that
  looked slow on its first, warm-up replies is tried again within seconds,
  not shut out with no traffic and so no sample to correct it.
* Reported load is the seed's formula over a sliding window (`LoadWindow`):
  load_i = Σ_{j completed on i in the window} w_j · t_j / W_i.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

_REL_TIE = 1e-9
TAU_SAMPLES = 31        # replies τ is the median of (Tau)


@dataclass(slots=True)     # not frozen: built per request, treat as immutable
class Candidate:
    """What the policy sees of one node at pick time."""

    weight: float            # effective weight W_i (> 0): configured weight × slow-start ramp
    inflight_units: float    # Σ w_k of requests in flight on the node
    inflight: int            # number of requests in flight
    tau: float | None        # seconds per unit, None before the first sample
    tau_age: float = 0.0     # seconds since τ last took a sample
    tau_n: int = 31          # samples τ is made of (TAU_SAMPLES at most)
    oldest_age: float = 0.0  # seconds the oldest request in flight has been running
    oldest_units: float = 0.0   # its units


def seed_load(samples: Sequence[tuple[float, float]], weight: float) -> float:
    """The seed's formula: load_i = Σ_j (w_j · t_j) / W_i over (w_j, t_j) samples."""
    if weight <= 0:
        raise ValueError("weight must be > 0")
    return sum(w * t for w, t in samples) / weight


def _weighted_choice(indices: Sequence[int], weights: Sequence[float], rng: random.Random) -> int:
    if len(indices) == 1:
        return indices[0]
    total = sum(weights[i] for i in indices)
    x = rng.random() * total
    for i in indices:
        x -= weights[i]
        if x < 0:
            return i
    return indices[-1]


def _ties(scores: Sequence[float], band: float = 0.0) -> list[int]:
    """Indices whose score is within `band` (relative) of the best one."""
    best = min(scores)
    tol = abs(best) * max(band, _REL_TIE) + 1e-15
    return [i for i, s in enumerate(scores) if s <= best + tol]


def effective_tau(c: Candidate, pool_tau: float, decay_s: float,
                  stall_factor: float = math.inf) -> float:
    """τ as scored: the pool's least τ without samples; a stale τ above it relaxes
    towards it (time constant `decay_s` × the share of a full ring of samples τ is
    made of); a node whose oldest request in flight has run longer than
    `stall_factor` × its expected time (τ × units) is stalled now, and scored with
    what that request has shown: at least age / units seconds per unit."""
    if c.tau is None:
        tau = pool_tau
    elif c.tau <= pool_tau or c.tau_age <= 0:
        tau = c.tau
    else:
        trust = decay_s * min(max(c.tau_n, 1), TAU_SAMPLES) / TAU_SAMPLES
        tau = pool_tau + (c.tau - pool_tau) * math.exp(-c.tau_age / trust)
    if c.oldest_units > 0 and c.oldest_age > stall_factor * tau * c.oldest_units:
        return c.oldest_age / c.oldest_units
    return tau


def score(c: Candidate, units: float, pool_tau: float, decay_s: float = math.inf,
          stall_factor: float = math.inf) -> float:
    """The formula for one candidate: (inflight_units + units) · τ / W."""
    return (c.inflight_units + units) * effective_tau(c, pool_tau, decay_s,
                                                      stall_factor) / c.weight


def least_tau(cands: Sequence[Candidate]) -> float:
    """The least τ of the candidates that have one (1.0 when none has)."""
    return min((c.tau for c in cands if c.tau is not None), default=1.0)


def least_load(cands: Sequence[Candidate], units: float, rng: random.Random,
               decay_s: float = math.inf, stall_factor: float = math.inf,
               band: float = 0.0) -> int:
    """Index of the candidate with the least (inflight_units + units) · τ / W.

    With `band` > 0, every candidate whose score is within that fraction of the
    least one ties with it, and ties are broken at random in proportion to
    weight. Proxy processes that share nodes but not their in-flight counts
    (`serve --workers N`, replicas) would otherwise all send their next request
    to the same node whenever τ differs a little (herding)."""
    if not cands:
        raise ValueError("no candidates")
    ref = least_tau(cands)
    scores = []
    best = math.inf
    for c in cands:
        score = (c.inflight_units + units) * effective_tau(c, ref, decay_s, stall_factor) \
            / c.weight
        scores.append(score)
        if score < best:
            best = score
    limit = best + abs(best) * max(band, _REL_TIE) + 1e-15
    total = 0.0                             # ties, chosen in proportion to weight
    last = ties = 0
    for i, score in enumerate(scores):
        if score <= limit:
            total += cands[i].weight
            last = i
            ties += 1
    if ties == 1:
        return last
    x = rng.random() * total
    for i, score in enumerate(scores):
        if score <= limit:
            x -= cands[i].weight
            if x < 0:
                return i
    return last


def least_conn(cands: Sequence[Candidate], units: float, rng: random.Random) -> int:
    """Weighted least connections (nginx/HAProxy style): least inflight / W."""
    del units
    if not cands:
        raise ValueError("no candidates")
    scores = [c.inflight / c.weight for c in cands]
    return _weighted_choice(_ties(scores), [c.weight for c in cands], rng)


@dataclass(slots=True)
class SmoothRoundRobin:
    """nginx's smooth weighted round robin; state is keyed by node name."""

    current: dict[str, float] = field(default_factory=dict)

    def pick(self, names: Sequence[str], weights: Sequence[float]) -> int:
        if not names:
            raise ValueError("no candidates")
        total = sum(weights)
        best = 0
        for i, (name, w) in enumerate(zip(names, weights, strict=True)):
            self.current[name] = self.current.get(name, 0.0) + w
            if self.current[name] > self.current[names[best]]:
                best = i
        self.current[names[best]] -= total
        return best


@dataclass(slots=True)
class Tau:
    """τ_i: the median seconds per unit of the node's last TAU_SAMPLES replies.

    A median, not a mean: replies held up by a stall (a GC pause, a noisy
    neighbour) are a minority and do not move it, so the node is trusted again
    as soon as its requests complete normally — what is slow *now* is the
    in-flight age's business (`effective_tau`). A node that really slows down
    moves the median within TAU_SAMPLES / 2 replies. (A peak-taking EWMA shut a
    node out for about its decay after one slow reply, and the other nodes queued
    meanwhile.) `decay_s` is the time constant of `effective_tau`'s relaxation
    of a stale τ; `stamp` is the time of the last sample.
    """

    decay_s: float
    value: float | None = None
    stamp: float = 0.0
    samples: int = 0        # how many replies τ is made of (TAU_SAMPLES at most)
    _ring: list[float] = field(default_factory=list)
    _sorted: list[float] = field(default_factory=list)
    _next: int = 0

    def update(self, sample: float, now: float) -> float:
        ring, ordered = self._ring, self._sorted
        if len(ring) < TAU_SAMPLES:
            ring.append(sample)
            self.samples = len(ring)
        else:
            old = ring[self._next]
            ring[self._next] = sample
            self._next = (self._next + 1) % TAU_SAMPLES
            del ordered[bisect.bisect_left(ordered, old)]
        bisect.insort(ordered, sample)
        self.value = ordered[len(ordered) // 2]
        self.stamp = now
        return self.value

    def raise_to(self, bound: float, now: float) -> None:
        """A lower bound of a sample (a cancelled attempt ran this long): it counts as
        a sample when it is above τ, never to lower it."""
        if self.value is not None and bound > self.value:
            self.update(bound, now)

    def reset(self) -> None:
        """Forget the samples (a node readmitted after an outage starts afresh)."""
        self.value = None
        self.samples = 0
        self._ring, self._sorted, self._next = [], [], 0


WINDOW_STEPS = 100      # buckets per LoadWindow


class Bucket:
    """One time step of a `LoadWindow`: when it began, its Σ w·t and its count."""

    __slots__ = ("count", "start", "work")

    def __init__(self, start: float) -> None:
        self.start = start
        self.work = 0.0
        self.count = 0


@dataclass(slots=True)
class LoadWindow:
    """Σ w_j · t_j and the request count over the last `window_s` seconds.

    Counted in `WINDOW_STEPS` time buckets, not one entry per request: `add` runs
    on every reply, and a window of entries would hold every request of the last
    `window_s` seconds (160 000 at 16 000 req/s), each touched twice, when cold.
    A completion leaves the window `window_s` after its bucket began (up to one
    bucket, window_s / WINDOW_STEPS, early)."""

    window_s: float
    _buckets: deque[Bucket] = field(default_factory=deque)
    _sum: float = 0.0
    _count: int = 0

    def add(self, now: float, units: float, seconds: float) -> None:
        work = units * seconds
        buckets = self._buckets
        if not buckets or now - buckets[-1].start >= self.window_s / WINDOW_STEPS:
            buckets.append(Bucket(now))
            if buckets[0].start < now - self.window_s:
                self._expire(now)
        bucket = buckets[-1]
        bucket.work += work
        bucket.count += 1
        self._sum += work
        self._count += 1

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        buckets = self._buckets
        while buckets and buckets[0].start < horizon:
            gone = buckets.popleft()
            self._sum -= gone.work
            self._count -= gone.count
        if not buckets:
            self._sum = 0.0   # no float drift accumulates across idle periods

    def work(self, now: float) -> float:
        """Σ w_j · t_j of completions in the window."""
        self._expire(now)
        return max(self._sum, 0.0)

    def count(self, now: float) -> int:
        self._expire(now)
        return self._count
