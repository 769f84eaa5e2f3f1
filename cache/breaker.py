"""A small circuit breaker for the Redis store.

Called by `RedisStore._guarded` around every Redis command. Pure state (the
clock is injected), no I/O, so it is tested with a fake clock.

States: closed (calls pass) -> open after `failures_to_open` consecutive
failures (calls are refused for `reset_s`) -> half_open (exactly one probe
call passes; the rest are refused) -> closed on the probe's success, or open
again on its failure. A probe that ends without a verdict (cancelled) must be
`release()`d so the next call can probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass(slots=True)
class CircuitBreaker:
    """Consecutive-failure breaker with a single half-open probe."""

    failures_to_open: int
    reset_s: float
    clock: Callable[[], float] = field(default=time.monotonic)
    state: str = CLOSED
    consecutive_failures: int = 0
    opens: int = 0
    _opened_at: float = 0.0
    _probing: bool = False

    def allow(self) -> bool:
        """May a call go to the backend now? In half_open, True for one caller only."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self.clock() - self._opened_at >= self.reset_s:
            self.state = HALF_OPEN
            self._probing = False
        if self.state == HALF_OPEN and not self._probing:
            self._probing = True
            return True
        return False

    def record_success(self) -> bool:
        """A call succeeded; returns True when this closed the breaker."""
        was_closed = self.state == CLOSED
        self.state = CLOSED
        self.consecutive_failures = 0
        self._probing = False
        return not was_closed

    def record_failure(self) -> bool:
        """A call failed; returns True when this opened the breaker."""
        self.consecutive_failures += 1
        self._probing = False
        if self.state == HALF_OPEN or (
            self.state == CLOSED and self.consecutive_failures >= self.failures_to_open
        ):
            self.state = OPEN
            self._opened_at = self.clock()
            self.opens += 1
            return True
        return False

    def release(self) -> None:
        """A call ended without a verdict (cancelled): let another caller probe."""
        self._probing = False
