"""The pieces scripts/bench_cache.py's adaptive workloads rely on: request bodies
are distinct tensors per id and the same bytes for the same id, key sequences are
seeded, skewed and their scan keys never repeat, the span arithmetic recovers the
curve's estimate over a part of a run, paired ratios, options, and the CPU clock;
the in-process `curve` workload reports every point of every stream (its CPU
timing runs two short child Pythons)."""

from __future__ import annotations

import os
import time

import numpy as np
import orjson
import pytest

from harness.usage import cpu_seconds
from scripts.bench_cache import paired, parse, run
from scripts.bench_cache_curve import stream
from scripts.bench_cache_traces import SCAN_BASE, ZERO, Rows, span, trace_plan, zipf_ids


def test_bodies_are_distinct_tensors_per_id_and_stable_bytes() -> None:
    rows = Rows()
    ids = [0, 1, 999, 1000, 64, 1_000_000, 123_456_789, SCAN_BASE + 7, 700_000_001]
    tensors = set()
    for i in ids:
        body = rows.body(i)
        assert body == rows.body(i)
        (row,) = orjson.loads(body)["instances"]
        assert len(row) == 784
        tensors.add(np.asarray(row, dtype=np.float32).tobytes())
    assert len(tensors) == len(ids)
    # pixels past the first three are the digit's, untouched
    a, b = (orjson.loads(rows.body(i))["instances"][0] for i in (5, 5 + 64 * 1000))
    assert a[3:] == b[3:] and a[:3] != b[:3]


def test_zipf_ids_are_seeded_skewed_and_scan_keys_never_repeat() -> None:
    ids = zipf_ids(5000, 30000, seed=3)
    assert np.array_equal(ids, zipf_ids(5000, 30000, seed=3))
    assert not np.array_equal(ids, zipf_ids(5000, 30000, seed=4))
    assert ids.min() >= 0 and ids.max() < 5000
    counts = np.sort(np.bincount(ids, minlength=5000))[::-1]
    weights = np.arange(1, 5001) ** -0.9
    assert counts[0] / 30000 == pytest.approx(weights[0] / weights.sum(), rel=0.15)
    assert counts[:500].sum() > 0.5 * 30000 > counts[2500:].sum() * 4

    scan = zipf_ids(5000, 30000, seed=3, scan_every=3)
    one_off = scan[2::3]
    assert (one_off >= SCAN_BASE).all() and len(np.unique(one_off)) == len(one_off)
    rest = np.delete(scan, np.arange(2, 30000, 3))
    assert (rest < 5000).all()


def test_span_recovers_the_estimate_over_part_of_a_run() -> None:
    # First half: 100 lookups, the curve says 0.5 at 1x over 100 references.
    a = {"hits": 40, "misses": 60, "mrc": {"1": 0.5, "2": 0.6}, "mrc_refs": 100}
    # Second half: 100 lookups, 62 LRU hits at 1x, 70 at 2x, and 10 references counted
    # twice (each a hit at distance ~0) -> 110 references, 72 and 80 estimated hits.
    b = {"hits": 95, "misses": 105, "mrc": {"1": (50 + 72) / 210, "2": (60 + 80) / 210},
         "mrc_refs": 210}
    s = span(a, b)
    assert s["hit_rate"] == pytest.approx(0.55)
    assert s["mrc"] == pytest.approx({"1": 72 / 110, "2": 80 / 110}, abs=1e-4)
    assert s["mrc_corrected"] == pytest.approx({"1": 0.62, "2": 0.70}, abs=1e-4)
    assert s["mrc_refs_per_lookup"] == pytest.approx(1.1)
    whole = span(ZERO, b)
    assert whole["hit_rate"] == pytest.approx(95 / 200)
    assert whole["mrc_corrected"]["1"] == pytest.approx((122 - 10) / 200, abs=1e-4)
    # no curve (a store without one), or fewer references than lookups (it decayed)
    assert span(ZERO, {**b, "mrc": None}) == {"hit_rate": pytest.approx(0.475)}
    assert "mrc" not in span(ZERO, {**b, "mrc_refs": 150})


def test_paired_ratios_pair_runs_of_the_same_round() -> None:
    def r(rps: float, cpu: float) -> dict[str, float]:
        return {"rps": rps, "ok": 100, "failed": 0, "cpu_s": cpu}

    rounds = {"none": [r(100, 0.01), r(50, 0.01), r(200, 0.01)],
              "on": [r(95, 0.02), r(50, 0.02), r(220, 0.02)]}
    out = paired(rounds, "none")
    assert out["none"]["rps_ratio"] == 1.0
    assert out["on"]["rps_ratio"] == 1.0                   # median of 0.95, 1.0, 1.1
    assert out["on"]["rps_ratio_min_max"] == [0.95, 1.1]
    assert out["on"]["median_rps"] == 95
    assert out["on"]["cpu_ratio"] == 2.0
    assert out["on"]["proxy_cpu_us_per_req"] == pytest.approx(200.0)


def test_options_and_plans() -> None:
    args, workloads = parse(["--quick", "--workloads", "zipf,mrc"])
    assert workloads == ["zipf", "mrc"] and args.quick
    assert args.requests < 20000 and args.chunks > args.warm_chunks >= 1
    assert trace_plan(workloads, full=False) == {"zipf": [0.5, 1.0, 2.0]}
    assert trace_plan(["scan"], full=True) == {"scan": [1.0]}
    assert trace_plan(["zipf", "mrc"], full=True)["zipf"] == [0.5, 1.0, 2.0, 4.0]
    with pytest.raises(SystemExit):
        parse(["--workloads", "zipf,nope"])


def test_cpu_seconds_counts_this_process() -> None:
    before = cpu_seconds(os.getpid())
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    assert cpu_seconds(os.getpid()) - before >= 0.15


def test_curve_workload_runs_in_process_and_reports_every_point() -> None:
    """The `curve` workload: no workers; per stream and budget, the curve, the
    miniatures and the store measured at each size; CPU per lookup off and on."""
    args, workloads = parse(["--workloads", "curve", "--curve-mb", "0.02", "--curve-keys",
                             "2000", "--curve-requests", "3000", "--cpu-rounds", "1",
                             "--baseline", ""])
    assert workloads == ["curve"] and args.curve_mb == [0.02] and args.admission == "tinylfu"
    res = run(args, workloads)
    assert set(res) == {"note", "quick", "workloads", "seconds", "curve"}
    runs = res["curve"]["runs"]
    assert set(runs) == {"zipf@0.02", "zipf+scan@0.02", "loop@0.02"}
    for r in runs.values():
        for key in ("estimate", "simulated", "measured"):
            assert set(r[key]) == {"0.5", "1", "2", "4"}
        assert r["sampling"]["policy"] == "w-tinylfu"
        assert r["estimate"]["1"] == pytest.approx(r["measured"]["1"], abs=2e-4)
    cpu = res["curve"]["cpu"]["0.02"]
    assert set(cpu["us_per_lookup"]) == {"off", "on"} and cpu["on_vs_off"] > 0


def test_curve_streams() -> None:
    loop = stream("loop", 0.01, 100, 500, seed=1)
    span = int(1.5 * 0.01 * 2**20 / 200)
    assert loop[:span] == loop[span:2 * span] and len(set(loop)) == span
    scan = stream("zipf+scan", 0.01, 100, 300, seed=1)
    assert len(set(scan[2::3])) == 100 and all(len(k) == 49 for k in scan)
    assert stream("zipf", 0.01, 100, 300, seed=1) == stream("zipf", 0.01, 100, 300, seed=1)
