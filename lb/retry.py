"""The retry budget: retries may add at most a share of recent traffic. Pure.

Called by `lb.proxy.Proxy.forward` before a second attempt. Without a budget,
a failing pool turns every request into two and doubles the load on whatever
still works (retry storms). Linkerd-style token bucket: every request deposits
`ratio` tokens (expiring after `ttl_s`), every retry spends one, and
`min_per_s` retries per second are always allowed so a quiet proxy can still
retry. Time is passed in, so this is tested with plain numbers.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True)
class RetryBudget:
    ratio: float = 0.2          # retries allowed per request
    min_per_s: float = 5.0      # retries always allowed per second
    ttl_s: float = 10.0         # how long a request's deposit counts
    _deposits: deque[float] = field(default_factory=deque)
    _spent: deque[float] = field(default_factory=deque)
    retries: int = 0
    rejected: int = 0

    def _expire(self, now: float) -> None:
        horizon = now - self.ttl_s
        while self._deposits and self._deposits[0] < horizon:
            self._deposits.popleft()
        while self._spent and self._spent[0] < horizon:
            self._spent.popleft()

    def deposit(self, now: float) -> None:
        """A client request arrived (counted once, whatever its attempts)."""
        self._deposits.append(now)
        self._expire(now)

    def available(self, now: float) -> float:
        self._expire(now)
        return len(self._deposits) * self.ratio + self.min_per_s * self.ttl_s - len(self._spent)

    def try_spend(self, now: float) -> bool:
        """Take one retry from the budget; False (and counted) when it is empty."""
        if self.available(now) >= 1.0:
            self._spent.append(now)
            self.retries += 1
            return True
        self.rejected += 1
        return False
