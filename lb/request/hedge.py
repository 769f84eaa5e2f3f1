"""When to hedge, and how much: per node and model latency quantiles, and a budget. Pure.

Called by `lb.request.dispatch` on every attempt: `delay(node, model)` says how long
to wait for the node before sending a copy of an idempotent call to another
node ("The Tail at Scale", Dean & Barroso 2013: hedge after the 95th
percentile delay; Envoy's `hedge_on_per_try_timeout`) — the dispatcher hedges
sooner when the request already counts as stalled (`policy.stall_factor` × τ ×
units), because a node that stalls now and then has stalls in its own p95; `observe` feeds the
quantile with the time of every good answer; `spend` asks the budget for one
hedge. Time is passed in, so this is tested with plain numbers.

Guarantees: no delay (no hedging) until a node has `MIN_SAMPLES` good answers
for the model, so a cold node is not hedged on a guess; the delay is never
below `min_delay_ms`; hedges are at most `max_ratio` of the requests of the
last `BUDGET_WINDOW_S` seconds (`lb.request.retry.RetryBudget` with no free minimum),
so a slow pool cannot double its own load; memory is bounded (`MAX_MODELS`
quantiles per node, `RING` samples each).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lb.config import HedgeConfig
from lb.request.retry import RetryBudget

RING = 256            # recent samples per (node, model)
REFRESH = 16          # recompute the quantile every this many samples
MIN_SAMPLES = 32
MAX_MODELS = 256
BUDGET_WINDOW_S = 10.0
RESCUE_RESERVE = 0.5  # of the budget's allowance, kept from plain hedges for rescues


@dataclass(slots=True)
class Quantile:
    """The q-quantile of the last RING samples, recomputed every REFRESH samples."""

    q: float
    _ring: list[float] = field(default_factory=list)
    _next: int = 0
    _count: int = 0
    value: float | None = None

    def add(self, seconds: float) -> None:
        if len(self._ring) < RING:
            self._ring.append(seconds)
        else:
            self._ring[self._next] = seconds
            self._next = (self._next + 1) % RING
        self._count += 1
        if self._count >= MIN_SAMPLES and self._count % REFRESH == 0:
            ordered = sorted(self._ring)
            self.value = ordered[min(int(self.q * len(ordered)), len(ordered) - 1)]


class HedgePolicy:
    """Hedge delays per (node, model), the hedge budget and its counters."""

    def __init__(self, cfg: HedgeConfig) -> None:
        self.cfg = cfg
        self._quantiles: dict[tuple[str, str], Quantile] = {}
        self.budget = RetryBudget(ratio=cfg.max_ratio, min_per_s=0.0, ttl_s=BUDGET_WINDOW_S)
        self.sent = 0           # hedges sent
        self.won = 0            # hedges whose answer was the one returned
        self.no_better = 0      # checks of a due hedge that found no node expected sooner
        self.rescues = 0        # hedges sent because the first node counted as stalled

    def reconfigure(self, cfg: HedgeConfig) -> None:
        self.cfg = cfg
        self.budget.ratio = cfg.max_ratio
        if not cfg.enabled:
            self._quantiles.clear()

    def observe(self, node: str, model: str, seconds: float) -> None:
        """A good answer from `node` for `model` took `seconds`."""
        if not self.cfg.enabled:
            return
        quantile = self._quantiles.get((node, model))
        if quantile is None:
            if len(self._quantiles) >= MAX_MODELS * 64:
                return
            quantile = self._quantiles[(node, model)] = Quantile(self.cfg.quantile)
        quantile.add(seconds)

    def delay(self, node: str, model: str) -> float | None:
        """Seconds to wait before hedging a call on `node`, None: do not hedge."""
        if not self.cfg.enabled:
            return None
        quantile = self._quantiles.get((node, model))
        if quantile is None or quantile.value is None:
            return None
        return max(quantile.value, self.cfg.min_delay_ms / 1000.0)

    def deposit(self, now: float) -> None:
        """A client call arrived (its deposit funds hedges and rescues)."""
        if self.cfg.enabled or self.cfg.rescue:
            self.budget.deposit(now)

    def spend(self, now: float, rescue: bool = False) -> bool:
        """Take one hedge from the budget; counts it as sent when granted. A plain hedge
        (at the p95) leaves `RESCUE_RESERVE` of the window's allowance to rescues
        (hedges of requests on a node that counts as stalled), which win far more
        often: otherwise the p95 hedges of a busy pool spend it all before a stall."""
        keep = 0.0 if rescue else RESCUE_RESERVE * self.budget.allowance(now)
        if self.budget.try_spend(now, keep):
            self.sent += 1
            self.rescues += rescue
            return True
        return False

    def stats(self, now: float) -> dict[str, float | int | bool]:
        return {"enabled": self.cfg.enabled, "rescue": self.cfg.rescue, "sent": self.sent,
                "won": self.won,
                "rescues": self.rescues, "no_better": self.no_better,
                "budget_rejections": self.budget.rejected,
                "budget_available": round(max(self.budget.available(now), 0.0), 2),
                "max_ratio": self.cfg.max_ratio}
