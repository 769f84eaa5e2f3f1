"""Outlier ejection, slow start and the retry budget: pure, with plain numbers."""

from __future__ import annotations

import pytest

from lb.pool.outlier import OutlierPolicy, OutlierState
from lb.request.retry import RetryBudget

P = OutlierPolicy(consecutive_errors=3, base_ejection_s=2.0, max_ejection_s=16.0,
                  slow_start_s=10.0, min_ramp=0.1)


def test_consecutive_failures_eject_and_success_resets() -> None:
    s = OutlierState()
    assert not s.record(False, 0.0, P) and not s.record(False, 0.1, P)
    assert not s.record(True, 0.2, P)                  # a success resets the run
    assert not s.record(False, 0.3, P) and not s.record(False, 0.4, P)
    assert s.record(False, 0.5, P)                     # third in a row: ejected
    assert s.ejected(2.4) and not s.ejected(2.6)       # for base_ejection_s
    assert s.ejections == 1


def test_back_off_doubles_with_repeated_ejections_up_to_the_cap() -> None:
    s = OutlierState()
    t, lengths = 0.0, []
    for _ in range(5):
        for _ in range(3):
            ejected = s.record(False, t, P)
        assert ejected
        lengths.append(s.ejected_until - t)
        t = s.ejected_until + 0.1
        s.admitted(t)                                  # readmitted by a probe
    assert lengths == pytest.approx([2.0, 4.0, 8.0, 16.0, 16.0])


def test_back_off_resets_after_behaving_for_a_long_while() -> None:
    s = OutlierState()
    for _ in range(3):
        s.record(False, 0.0, P)
    s.admitted(2.0)
    for _ in range(3):
        s.record(False, 100.0, P)                      # > max_ejection_s later
    assert s.ejected_until - 100.0 == pytest.approx(2.0)


def test_failures_while_ejected_do_not_extend_the_ejection() -> None:
    s = OutlierState()
    for _ in range(3):
        s.record(False, 0.0, P)
    until = s.ejected_until
    for _ in range(6):
        s.record(False, 1.0, P)
    assert s.ejected_until == until and s.ejections == 1


def test_slow_start_ramps_from_min_to_full_weight() -> None:
    s = OutlierState()
    assert s.ramp(0.0, P) == 1.0                       # never readmitted: full weight
    s.admitted(100.0)
    assert s.ramp(100.0, P) == pytest.approx(0.1)
    assert s.ramp(105.0, P) == pytest.approx(0.5)
    assert s.ramp(110.0, P) == 1.0
    assert OutlierState(admitted_at=0.0).ramp(0.0, OutlierPolicy(slow_start_s=0)) == 1.0


def test_retry_budget_is_a_share_of_recent_requests() -> None:
    b = RetryBudget(ratio=0.2, min_per_s=0.0, ttl_s=10.0)
    for i in range(100):
        b.deposit(i * 0.01)
    granted = sum(b.try_spend(1.0) for _ in range(50))
    assert granted == 20 and b.rejected == 30
    # Deposits expire: after the window only new traffic earns retries.
    assert not b.try_spend(20.0)


def test_retry_budget_minimum_lets_a_quiet_proxy_retry() -> None:
    b = RetryBudget(ratio=0.2, min_per_s=1.0, ttl_s=10.0)
    assert sum(b.try_spend(0.0) for _ in range(20)) == 10   # 1/s over the 10 s window
    assert b.try_spend(10.5)                                # spent tokens expire too
