"""Counters over time for groups and shadows: totals, a sliding window, a rollout step. Pure.

Written by `lb.rollout.service` (one `GroupStats` per routed model and group,
one `ShadowStats` per shadowed model) as calls and shadow pairs finish; read by
the rollout's gates (`lb.rollout.progress`, through the step counters), by
`/stats`, `/metrics`, the history (agreement per second, from the totals) and
`/shadow/M` on the admin port. Time is passed in (`now`: time.monotonic();
`wall`: time.time(), only to stamp the samples people read).

Guarantees: memory is bounded whatever the traffic (a fixed number of time
buckets, a latency reservoir of `RESERVOIR` samples per group and step, at most
`samples` disagreements per model); totals only grow; a step's counters start
from zero at `begin_step`.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lb.rollout.compare import Comparison

RESERVOIR = 2048            # latency samples kept per group and rollout step
SLOTS = 60                  # time buckets of a sliding window
ERROR_STATUS = 500          # a reply at or above it (or none: 0) is a failure


def failed(status: int) -> bool:
    """No answer (0), a 5xx from a node, or the proxy's 503/504."""
    return status == 0 or status >= ERROR_STATUS


class Sliding:
    """Sums of `width` numbers over the last `window_s`, kept in `SLOTS` time buckets;
    the fields in `maxes` keep their maximum instead of a sum."""

    __slots__ = ("bucket_s", "data", "maxes", "stamps", "width", "window_s")

    def __init__(self, window_s: float, width: int, maxes: Sequence[int] = ()) -> None:
        self.window_s = window_s
        self.bucket_s = window_s / SLOTS
        self.width = width
        self.maxes = frozenset(maxes)
        self.stamps = [-1] * SLOTS
        self.data = [[0.0] * width for _ in range(SLOTS)]

    def add(self, now: float, values: Sequence[float]) -> None:
        index = int(now / self.bucket_s)
        slot = index % SLOTS
        row = self.data[slot]
        if self.stamps[slot] != index:
            self.stamps[slot] = index
            row[:] = [0.0] * self.width
        for i, v in enumerate(values):
            row[i] = max(row[i], v) if i in self.maxes else row[i] + v

    def totals(self, now: float) -> list[float]:
        """The fields over the window ending at `now`."""
        newest = int(now / self.bucket_s)
        out = [0.0] * self.width
        for stamp, row in zip(self.stamps, self.data, strict=True):
            if newest - SLOTS < stamp <= newest:
                for i, v in enumerate(row):
                    out[i] = max(out[i], v) if i in self.maxes else out[i] + v
        return out


def quantile(samples: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile; None without samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass(slots=True)
class StepCounts:
    """One group's calls in the current rollout step."""

    requests: int = 0
    errors: int = 0
    diverted: int = 0          # calls meant for the group while it had no healthy node
    seen: int = 0              # latency samples offered to the reservoir
    latencies: list[float] = field(default_factory=list)

    def p99(self) -> float | None:
        return quantile(self.latencies, 0.99)

    def as_dict(self) -> dict[str, Any]:
        p99 = self.p99()
        return {"requests": self.requests, "errors": self.errors, "diverted": self.diverted,
                "p99_ms": None if p99 is None else round(p99 * 1000.0, 3)}


class GroupStats:
    """A routed model's calls answered by one group (inference calls only)."""

    __slots__ = ("answered", "errors", "rng", "step")

    def __init__(self, rng: random.Random | None = None) -> None:
        self.answered = 0
        self.errors = 0
        self.rng = rng or random.Random()
        self.step = StepCounts()

    def record(self, status: int, seconds: float | None, hit: bool = False) -> None:
        """One call of this group finished with `status` (0: no answer) after `seconds`
        (None: not measured). A cache hit counts in the totals only: the step's
        counters judge what the group's nodes did (`lb.rollout.progress`)."""
        self.answered += 1
        if hit:
            return
        step = self.step
        step.requests += 1
        if failed(status):
            self.errors += 1
            step.errors += 1
        if seconds is not None:
            step.seen += 1
            if len(step.latencies) < RESERVOIR:
                step.latencies.append(seconds)
            else:                                   # Algorithm R: a uniform sample
                slot = int(self.rng.random() * step.seen)
                if slot < RESERVOIR:
                    step.latencies[slot] = seconds

    def diverted(self) -> None:
        self.step.diverted += 1

    def begin_step(self) -> None:
        self.step = StepCounts()


@dataclass(slots=True)
class Pair:
    """How one shadowed call went on both sides."""

    primary_status: int                 # HTTP-like status; 0: no answer
    shadow_status: int
    comparison: Comparison | None       # None: not both answered 200
    primary_s: float | None             # None: not measured (a cache hit)
    shadow_s: float | None
    input_hash: str
    protocol: str                       # "rest" | "grpc"
    node: str                           # the shadow's node


# The window's fields: sums, then the one maximum (max_abs, last).
_PAIRS, _CLASS_ROWS, _AGREED, _SUM_ABS, _VALUES, _LOG_RATIO, _RATIOS, _P_ERR, _S_ERR, \
    _MAX_ABS = range(10)
_WIDTH = 10


class ShadowStats:
    """A shadowed model's pairs: totals, a sliding window, the disagreement sample."""

    __slots__ = ("mismatches", "primary_errors", "rows", "sample", "shadow_errors", "skipped",
                 "totals", "window")

    def __init__(self, window_s: float, samples: int) -> None:
        self.window = Sliding(window_s, _WIDTH, maxes=(_MAX_ABS,))
        self.totals = [0.0] * _WIDTH
        self.rows = 0                    # rows in compared answers
        self.mismatches = 0              # pairs whose answers could not be compared
        self.primary_errors = 0
        self.shadow_errors = 0
        self.skipped: dict[str, int] = {}
        self.sample: deque[dict[str, Any]] = deque(maxlen=samples)

    def resize(self, window_s: float, samples: int) -> None:
        """A reload changed the window or the sample size: keep what fits."""
        if window_s != self.window.window_s:
            self.window = Sliding(window_s, _WIDTH, maxes=(_MAX_ABS,))
        if samples != self.sample.maxlen:
            self.sample = deque(self.sample, maxlen=samples)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def record(self, now: float, wall: float, pair: Pair) -> None:
        p_err, s_err = failed(pair.primary_status), failed(pair.shadow_status)
        self.primary_errors += p_err
        self.shadow_errors += s_err
        values = [0.0] * _WIDTH
        values[_PAIRS], values[_P_ERR], values[_S_ERR] = 1.0, float(p_err), float(s_err)
        c = pair.comparison
        if c is not None and c.mismatch is not None:
            self.mismatches += 1
        elif c is not None:
            self.rows += c.rows
            values[_CLASS_ROWS], values[_AGREED] = float(c.class_rows), float(c.agreed)
            values[_SUM_ABS], values[_VALUES], values[_MAX_ABS] = c.sum_abs, c.values, c.max_abs
            if pair.primary_s and pair.shadow_s:
                values[_LOG_RATIO] = math.log(pair.shadow_s / pair.primary_s)
                values[_RATIOS] = 1.0
        self.window.add(now, values)
        for i, v in enumerate(values):
            self.totals[i] = max(self.totals[i], v) if i == _MAX_ABS else self.totals[i] + v
        if c is not None and (c.disagreeing or c.mismatch) and self.sample.maxlen:
            self.sample.append({
                "t": round(wall, 3), "input": pair.input_hash, "protocol": pair.protocol,
                "node": pair.node, "rows": c.disagreeing, "primary": c.primary_classes,
                "shadow": c.shadow_classes, "max_abs_diff": _round(c.max_abs),
                "mismatch": c.mismatch})

    def agreement_counts(self) -> tuple[int, int]:
        """(rows compared by argmax, rows that agreed) since start."""
        return int(self.totals[_CLASS_ROWS]), int(self.totals[_AGREED])

    def counts(self) -> tuple[int, int, int, int]:
        """(rows compared, rows agreed, pairs, pairs whose shadow failed) since start."""
        t = self.totals
        return int(t[_CLASS_ROWS]), int(t[_AGREED]), int(t[_PAIRS]), self.shadow_errors

    def as_dict(self, now: float) -> dict[str, Any]:
        return {"totals": _summary(self.totals) | {
                    "rows": self.rows, "mismatches": self.mismatches,
                    "primary_errors": self.primary_errors, "shadow_errors": self.shadow_errors},
                "window": _summary(self.window.totals(now)) | {"seconds": self.window.window_s},
                "skipped": dict(self.skipped)}


def _round(v: float | None, digits: int = 6) -> float | None:
    return None if v is None else round(v, digits)


def _summary(f: Sequence[float]) -> dict[str, Any]:
    """The readable form of a row of window fields."""
    pairs = f[_PAIRS]
    return {
        "pairs": int(pairs), "class_rows": int(f[_CLASS_ROWS]), "agreed": int(f[_AGREED]),
        "agreement": _round(f[_AGREED] / f[_CLASS_ROWS]) if f[_CLASS_ROWS] else None,
        "max_abs_diff": _round(f[_MAX_ABS]) if f[_VALUES] else None,
        "mean_abs_diff": _round(f[_SUM_ABS] / f[_VALUES]) if f[_VALUES] else None,
        # the geometric mean of shadow / primary latency over pairs that both answered
        "latency_ratio": _round(math.exp(f[_LOG_RATIO] / f[_RATIOS]), 4) if f[_RATIOS] else None,
        "primary_error_rate": _round(f[_P_ERR] / pairs) if pairs else None,
        "shadow_error_rate": _round(f[_S_ERR] / pairs) if pairs else None,
    }
