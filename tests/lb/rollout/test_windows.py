"""lb.rollout.windows in-process: the sliding window, group step counters, shadow stats."""

from __future__ import annotations

import random

import pytest

from lb.rollout.compare import Comparison
from lb.rollout.windows import RESERVOIR, GroupStats, Pair, ShadowStats, Sliding, quantile


def test_sliding_sums_and_max_forget_old_buckets() -> None:
    w = Sliding(60.0, 2, maxes=(1,))
    w.add(0.5, [1.0, 5.0])
    w.add(30.0, [2.0, 3.0])
    assert w.totals(59.0) == [3.0, 5.0]
    assert w.totals(62.0) == [2.0, 3.0]              # the first bucket fell out
    assert w.totals(200.0) == [0.0, 0.0]
    w.add(200.0, [4.0, 1.0])                          # a reused slot starts from zero
    assert w.totals(200.0) == [4.0, 1.0]


def test_quantile_is_nearest_rank() -> None:
    assert quantile([], 0.99) is None
    assert quantile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert quantile([3.0], 0.5) == 3.0


def test_group_step_counters_and_reservoir() -> None:
    g = GroupStats(random.Random(1))
    for i in range(RESERVOIR * 3):
        g.record(200 if i % 10 else 503, 0.001 * (i % 100) if i % 7 else None)
    g.record(0, 1.0)                                  # no answer: an error
    g.record(200, None, hit=True)                     # a cache hit: totals only
    g.diverted()
    step = g.step
    assert g.answered == step.requests + 1 == RESERVOIR * 3 + 2
    assert g.errors == step.errors == len(range(0, RESERVOIR * 3, 10)) + 1
    assert len(step.latencies) == RESERVOIR and step.diverted == 1
    p99 = step.p99()
    assert p99 is not None and 0.095 <= p99 <= 1.0
    g.begin_step()
    assert g.step.requests == 0 and g.answered == RESERVOIR * 3 + 2


def _pair(agreed: int, rows: int = 1, p: float = 0.01, s: float = 0.02,
          statuses: tuple[int, int] = (200, 200), mismatch: str | None = None) -> Pair:
    c = Comparison(rows=rows, class_rows=rows, agreed=agreed, max_abs=0.5, sum_abs=1.0,
                   values=10 * rows, mismatch=mismatch,
                   disagreeing=list(range(rows - agreed)),
                   primary_classes=[1] * (rows - agreed), shadow_classes=[2] * (rows - agreed))
    return Pair(statuses[0], statuses[1], c, p, s, "abc", "rest", "canary-1")


def test_shadow_stats_totals_window_and_sample() -> None:
    st = ShadowStats(window_s=60.0, samples=2)
    for i in range(10):
        st.record(float(i), 1000.0 + i, _pair(agreed=1 if i % 5 else 0))
    st.record(100.0, 1100.0, Pair(200, 0, None, 0.01, 0.5, "def", "grpc", "canary-1"))
    st.skip("cap")
    doc = st.as_dict(100.0)
    totals, window = doc["totals"], doc["window"]
    assert (totals["pairs"], totals["class_rows"], totals["agreed"]) == (11, 10, 8)
    assert totals["agreement"] == pytest.approx(0.8)
    assert totals["latency_ratio"] == pytest.approx(2.0)
    assert totals["shadow_errors"] == 1 and totals["primary_errors"] == 0
    assert totals["mean_abs_diff"] == pytest.approx(0.1) and totals["max_abs_diff"] == 0.5
    assert window["pairs"] == 1 and window["agreement"] is None    # the old pairs fell out
    assert window["shadow_error_rate"] == 1.0
    assert doc["skipped"] == {"cap": 1}
    assert [s["t"] for s in st.sample] == [1000.0, 1005.0]          # bounded: the newest 2
    assert st.sample[0] == {"t": 1000.0, "input": "abc", "protocol": "rest",
                            "node": "canary-1", "rows": [0], "primary": [1], "shadow": [2],
                            "max_abs_diff": 0.5, "mismatch": None}
    assert st.agreement_counts() == (10, 8)


def test_shadow_stats_mismatch_and_resize() -> None:
    st = ShadowStats(window_s=10.0, samples=5)
    st.record(1.0, 1.0, _pair(agreed=0, mismatch="shape"))
    assert st.mismatches == 1 and st.agreement_counts() == (0, 0)
    assert st.sample[-1]["mismatch"] == "shape"
    st.resize(10.0, 1)
    assert st.sample.maxlen == 1 and len(st.sample) == 1
