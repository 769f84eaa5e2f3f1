"""The benchmark helpers behave as the benchmarks assume: the simulated node's
stall arithmetic, queueing past its slots and statistics; the load generator's
schedules and its client sessions. Real simnode processes on free ports."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from harness import simnode
from harness.loadgen import open_loop, schedule
from scripts.benchenv import merge_hedge
from tests.procs import Proc, free_port, http


def test_stalls_pause_work_in_service_and_delay_new_work() -> None:
    stalls = simnode.Stalls(every_s=2.0, length_s=0.2, t0=0.0)   # [0, 0.2), [2, 2.2), ...
    assert stalls.finish(0.3, 0.1) == pytest.approx(0.4)
    # 50 ms of work before the stall at 2.0, the rest after it ends at 2.2
    assert stalls.finish(1.95, 0.1) == pytest.approx(2.25)
    assert stalls.finish(2.05, 0.01) == pytest.approx(2.21)      # starts inside a stall
    assert stalls.finish(0.0, 0.1) == pytest.approx(0.3)
    assert stalls.finish(0.2, 4.0) == pytest.approx(4.6)         # spans two stalls
    assert stalls.resume_at(2.1) == pytest.approx(2.2)
    assert stalls.resume_at(1.0) == pytest.approx(1.0)
    assert simnode.Stalls(0.0, 0.0, 0.0).finish(5.0, 1.0) == pytest.approx(6.0)


def test_service_times_have_the_asked_mean() -> None:
    node = simnode.Node(simnode.parse(["--port", "1", "--mean-ms", "20", "--seed", "3"]))
    draws = [node.rng.lognormvariate(node.mu, node.sigma) for _ in range(40_000)]
    assert statistics.fmean(draws) == pytest.approx(0.020, rel=0.03)
    assert statistics.median(draws) < statistics.fmean(draws)          # skewed right


def test_deltas_give_inflight_shares_and_max_over_fair() -> None:
    before = [{"received": 10, "concurrency_area_s": 1.0, "t_s": 10.0, "max_concurrency": 0}] * 3
    after = [{"received": 110, "concurrency_area_s": 1.0 + 2.0 * 10, "t_s": 20.0,
              "max_concurrency": 5},
             {"received": 60, "concurrency_area_s": 1.0 + 1.0 * 10, "t_s": 20.0,
              "max_concurrency": 3},
             {"received": 60, "concurrency_area_s": 1.0 + 1.0 * 10, "t_s": 20.0,
              "max_concurrency": 3}]
    d = simnode.deltas(before, after)
    assert d["received"] == [100, 50, 50]
    assert d["avg_concurrency"] == [2.0, 1.0, 1.0]
    assert d["inflight_share"] == [0.5, 0.25, 0.25]
    assert d["max_share_over_fair"] == pytest.approx(1.5)


def test_simnode_queues_requests_past_its_slots(tmp_path: Path) -> None:
    port = free_port()
    proc = Proc("simnode", simnode.command(port, 150.0, slots=2, sigma=0.0), tmp_path)
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/v1/models/mnist", 15.0,
                       ok=lambda s, b: s == 200 and b"AVAILABLE" in b)
        url = f"http://127.0.0.1:{port}/v1/models/mnist:predict"

        def one(_i: int) -> tuple[int, float]:
            t0 = time.perf_counter()
            status, _h, _b = http("POST", url, {"instances": [[1.0]]}, timeout=10.0)
            return status, time.perf_counter() - t0

        with ThreadPoolExecutor(4) as pool:
            done = list(pool.map(one, range(4)))
        assert [s for s, _ in done] == [200] * 4
        # Two are served at once, two wait for a slot: lower bounds only.
        waits = sorted(t for _, t in done)
        assert waits[0] >= 0.14 and waits[3] >= 0.29
        stats = simnode.read_stats([port])[0]
        assert stats["received"] == stats["served"] == 4
        assert stats["max_concurrency"] == 4 and stats["concurrency"] == 0
        assert stats["concurrency_area_s"] >= 2 * 0.14 + 2 * 0.29
    finally:
        proc.stop()


def test_poisson_and_uniform_schedules() -> None:
    uniform = schedule(100.0, 5, "uniform")
    assert list(uniform) == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04])
    poisson = schedule(100.0, 20_000, "poisson", seed=1)
    assert poisson[0] == 0.0 and np.all(np.diff(poisson) >= 0)
    assert float(np.mean(np.diff(poisson))) == pytest.approx(0.01, rel=0.03)
    assert np.array_equal(poisson, schedule(100.0, 20_000, "poisson", seed=1))
    with pytest.raises(ValueError):
        schedule(1.0, 1, "bursty")


def test_open_loop_over_several_sessions_reports_its_own_pace(tmp_path: Path) -> None:
    port = free_port()
    proc = Proc("simnode-fast", simnode.command(port, 1.0, slots=64), tmp_path)
    try:
        proc.wait_http(f"http://127.0.0.1:{port}/v1/models/mnist", 15.0)
        res = asyncio.run(open_loop(f"http://127.0.0.1:{port}/v1/models/mnist:predict",
                                    lambda _i: b'{"instances": [[1.0]]}', rate=200.0,
                                    count=100, arrivals="poisson", seed=2, connections=8))
        assert res.sent == res.ok == 100 and res.failed == 0
        assert len(res.send_lag_ms) == 100 and min(res.send_lag_ms) >= 0
        assert res.schedule_span_s > 0 and not math.isnan(res.on_schedule)
        assert simnode.read_stats([port])[0]["received"] == 100
    finally:
        proc.stop()


def test_hedge_counters_of_several_processes_add_up_and_settings_do_not() -> None:
    one = {"enabled": True, "sent": 3, "won": 1, "budget_available": 2.5, "max_ratio": 0.05}
    two = {"enabled": True, "sent": 4, "won": 0, "budget_available": 1.0, "max_ratio": 0.05}
    merged = merge_hedge([{"hedge": one}, {"hedge": two}, {"pid": 3}])
    assert merged == {"enabled": True, "sent": 7, "won": 1, "budget_available": 3.5,
                      "max_ratio": 0.05}
    assert merge_hedge([{"pid": 1}]) is None
