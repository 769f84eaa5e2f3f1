"""cache.breaker.CircuitBreaker with a fake clock."""

from __future__ import annotations

from cache.breaker import CircuitBreaker


def test_opens_half_opens_and_closes() -> None:
    now = [0.0]
    b = CircuitBreaker(3, 2.0, clock=lambda: now[0])
    assert b.allow()
    assert not b.record_failure() and not b.record_failure()
    assert b.record_failure() and b.state == "open"
    assert not b.allow()
    now[0] = 2.0
    assert b.allow() and b.state == "half_open"
    assert not b.allow()                       # one probe at a time
    assert b.record_failure() and b.state == "open" and b.opens == 2
    now[0] = 4.5
    assert b.allow()
    assert b.record_success() and b.state == "closed" and b.consecutive_failures == 0


def test_success_resets_the_count_and_release_frees_the_probe() -> None:
    now = [0.0]
    b = CircuitBreaker(2, 1.0, clock=lambda: now[0])
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state == "closed"
    b.record_failure()
    now[0] = 1.0
    assert b.allow() and not b.allow()
    b.release()                                # probe cancelled: someone else may probe
    assert b.allow()
