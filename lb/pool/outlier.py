"""Passive outlier detection and slow start: per-node state, pure, time passed in.

Called by `lb.request.dispatch` after every attempt (`record`), by `lb.pool.health` before it
readmits a node (`may_readmit`) and by `lb.pool.nodes.Node.candidate` for the
effective weight (`ramp`). Consecutive failures (no response, 5xx, per-try
timeout) eject a node for a back-off that doubles with each ejection in a
row, up to `max_ejection_s`; the back-off resets after the node has stayed in
for `max_ejection_s`. A readmitted or new node ramps its effective weight from
`min_ramp` to 1 over `slow_start_s` instead of taking a flood.
"""

from __future__ import annotations

from dataclasses import dataclass

from lb.config import OutlierConfig, PolicyConfig


@dataclass(slots=True, frozen=True)
class OutlierPolicy:
    consecutive_errors: int = 3
    base_ejection_s: float = 2.0
    max_ejection_s: float = 60.0
    slow_start_s: float = 5.0
    min_ramp: float = 0.1


@dataclass(slots=True)
class OutlierState:
    failures: int = 0               # consecutive failed attempts
    ejections: int = 0              # ejections in total (metrics)
    streak: int = 0                 # ejections in a row (back-off exponent)
    ejected_until: float = 0.0
    admitted_at: float | None = None    # start of the current slow start

    def record(self, ok: bool, now: float, policy: OutlierPolicy) -> bool:
        """Count an attempt's outcome; True when this failure ejects the node."""
        if ok:
            self.failures = 0
            return False
        self.failures += 1
        if self.failures < policy.consecutive_errors or self.ejected(now):
            return False
        if self.admitted_at is not None and now - self.admitted_at > policy.max_ejection_s:
            self.streak = 0         # it behaved for a long while: start the back-off over
        backoff = min(policy.base_ejection_s * 2 ** self.streak, policy.max_ejection_s)
        self.ejected_until = now + backoff
        self.ejections += 1
        self.streak += 1
        self.failures = 0
        return True

    def ejected(self, now: float) -> bool:
        return now < self.ejected_until

    def may_readmit(self, now: float) -> bool:
        """Health probes may readmit the node once its back-off has passed."""
        return not self.ejected(now)

    def admitted(self, now: float) -> None:
        """The node (re)joined the pool: start its slow start."""
        self.admitted_at = now

    def ramp(self, now: float, policy: OutlierPolicy) -> float:
        """Multiplier of the node's weight during slow start, in [min_ramp, 1]."""
        if self.admitted_at is None or policy.slow_start_s <= 0:
            return 1.0
        progress = (now - self.admitted_at) / policy.slow_start_s
        if progress >= 1.0:
            return 1.0
        return max(policy.min_ramp, progress)


def outlier_policy(ocfg: OutlierConfig, pcfg: PolicyConfig) -> OutlierPolicy:
    """The policy from the config's `outlier` section and `policy.slow_start_s`."""
    return OutlierPolicy(consecutive_errors=ocfg.consecutive_errors,
                         base_ejection_s=ocfg.base_ejection_s,
                         max_ejection_s=ocfg.max_ejection_s, slow_start_s=pcfg.slow_start_s)
