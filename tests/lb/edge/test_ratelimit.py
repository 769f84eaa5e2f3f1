"""GCRA budgets with a fake clock: burst, steady rate, rows, both buckets, clamping."""

from __future__ import annotations

import pytest

from lb.edge.config import RateLimit
from lb.edge.ratelimit import OTHER, Bucket, Budget, budget_for, retry_after


def passed(budget: Budget, rate: float, seconds: float, rows: int = 1) -> int:
    """Requests let through when offered at `rate` per second for `seconds`."""
    n = 0
    for i in range(int(rate * seconds)):
        if budget.take(i / rate, rows) == 0.0:
            n += 1
    return n


def test_burst_then_the_configured_rate() -> None:
    budget = Budget(RateLimit(requests_per_s=10, burst_s=0.5))
    waits = [budget.take(0.0, 1) for _ in range(7)]
    assert waits[:5] == [0.0] * 5                   # depth: 10/s x 0.5 s
    assert waits[5] == pytest.approx(0.1) and waits[6] == pytest.approx(0.1)
    # offered 5x the rate for 100 s: 10/s pass (plus the burst)
    budget = Budget(RateLimit(requests_per_s=10, burst_s=0.5))
    assert passed(budget, 50, 100) == pytest.approx(1000 + 5, abs=2)


def test_a_refused_request_is_not_charged() -> None:
    budget = Budget(RateLimit(requests_per_s=1, burst_s=1))
    assert budget.take(0.0, 1) == 0.0
    for _ in range(100):
        assert budget.take(0.5, 1) == pytest.approx(0.5)
    assert budget.take(1.0, 1) == 0.0               # the refusals cost nothing


def test_rows_and_requests_both_decide() -> None:
    budget = Budget(RateLimit(requests_per_s=100, rows_per_s=50, burst_s=1))
    assert passed(budget, 40, 100, rows=5) == pytest.approx(50 * 100 / 5 + 10, abs=2)
    budget = Budget(RateLimit(requests_per_s=5, rows_per_s=1000, burst_s=1))
    assert passed(budget, 40, 100, rows=5) == pytest.approx(500 + 5, abs=2)
    # a refusal by one bucket charges neither
    budget = Budget(RateLimit(requests_per_s=100, rows_per_s=10, burst_s=1))
    assert budget.take(0.0, 10) == 0.0
    assert budget.take(0.0, 1) > 0.0
    assert budget.requests is not None and budget.requests.tat == pytest.approx(0.01)


def test_a_request_larger_than_the_burst_passes_on_a_full_bucket() -> None:
    bucket = Bucket(rate=10, burst_s=1)             # depth 10 units
    assert bucket.wait(0.0, 500) == 0.0             # charged as the whole depth
    bucket.take(0.0, 500)
    assert bucket.wait(0.0, 1) == pytest.approx(0.1)
    assert bucket.wait(1.0, 500) == 0.0             # full again after burst_s


def test_depth_holds_at_least_one_unit() -> None:
    bucket = Bucket(rate=0.5, burst_s=0.1)          # one request every 2 s
    assert bucket.wait(0.0, 1) == 0.0
    bucket.take(0.0, 1)
    assert bucket.wait(1.0, 1) == pytest.approx(1.0)
    assert bucket.wait(2.0, 1) == 0.0


def test_per_model_budgets_are_bounded() -> None:
    limits = RateLimit(requests_per_s=1, per_model=True)
    budgets: dict[str, Budget] = {}
    a, b = budget_for(budgets, limits, "a"), budget_for(budgets, limits, "b")
    assert a is not b and budget_for(budgets, limits, "a") is a
    for i in range(2000):
        budget_for(budgets, limits, f"m{i}")
    assert len(budgets) == 1025 and OTHER in budgets
    shared: dict[str, Budget] = {}
    one = RateLimit(requests_per_s=1)
    assert budget_for(shared, one, "a") is budget_for(shared, one, "b")


def test_retry_after_is_whole_seconds_at_least_one() -> None:
    assert [retry_after(w) for w in (0.001, 1.0, 1.2, 7.9)] == [1, 1, 2, 8]
