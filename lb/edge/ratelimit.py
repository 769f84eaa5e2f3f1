"""Budgets per key (and per key x model): requests/s and rows/s with a burst, as GCRA.

Called by `lb.edge.gate` for every request of a key that has `limits`, after its
scope passed, and by `lb.edge.shared` when Redis is out of reach (the same local
buckets then decide). Pure: the clock is passed in.

GCRA (the generic cell rate algorithm; a token bucket kept as one number): a
bucket of rate r and depth `burst_s` keeps `tat`, the time at which it would be
full again. A request of cost n (1 request, or its rows) is let through when
max(tat, now) + n/r - now <= burst_s, and then moves tat there; otherwise it must
wait the excess (its Retry-After). A cost above the whole depth is charged as the
depth (a request of more rows than the burst passes when the bucket is full, and
empties it), so no request is refused forever. A request is let through only when
both of its buckets (requests and rows) let it, and only then charged to both.
Over a long run at most r x seconds + r x burst_s units pass.
"""

from __future__ import annotations

import math

from lb.edge.config import RateLimit

MAX_MODEL_BUDGETS = 1024     # per key with per_model: later models share one budget
OTHER = "(other)"


class Bucket:
    """One GCRA bucket (see the module docstring); `tat` in the caller's clock."""

    __slots__ = ("depth", "interval", "tat")

    def __init__(self, rate: float, burst_s: float) -> None:
        self.interval = 1.0 / rate              # seconds per unit
        self.depth = max(burst_s, self.interval)    # at least one unit fits
        self.tat = 0.0

    def wait(self, now: float, cost: float) -> float:
        """Seconds until `cost` units would pass (0.0: now)."""
        excess = max(self.tat, now) + min(cost * self.interval, self.depth) - now - self.depth
        return excess if excess > 0.0 else 0.0

    def take(self, now: float, cost: float) -> None:
        self.tat = max(self.tat, now) + min(cost * self.interval, self.depth)


class Budget:
    """The requests and rows buckets of one key (or key x model)."""

    __slots__ = ("requests", "rows")

    def __init__(self, limits: RateLimit) -> None:
        self.requests = (Bucket(limits.requests_per_s, limits.burst_s)
                         if limits.requests_per_s is not None else None)
        self.rows = (Bucket(limits.rows_per_s, limits.burst_s)
                     if limits.rows_per_s is not None else None)

    def take(self, now: float, rows: int) -> float:
        """Charge one request of `rows` rows and return 0.0, or return the seconds to
        wait (and charge nothing): both buckets pass, or neither is charged."""
        req, by_rows = self.requests, self.rows
        wait = max(req.wait(now, 1) if req is not None else 0.0,
                   by_rows.wait(now, rows) if by_rows is not None else 0.0)
        if wait > 0.0:
            return wait
        if req is not None:
            req.take(now, 1)
        if by_rows is not None:
            by_rows.take(now, rows)
        return 0.0


def budget_for(budgets: dict[str, Budget], limits: RateLimit, model: str) -> Budget:
    """The budget a request of `model` draws on: the key's, or its model's (per_model)."""
    name = model if limits.per_model else ""
    budget = budgets.get(name)
    if budget is None:
        if len(budgets) >= MAX_MODEL_BUDGETS:
            name = OTHER
            budget = budgets.get(name)
        if budget is None:
            budget = budgets[name] = Budget(limits)
    return budget


def retry_after(wait_s: float) -> int:
    """Whole seconds for a Retry-After header: at least 1."""
    return max(1, math.ceil(wait_s))
