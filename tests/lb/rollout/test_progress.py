"""lb.rollout.progress in-process with a clock passed in: steps, gates, abort, pause,
resume, reconfigure."""

from __future__ import annotations

from typing import Any

import pytest

from lb.rollout.progress import Phase, Progress, Reading, Refused
from lb.rollout.settings import RolloutConfig
from lb.rollout.windows import StepCounts


def config(**over: Any) -> RolloutConfig:
    doc: dict[str, Any] = {"from": "stable", "to": "canary", "steps": [5, 25, 100],
                           "every_s": 10, "abort_if": {"min_requests": 20}}
    doc.update(over)
    return RolloutConfig.model_validate(doc)


def counts(requests: int, errors: int = 0, latency_s: float = 0.01, diverted: int = 0
           ) -> StepCounts:
    return StepCounts(requests=requests, errors=errors, diverted=diverted,
                      latencies=[latency_s] * requests, seen=requests)


def healthy(n: int = 50) -> Reading:
    return Reading(counts(n), counts(n * 10))


def test_steps_advance_after_every_s_with_evidence_then_complete() -> None:
    p = Progress(config(), now=0.0)
    assert (p.phase, p.share, p.shares()) == (Phase.RUNNING, 5.0,
                                              [("canary", 5.0), ("stable", 95.0)])
    assert not p.evaluate(healthy(), 9.9)               # the step is not old enough
    assert not p.evaluate(Reading(counts(19), counts(500)), 10.0)    # too few calls: waits
    assert p.evaluate(healthy(), 10.5) and p.share == 25.0
    assert not p.evaluate(healthy(), 20.4)
    assert p.evaluate(healthy(), 20.5) and p.share == 100.0
    assert p.evaluate(healthy(), 31.0) and p.phase is Phase.COMPLETED and p.share == 100.0
    assert not p.evaluate(healthy(), 99.0)
    texts = [t for _, t in p.events]
    assert texts[0] == "started at 5 %" and texts[-1] == "completed at 100 %"


def test_error_gate_aborts_within_the_step() -> None:
    p = Progress(config(), now=0.0)
    assert p.evaluate(healthy(), 10.0) and p.share == 25.0
    assert not p.evaluate(Reading(counts(19, errors=19), counts(100)), 11.0)  # not judged yet
    assert p.evaluate(Reading(counts(20, errors=5), counts(100)), 11.5)
    assert (p.phase, p.share, p.aborts) == (Phase.ABORTED, 0.0, 1)
    assert p.shares() == [("canary", 0.0), ("stable", 100.0)]
    assert p.reason is not None and "error rate 0.250 on canary vs 0.000 on stable" in p.reason
    assert not p.evaluate(healthy(), 50.0)              # aborted stays aborted


def test_error_gate_compares_with_the_stable_group() -> None:
    p = Progress(config(abort_if={"min_requests": 20, "error_rate_over_stable": 0.05}), 0.0)
    # 10 % on both sides: no worse than stable
    assert not p.evaluate(Reading(counts(40, errors=4), counts(400, errors=40)), 5.0)
    assert p.evaluate(Reading(counts(40, errors=7), counts(400, errors=40)), 6.0)
    assert p.phase is Phase.ABORTED


def test_calls_diverted_from_an_unhealthy_canary_count_as_failures() -> None:
    p = Progress(config(), 0.0)
    assert p.evaluate(Reading(counts(3, errors=3, diverted=30), counts(300)), 2.0)
    assert p.phase is Phase.ABORTED and "33 calls" in (p.reason or "")


def test_shadow_copies_the_canary_failed_count_as_its_errors() -> None:
    p = Progress(config(), 0.0)
    # every canary call came from the cache (not evidence); the shadow copies failed
    assert p.evaluate(Reading(counts(0), counts(300), shadowed=25, shadow_errors=25), 1.0)
    assert p.phase is Phase.ABORTED and "25 calls" in (p.reason or "")


def test_the_last_step_completes_without_shadow_evidence() -> None:
    p = Progress(config(steps=[50, 100], abort_if={"min_requests": 20,
                                                   "agreement_below": 0.9}), 0.0)
    assert p.evaluate(Reading(counts(50), counts(50), compared=30, agreed=30), 10.0)
    assert p.share == 100.0      # from now on no call goes to stable: nothing is shadowed
    assert p.evaluate(Reading(counts(50), counts(0)), 20.0)
    assert p.phase is Phase.COMPLETED


def test_p99_gate_needs_enough_timed_calls() -> None:
    p = Progress(config(abort_if={"min_requests": 20, "p99_ratio": 1.5}), 0.0)
    assert not p.evaluate(Reading(counts(99, latency_s=0.05), counts(400, latency_s=0.01)), 1)
    assert p.phase is Phase.RUNNING         # 99 calls: their p99 is their max, not judged
    assert not p.evaluate(Reading(counts(100, latency_s=0.014), counts(400, latency_s=0.01)),
                          1)
    assert p.evaluate(Reading(counts(100, latency_s=0.016), counts(400, latency_s=0.01)), 2)
    assert "p99 16.0 ms on canary vs 10.0 ms" in (p.reason or "")


def test_agreement_gate_needs_rows_and_aborts_below() -> None:
    p = Progress(config(abort_if={"min_requests": 20, "agreement_below": 0.95}), 0.0)
    assert not p.evaluate(Reading(counts(50), counts(500), compared=19, agreed=0), 11.0)
    assert p.share == 5.0                  # enough calls but too few compared rows: waits
    assert p.evaluate(Reading(counts(50), counts(500), compared=100, agreed=96), 11.0)
    assert p.share == 25.0                 # 0.96 holds: the next step
    p2 = Progress(config(abort_if={"min_requests": 20, "agreement_below": 0.95}), 0.0)
    assert p2.evaluate(Reading(counts(50), counts(500), compared=100, agreed=94), 1.0)
    assert p2.phase is Phase.ABORTED and "agreement 0.9400 below 0.95" in (p2.reason or "")


def test_gates_can_be_switched_off() -> None:
    p = Progress(config(abort_if={"min_requests": 20, "error_rate_over_stable": None,
                                  "p99_ratio": None}), 0.0)
    assert not p.evaluate(Reading(counts(50, errors=50, latency_s=9.0), counts(50)), 1.0)
    assert p.phase is Phase.RUNNING


def test_pause_holds_the_step_clock_and_resume_goes_on() -> None:
    p = Progress(config(), 0.0)
    assert p.pause(4.0) and p.phase is Phase.PAUSED
    assert not p.evaluate(healthy(), 100.0)           # paused: no step, no gate
    assert not p.evaluate(Reading(counts(50, errors=50), counts(50)), 100.0)
    assert p.resume(200.0)
    assert p.phase.value == Phase.RUNNING.value       # (mypy narrowed it to PAUSED above)
    assert not p.evaluate(healthy(), 205.9)           # 4 s before the pause + 5.9 s
    assert p.evaluate(healthy(), 206.1) and p.share == 25.0
    with pytest.raises(Refused):
        p.resume(207.0)
    p.pause(207.0)
    with pytest.raises(Refused):
        p.pause(208.0)


def test_abort_by_the_operator_and_resume_restarts() -> None:
    p = Progress(config(), 0.0)
    p.evaluate(healthy(), 10.0)
    assert p.abort(11.0) and (p.phase, p.share, p.reason) == (Phase.ABORTED, 0.0,
                                                              "by the operator")
    with pytest.raises(Refused):
        p.abort(12.0)
    assert p.resume(13.0) and (p.phase, p.share, p.index) == (Phase.RUNNING, 5.0, 0)
    for t in (23.0, 33.0, 43.0):
        p.evaluate(healthy(), t)
    assert p.phase is Phase.COMPLETED
    assert p.abort(50.0) and p.share == 0.0           # a completed rollout rolls back too


def test_reconfigure_keeps_the_state() -> None:
    p = Progress(config(), 0.0)
    p.evaluate(healthy(), 10.0)
    assert p.share == 25.0
    assert not p.reconfigure(config(steps=[10, 25, 50, 100], every_s=5), 12.0)
    assert (p.index, p.share, p.cfg.every_s) == (1, 25.0, 5)
    assert p.reconfigure(config(steps=[20, 60, 100]), 13.0) and p.share == 20.0
    p.pause(14.0)
    p.reconfigure(config(steps=[20, 60, 100], every_s=1), 15.0)
    assert p.phase is Phase.PAUSED


def test_as_dict() -> None:
    p = Progress(config(), 100.0)
    doc = p.as_dict(103.0, 1_000.0, healthy(40))
    assert doc["state"] == "running" and doc["share"] == 5.0 and doc["step"] == 1
    assert doc["step_age_s"] == 3.0 and doc["from"] == "stable" and doc["to"] == "canary"
    assert doc["events"] == [{"t": 997.0, "text": "started at 5 %"}]
    assert doc["current_step"]["to"] == {"requests": 40, "errors": 0, "diverted": 0,
                                         "p99_ms": 10.0}
