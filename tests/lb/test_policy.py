"""The policy is pure: plain asserts on the formula and on picks."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from lb.pool.policy import (
    TAU_SAMPLES,
    Candidate,
    LoadWindow,
    SmoothRoundRobin,
    Tau,
    least_conn,
    least_load,
    seed_load,
)


def test_seed_worked_example_formula() -> None:
    # The seed's example: ten requests of weight 1 taking 10, 20, ..., 100 ms on
    # one node. Σ w_j·t_j = 550 ms (the seed wrote 1000: an arithmetic slip).
    samples = [(1.0, t / 1000.0) for t in range(10, 101, 10)]
    assert seed_load(samples, weight=1.0) == pytest.approx(0.550)
    # Divided by the node's weight W_i.
    assert seed_load(samples, weight=2.0) == pytest.approx(0.275)
    # Request weights multiply their times: w=3 for 10 ms counts as 30 ms.
    assert seed_load([(3.0, 0.010), (1.0, 0.020)], weight=1.0) == pytest.approx(0.050)


def test_seed_formula_with_equal_weights_is_proportional_to_plain_sum() -> None:
    samples = [(2.0, 0.5), (1.0, 0.25)]
    plain = sum(w * t for w, t in samples)
    assert seed_load(samples, 4.0) == pytest.approx(plain / 4.0)
    with pytest.raises(ValueError):
        seed_load(samples, 0.0)


def test_load_window_matches_seed_formula_and_expires() -> None:
    win = LoadWindow(window_s=10.0)
    for i, t in enumerate(range(10, 101, 10)):
        win.add(now=float(i), units=1.0, seconds=t / 1000.0)
    assert win.work(now=9.0) == pytest.approx(0.550)
    assert win.count(now=9.0) == 10
    # At t=12.5 the samples stamped 0, 1 and 2 have left the 10 s window.
    assert win.work(now=12.5) == pytest.approx(0.550 - 0.010 - 0.020 - 0.030)
    assert win.work(now=100.0) == 0.0 and win.count(now=100.0) == 0


def test_least_load_score_uses_inflight_units_tau_and_weight() -> None:
    rng = random.Random(1)
    # score = (inflight_units + w) * tau / W
    a = Candidate(weight=3.0, inflight_units=2.0, inflight=2, tau=0.010)  # (2+1)*.01/3 = .010
    b = Candidate(weight=1.0, inflight_units=0.0, inflight=0, tau=0.008)  # (0+1)*.008/1 = .008
    assert least_load([a, b], 1.0, rng) == 1
    # A bigger request changes the answer: (2+4)*.01/3 = .020 < (0+4)*.008 = .032
    assert least_load([a, b], 4.0, rng) == 0


def test_least_load_prefers_faster_node_at_equal_weight() -> None:
    rng = random.Random(2)
    fast = Candidate(1.0, 0.0, 0, 0.005)
    slow = Candidate(1.0, 0.0, 0, 0.050)
    assert all(least_load([slow, fast], 1.0, rng) == 1 for _ in range(50))


def test_ties_are_broken_in_proportion_to_weight() -> None:
    rng = random.Random(3)
    # Equal scores: (0+1)*0.03/3 == (0+1)*0.01/1.
    cands = [Candidate(3.0, 0.0, 0, 0.03), Candidate(1.0, 0.0, 0, 0.01)]
    counts = Counter(least_load(cands, 1.0, rng) for _ in range(8000))
    assert counts[0] / 8000 == pytest.approx(0.75, abs=0.03)


def test_node_without_samples_is_scored_with_the_least_known_tau() -> None:
    rng = random.Random(4)
    slow = Candidate(1.0, 0.0, 0, 0.03)
    busy_fast = Candidate(1.0, 3.0, 3, 0.01)     # score (3+1)*0.01 = 0.04
    new = Candidate(1.0, 0.0, 0, None)           # least known τ: 0.01
    assert least_load([slow, busy_fast, new], 1.0, rng) == 2
    # Beside an idle fast node it ties (both 0.01): it gets its share and so samples.
    idle_fast = Candidate(1.0, 0.0, 0, 0.01)
    counts = Counter(least_load([slow, idle_fast, new], 1.0, rng) for _ in range(2000))
    assert counts[0] == 0 and 800 < counts[2] < 1200
    # Nobody has samples: all score alike and weight decides the tie.
    counts = Counter(least_load([Candidate(3.0, 0, 0, None), Candidate(1.0, 0, 0, None)],
                                1.0, rng) for _ in range(2000))
    assert counts[0] == 2000   # (0+1)*1/3 < (0+1)*1/1: the heavier node wins outright


def test_new_node_beside_a_fast_idle_one_and_a_warming_one_gets_traffic() -> None:
    """Found by DNS discovery under light load: one node answered its two warm-up
    requests in 24 ms, another serves everything in 1.6 ms. Neither the warming node
    nor a newcomer may be shut out: the newcomer ties with the fast node at once,
    and a τ of two samples is trusted for 2/31 of the decay, not for the full one."""
    rng = random.Random(11)
    fast = Candidate(1.0, 0.0, 0, 0.0016, tau_age=0.0)
    new = Candidate(1.0, 0.0, 0, None)
    warming = Candidate(1.0, 0.0, 0, 0.024, tau_age=3.0, tau_n=2)
    fresh_warming = Candidate(1.0, 0.0, 0, 0.024, tau_age=0.0, tau_n=2)
    assert 2 in {least_load([fast, fresh_warming, new], 1.0, rng, decay_s=10.0)
                 for _ in range(50)}
    assert 1 in {least_load([fast, warming], 1.0, rng, decay_s=10.0, band=0.2)
                 for _ in range(50)}
    # The same τ from a full ring of samples is trusted for the whole decay.
    known_slow = Candidate(1.0, 0.0, 0, 0.024, tau_age=3.0, tau_n=31)
    assert {least_load([fast, known_slow], 1.0, rng, decay_s=10.0, band=0.2)
            for _ in range(50)} == {0}


def test_saturated_pool_converges_to_weight_ratio() -> None:
    """Simulate a closed loop of equal-cost requests on equal-speed nodes."""
    rng = random.Random(5)
    weights = [3.0, 1.0, 1.0]
    inflight = [0, 0, 0]
    served = Counter[int]()
    # 40 requests in flight at all times; each completion frees one slot.
    for step in range(20000):
        if sum(inflight) >= 40:
            done = rng.choices(range(3), weights=inflight)[0]
            inflight[done] -= 1
            served[done] += 1
        cands = [Candidate(w, float(n), n, 0.01) for w, n in zip(weights, inflight, strict=True)]
        inflight[least_load(cands, 1.0, rng)] += 1
        del step
    total = sum(served.values())
    assert served[0] / total == pytest.approx(0.6, abs=0.05)
    assert served[1] / total == pytest.approx(0.2, abs=0.04)


def test_least_conn_divides_connections_by_weight() -> None:
    rng = random.Random(6)
    cands = [Candidate(2.0, 0, 3, None), Candidate(1.0, 0, 1, None)]  # 1.5 vs 1.0
    assert least_conn(cands, 1.0, rng) == 1


def test_smooth_round_robin_follows_weights_evenly() -> None:
    rr = SmoothRoundRobin()
    names, weights = ["a", "b", "c"], [5.0, 1.0, 1.0]
    seq = [names[rr.pick(names, weights)] for _ in range(7)]
    assert Counter(seq) == {"a": 5, "b": 1, "c": 1}
    assert seq[0] == "a" and "b" in seq[1:6]   # smooth: b and c are interleaved


def test_tau_is_the_median_of_recent_replies() -> None:
    tau = Tau(decay_s=10.0)
    assert tau.update(0.010, now=0.0) == 0.010          # the first reply counts at once
    for i in range(40):
        tau.update(0.020, now=1.0 + i)
    assert tau.value == 0.020
    # A stall: a minority of slow replies does not move τ, so the node is trusted
    # again as soon as its requests complete normally.
    for i in range(TAU_SAMPLES // 2):
        tau.update(0.400, now=50.0 + i)
    assert tau.value == 0.020
    # A node that really slowed down: the majority moves τ, within half the window.
    tau.update(0.400, now=80.0)
    assert tau.value == 0.400
    # A cancelled attempt's time is a lower bound: it may raise τ, never lower it.
    tau.update(0.005, now=81.0)
    was = tau.value
    tau.raise_to(0.001, now=82.0)
    assert tau.value == was
    tau.reset()
    assert tau.value is None and tau.update(0.030, now=90.0) == 0.030


def test_empty_candidates_raise() -> None:
    with pytest.raises(ValueError):
        least_load([], 1.0, random.Random())


def test_stale_slow_estimate_relaxes_towards_the_least_tau() -> None:
    """A node that looked slow once (a warm-up request) must not starve forever."""
    from lb.pool.policy import effective_tau

    fresh = Candidate(1.0, 0.0, 0, 0.080, tau_age=0.0)
    stale = Candidate(1.0, 0.0, 0, 0.080, tau_age=10.0)
    assert effective_tau(fresh, 0.020, decay_s=10.0) == 0.080
    assert effective_tau(stale, 0.020, 10.0) == pytest.approx(0.020 + 0.060 * math.exp(-1))
    # A fast estimate is not pulled up towards the median.
    assert effective_tau(Candidate(1.0, 0.0, 0, 0.010, 100.0), 0.020, 10.0) == 0.010
    rng = random.Random(7)
    busy = [Candidate(1.0, 1.0, 1, 0.030, 0.0), Candidate(1.0, 1.0, 1, 0.030, 0.0)]
    starved = Candidate(1.0, 0.0, 0, 0.200, tau_age=0.0)
    assert least_load([*busy, starved], 1.0, rng, decay_s=2.0) != 2
    later = Candidate(1.0, 0.0, 0, 0.200, tau_age=10.0)     # 5 time constants later
    assert least_load([*busy, later], 1.0, rng, decay_s=2.0) == 2


def test_least_load_picks_the_least_score_of_every_kind_of_candidate() -> None:
    """least_load's choice is the argmin of `score` over candidates of every kind (no
    τ, stale τ, stalled, slow start)."""
    from lb.pool.policy import least_tau, score

    rng = random.Random(11)
    for _ in range(3000):
        cands = []
        for _ in range(rng.randint(1, 5)):
            tau = rng.choice([None, rng.uniform(0.005, 0.2)])
            held = rng.choice([0.0, rng.uniform(0.5, 4.0)])
            cands.append(Candidate(weight=rng.choice([1.0, 3.0, rng.uniform(0.1, 1.0)]),
                                   inflight_units=rng.uniform(0.0, 8.0) if held else 0.0,
                                   inflight=rng.randint(0, 8), tau=tau,
                                   tau_age=rng.choice([0.0, rng.uniform(0.0, 30.0)]),
                                   tau_n=rng.randint(1, TAU_SAMPLES),
                                   oldest_age=rng.uniform(0.0, 2.0) if held else 0.0,
                                   oldest_units=held))
        units, decay, stall = rng.uniform(0.5, 4.0), rng.uniform(1.0, 60.0), 3.0
        ref = least_tau(cands)
        scores = [score(c, units, ref, decay, stall) for c in cands]
        i = least_load(cands, units, rng, decay, stall, band=0.0)
        assert scores[i] == pytest.approx(min(scores), rel=1e-9)


def test_load_window_memory_is_bounded_by_its_buckets() -> None:
    """A busy node's window holds buckets, not one entry per request; the sums agree
    with the seed's formula over the completions of the window."""
    win = LoadWindow(window_s=10.0)
    samples = [(i * 0.001, 2.0, 0.004) for i in range(20_000)]      # 1 000 req/s, 20 s
    for now, units, seconds in samples:
        win.add(now, units, seconds)
    assert len(win._buckets) <= 101
    now = samples[-1][0]
    kept = [(u, t) for at, u, t in samples if at >= now - 10.0]
    assert win.count(now) == pytest.approx(len(kept), rel=0.011)       # one bucket early
    assert win.work(now) == pytest.approx(seed_load(kept, 1.0), rel=0.011)
