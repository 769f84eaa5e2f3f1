"""The retry budget: retries may add at most a share of recent traffic. Pure.

Called by `lb.request.dispatch.Dispatcher.send` before a second attempt (and, as the
hedge budget, by `lb.request.hedge.HedgePolicy` before a hedge). Without a budget, a
failing pool turns every request into two and doubles the load on whatever
still works (retry storms). Linkerd-style token bucket: every request deposits
`ratio` tokens (expiring after `ttl_s`), every retry spends one, and
`min_per_s` retries per second are always allowed so a quiet proxy can still
retry. Time is passed in, so this is tested with plain numbers.

Deposits and spends are counted in `STEPS` time buckets per window, not one
entry per request: `deposit` runs on every request and stays O(1) in time and
memory whatever the rate. A deposit expires `ttl_s` after its bucket began
(up to ttl_s / STEPS early).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

STEPS = 100


class Step:
    """One time step of a `RetryBudget`: when it began, its deposits and its spends."""

    __slots__ = ("deposits", "spent", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.deposits = 0.0
        self.spent = 0.0


@dataclass(slots=True)
class RetryBudget:
    ratio: float = 0.2          # retries allowed per request
    min_per_s: float = 5.0      # retries always allowed per second
    ttl_s: float = 10.0         # how long a request's deposit counts
    _buckets: deque[Step] = field(default_factory=deque)
    _deposits: float = 0.0
    _spent: float = 0.0
    retries: int = 0
    rejected: int = 0

    def _bucket(self, now: float) -> Step:
        """The bucket `now` falls in, after dropping the ones past the window."""
        buckets = self._buckets
        step = self.ttl_s / STEPS
        horizon = now - self.ttl_s
        while buckets and buckets[0].start < horizon:
            gone = buckets.popleft()
            self._deposits -= gone.deposits
            self._spent -= gone.spent
        if not buckets:
            self._deposits = self._spent = 0.0       # no float drift across idle periods
        if buckets and now - buckets[-1].start < step:
            return buckets[-1]
        bucket = Step(now)
        buckets.append(bucket)
        return bucket

    def deposit(self, now: float) -> None:
        """A client request arrived (counted once, whatever its attempts)."""
        buckets = self._buckets
        if (buckets and now - buckets[-1].start < self.ttl_s / STEPS
                and buckets[0].start >= now - self.ttl_s):
            bucket = buckets[-1]            # the common case: `_bucket` has nothing to do
        else:
            bucket = self._bucket(now)
        bucket.deposits += 1
        self._deposits += 1

    def allowance(self, now: float) -> float:
        """What the window allows in all (spent or not)."""
        self._bucket(now)
        return self._deposits * self.ratio + self.min_per_s * self.ttl_s

    def available(self, now: float) -> float:
        return self.allowance(now) - self._spent

    def try_spend(self, now: float, keep: float = 0.0) -> bool:
        """Take one retry from the budget, leaving at least `keep` in it; False (and
        counted) when it cannot."""
        if self.available(now) >= 1.0 + keep:
            self._bucket(now).spent += 1
            self._spent += 1
            self.retries += 1
            return True
        self.rejected += 1
        return False
