"""lb.request.hedge: per node and model p95 delays and the hedge budget. Pure: plain numbers."""

from __future__ import annotations

import pytest

from lb.config import HedgeConfig
from lb.request.hedge import MIN_SAMPLES, RESCUE_RESERVE, HedgePolicy, Quantile


def test_quantile_is_the_p95_of_recent_samples() -> None:
    q = Quantile(0.95)
    for i in range(1, 257):                    # 1..256 ms
        q.add(i / 1000.0)
    assert q.value == pytest.approx(0.244, abs=0.002)
    for _ in range(256):                       # the ring forgets: all 10 ms now
        q.add(0.010)
    assert q.value == pytest.approx(0.010)


def test_no_hedge_until_a_node_has_enough_samples_and_never_below_the_floor() -> None:
    h = HedgePolicy(HedgeConfig(enabled=True, min_delay_ms=5.0))
    for _ in range(MIN_SAMPLES - 1):
        h.observe("a", "m", 0.001)
    assert h.delay("a", "m") is None           # cold: no guess
    for _ in range(16):
        h.observe("a", "m", 0.001)
    assert h.delay("a", "m") == pytest.approx(0.005)     # 1 ms p95, floor 5 ms
    assert h.delay("a", "other") is None and h.delay("b", "m") is None
    h.reconfigure(HedgeConfig(enabled=False))
    assert h.delay("a", "m") is None


def test_budget_caps_hedges_at_max_ratio_of_requests() -> None:
    h = HedgePolicy(HedgeConfig(enabled=True, max_ratio=0.05))
    granted = 0
    for i in range(2000):                      # 2000 requests over 2 s
        now = i / 1000.0
        h.deposit(now)
        granted += h.spend(now, rescue=True)   # every request asks for a rescue
    assert granted <= 0.05 * 2000 + 1
    assert granted >= 0.05 * 2000 - 2
    assert h.sent == h.rescues == granted and h.budget.rejected == 2000 - granted
    stats = h.stats(2.0)
    assert stats["sent"] == granted and stats["max_ratio"] == 0.05


def test_plain_hedges_leave_a_reserve_for_rescues() -> None:
    """Hedges at the p95 take at most (1 - RESCUE_RESERVE) of the budget; what they
    leave is there for the requests of a node that stalls."""
    h = HedgePolicy(HedgeConfig(enabled=True, max_ratio=0.05))
    plain = rescued = 0
    for i in range(2000):
        now = i / 1000.0
        h.deposit(now)
        plain += h.spend(now)                  # every request asks for a plain hedge
    allowed = 0.05 * 2000 * (1 - RESCUE_RESERVE)
    assert allowed - 2 <= plain <= allowed + 1
    assert h.rescues == 0
    for _ in range(200):                       # then a stall: its requests are rescued
        rescued += h.spend(2.0, rescue=True)
    assert plain + rescued <= 0.05 * 2000 + 1
    assert plain + rescued >= 0.05 * 2000 - 2
    assert h.rescues == rescued and h.sent == plain + rescued
