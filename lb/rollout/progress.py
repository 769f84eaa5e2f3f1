"""A progressive rollout: the split moved step by step while the canary holds. Pure.

Owned by `lb.rollout.service.Rollouts` (one `Progress` per model with
`models.M.rollout`), which calls `evaluate` a few times a second with what the
current step has shown (`Reading`: the `to` group's and the `from` group's
calls, and the shadow's agreement when the model shadows its `to` group), and
`pause` / `resume` / `abort` for the admin port. Time is passed in (`now`,
time.monotonic()); nothing here reads a clock.

The share of traffic to `to` is `steps[index]` while running or paused, 0 once
aborted, and the last step once completed. Each evaluation, in order:

1. a gate that fails aborts (share 0) at once, whatever the step's age:
   - the `to` group's error rate (5xx, no answer, calls meant for it while it
     had no healthy node, and shadow copies it failed) exceeds the `from`
     group's by more than `abort_if.error_rate_over_stable`;
   - its p99 exceeds `abort_if.p99_ratio` × the `from` group's;
   - the shadow's argmax agreement is below `abort_if.agreement_below`;
   each gate judges only with `abort_if.min_requests` calls (or compared rows)
   in the step, so a failing canary is stopped within the step it fails in;
   the p99 gate with at least `P99_SAMPLES` timed calls on each side (the p99
   of 30 calls is their maximum: one slow call on a busy box would abort);
2. after `every_s` in the step, with that much evidence, the next step (the last
   one completes the rollout); without enough calls it waits. Calls answered
   from the cache are not evidence (the group's nodes did not answer them).

`resume` after an abort starts again from the first step; `abort` also rolls a
completed rollout back. A reload that keeps `from` and `to` keeps the state
(`reconfigure`): a paused rollout stays paused, a running one continues from the
largest new step not above its share.

Guarantees: the share only changes through `evaluate`, `pause`/`resume`/`abort`
and `reconfigure`, each of which returns True when it did (the caller then
moves the split and starts new step counters); at most `MAX_EVENTS` events kept.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from lb.rollout.settings import RolloutConfig
from lb.rollout.windows import StepCounts

MAX_EVENTS = 50
P99_SAMPLES = 100          # a p99 needs this many calls on each side (with fewer: the max)


class Phase(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    ABORTED = "aborted"
    COMPLETED = "completed"


class Refused(ValueError):
    """An admin action that does not apply in the rollout's phase (answered 409)."""


@dataclass(slots=True)
class Reading:
    """What the current step has shown."""

    canary: StepCounts = field(default_factory=StepCounts)     # the `to` group
    stable: StepCounts = field(default_factory=StepCounts)     # the `from` group
    compared: int = 0          # shadow rows compared by argmax in the step
    agreed: int = 0
    shadowed: int = 0          # shadow copies to the `to` group with both answers in
    shadow_errors: int = 0     # of those, copies the `to` group failed


class Progress:
    """One model's rollout (see the module docstring)."""

    __slots__ = ("aborts", "cfg", "elapsed", "events", "index", "phase", "reason", "step_at",
                 "transitions")

    def __init__(self, cfg: RolloutConfig, now: float) -> None:
        self.cfg = cfg
        self.phase = Phase.RUNNING
        self.index = 0
        self.step_at = now               # when the running step began (shifted by pauses)
        self.elapsed = 0.0               # a paused step's age when it was paused
        self.reason: str | None = None   # why it aborted
        self.transitions = 0
        self.aborts = 0
        self.events: deque[tuple[float, str]] = deque(maxlen=MAX_EVENTS)
        self._event(now, f"started at {self.share:g} %")

    @property
    def share(self) -> float:
        """Percent of the model's traffic to the `to` group now."""
        if self.phase is Phase.ABORTED:
            return 0.0
        return self.cfg.steps[self.index]

    def shares(self) -> list[tuple[str, float]]:
        """The split this state means: `to` first, so that growing its share moves
        only clients from `from` to `to` (see `lb.rollout.split`)."""
        return [(self.cfg.to, self.share), (self.cfg.from_, 100.0 - self.share)]

    def _event(self, now: float, text: str) -> None:
        self.transitions += 1
        self.events.append((now, text))

    # -- the gates ---------------------------------------------------------------

    def gate(self, r: Reading) -> str | None:
        """Why the step fails, or None while it holds (or lacks the evidence to judge)."""
        g, c, s = self.cfg.abort_if, r.canary, r.stable
        need = g.min_requests
        n = c.requests + c.diverted + r.shadowed
        if g.error_rate_over_stable is not None and n >= need:
            rate = (c.errors + c.diverted + r.shadow_errors) / n
            base = s.errors / s.requests if s.requests else 0.0
            if rate - base > g.error_rate_over_stable:
                return (f"error rate {rate:.3f} on {self.cfg.to} vs {base:.3f} on "
                        f"{self.cfg.from_} (limit +{g.error_rate_over_stable:g}, {n} calls)")
        timed = max(need, P99_SAMPLES)
        if g.p99_ratio is not None and len(c.latencies) >= timed and len(s.latencies) >= timed:
            cp, sp = c.p99(), s.p99()
            if cp is not None and sp and cp / sp > g.p99_ratio:
                return (f"p99 {cp * 1000:.1f} ms on {self.cfg.to} vs {sp * 1000:.1f} ms on "
                        f"{self.cfg.from_} (ratio {cp / sp:.2f} > {g.p99_ratio:g})")
        if g.agreement_below is not None and r.compared >= need:
            agreement = r.agreed / r.compared
            if agreement < g.agreement_below:
                return (f"agreement {agreement:.4f} below {g.agreement_below:g} "
                        f"({r.compared} rows compared)")
        return None

    def _enough(self, r: Reading) -> bool:
        """Evidence for the next step: calls answered by the `to` group's nodes, and
        compared rows while `from` still answers some (at 100 % nothing is shadowed)."""
        need = self.cfg.abort_if.min_requests
        if r.canary.requests < need:
            return False
        return (self.cfg.abort_if.agreement_below is None or self.share >= 100.0
                or r.compared >= need)

    # -- transitions --------------------------------------------------------------

    def evaluate(self, r: Reading, now: float) -> bool:
        """One look at the running step; True when the share or phase changed."""
        if self.phase is not Phase.RUNNING:
            return False
        why = self.gate(r)
        if why is not None:
            self._abort(now, why)
            return True
        if now - self.step_at < self.cfg.every_s or not self._enough(r):
            return False
        if self.index + 1 >= len(self.cfg.steps):
            self.phase = Phase.COMPLETED
            self._event(now, f"completed at {self.share:g} %")
        else:
            self.index += 1
            self.step_at = now
            self._event(now, f"step {self.index + 1}/{len(self.cfg.steps)}: {self.share:g} %")
        return True

    def _abort(self, now: float, why: str) -> None:
        self.phase = Phase.ABORTED
        self.reason = why
        self.aborts += 1
        self._event(now, f"aborted at step {self.index + 1}: {why}")

    def pause(self, now: float) -> bool:
        if self.phase is not Phase.RUNNING:
            raise Refused(f"cannot pause a rollout that is {self.phase}")
        self.phase = Phase.PAUSED
        self.elapsed = now - self.step_at
        self._event(now, f"paused at {self.share:g} %")
        return True

    def resume(self, now: float) -> bool:
        if self.phase is Phase.PAUSED:
            self.phase = Phase.RUNNING
            self.step_at = now - self.elapsed
            self._event(now, f"resumed at {self.share:g} %")
            return True
        if self.phase is Phase.ABORTED:
            self.phase, self.index, self.step_at, self.reason = Phase.RUNNING, 0, now, None
            self._event(now, f"restarted at {self.share:g} %")
            return True
        raise Refused(f"cannot resume a rollout that is {self.phase}")

    def abort(self, now: float, why: str = "by the operator") -> bool:
        if self.phase is Phase.ABORTED:
            raise Refused("the rollout is aborted already")
        self._abort(now, why)
        return True

    def reconfigure(self, cfg: RolloutConfig, now: float) -> bool:
        """A reload with the same `from` and `to`: the new steps, period and gates,
        the state kept (see the module docstring). True when the share changed."""
        before = self.share
        was = self.cfg.steps[self.index]
        self.cfg = cfg
        below = [i for i, s in enumerate(cfg.steps) if s <= was]
        self.index = below[-1] if below else 0
        if self.phase is Phase.COMPLETED and self.index + 1 < len(cfg.steps):
            self.phase = Phase.RUNNING                          # new steps beyond: go on
        changed = self.share != before
        if changed and self.phase is Phase.RUNNING:
            self.step_at = now
        return changed

    def as_dict(self, now: float, wall: float, reading: Reading | None = None) -> dict[str, Any]:
        age = self.elapsed if self.phase is Phase.PAUSED else now - self.step_at
        doc: dict[str, Any] = {
            "from": self.cfg.from_, "to": self.cfg.to, "state": str(self.phase),
            "share": self.share, "step": self.index + 1, "steps": list(self.cfg.steps),
            "step_age_s": round(age, 3), "every_s": self.cfg.every_s, "reason": self.reason,
            "aborts": self.aborts, "transitions": self.transitions,
            "events": [{"t": round(wall - (now - at), 3), "text": text}
                       for at, text in self.events]}
        if reading is not None:
            doc["current_step"] = {
                "to": reading.canary.as_dict(), "from": reading.stable.as_dict(),
                "compared": reading.compared, "agreement": (
                    round(reading.agreed / reading.compared, 6) if reading.compared else None)}
        return doc
