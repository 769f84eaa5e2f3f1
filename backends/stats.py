"""Request counters of one worker, served at `GET /_worker/stats`.

Updated by `rest` on the event loop only (no locks needed); read by tests and
benchmarks to count how many calls reached the backend.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

from backends.faults import Fault

VERBS = ("predict", "classify", "regress")


class WorkerStats:
    """`requests`: inference POSTs received; `inferences`: those that reached a model
    (an AVAILABLE version was found); `rows`: batch rows of successful inferences.
    Also holds `delay_s`, the deliberate slowdown both surfaces apply (settable at
    run time through `PUT /_worker/delay`, so a demo or test can slow a node live),
    and `fault`, a test-only fault (`backends.faults`, `PUT /_worker/fault`)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.fault = Fault()
        self.requests = 0
        self.inferences = 0
        self.rows = 0
        self.by_model: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(VERBS, 0))

    def received(self) -> None:
        self.requests += 1

    def reached_model(self, model: str, verb: str) -> None:
        self.inferences += 1
        self.by_model[model][verb] += 1

    def succeeded(self, rows: int) -> None:
        self.rows += rows

    def as_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "inferences": self.inferences,
            "rows": self.rows,
            "delay_ms": self.delay_s * 1000.0,
            "fault": self.fault.as_json(),
            "by_model": {m: dict(v) for m, v in self.by_model.items()},
            "pid": os.getpid(),
        }
