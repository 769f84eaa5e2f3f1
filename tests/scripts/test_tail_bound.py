"""scripts/tail_bound.py: the node model is exact, and the bound orders as it must."""

from __future__ import annotations

import random
import statistics

import pytest

from scripts import tail_bound as tb


def test_work_waits_out_a_stall_and_pauses_across_the_next() -> None:
    node = tb.Node(0.02, stall_s=0.2, every_s=2.0)
    assert node.advance(0.1, 0.05) == pytest.approx(0.25)      # starts inside a stall
    assert node.advance(0.5, 0.05) == pytest.approx(0.55)      # between stalls
    assert node.advance(1.99, 0.02) == pytest.approx(2.21)     # 10 ms, stall, 10 ms


def test_a_node_serves_its_slots_at_once_and_queues_the_rest_fifo() -> None:
    node = tb.Node(1.0, slots=2)
    assert [node.send(0.0, 1.0) for _ in range(3)] == [1.0, 1.0, 2.0]
    assert node.inflight(0.5) == 3
    assert node.inflight(1.5) == 1
    assert node.finish_if_sent(1.5, 1.0) == pytest.approx(2.5)   # a slot is free


def test_work_is_drawn_with_the_node_mean() -> None:
    rng = random.Random(1)
    assert statistics.fmean(tb.draw(rng, 0.06) for _ in range(20000)) == pytest.approx(
        0.06, rel=0.02)


def test_knowing_the_queues_beats_least_conn_and_free_hedges_beat_both() -> None:
    sc = tb.SCENARIOS["slow111"]
    p99 = {name: tb.pct(tb.simulate(sc, policy, 60.0, seed=3), 0.99)
           for name, policy in tb.POLICIES}
    assert p99["oracle (queues)"] < 0.8 * p99["least_conn"]
    assert p99["oracle (clairvoyant)"] < p99["oracle (queues)"]
    oracle = tb.simulate(sc, tb.oracle_queues, 60.0, seed=3)
    hedged = tb.simulate(sc, tb.oracle_queues, 60.0, seed=3,
                         hedge_after_ms=tb.pct(oracle, 0.95))
    assert len(hedged) == len(oracle)
    assert all(h <= o for h, o in zip(hedged, oracle, strict=True))
    assert tb.pct(hedged, 0.99) < tb.pct(oracle, 0.99)
