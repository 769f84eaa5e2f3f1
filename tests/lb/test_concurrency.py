"""lb.pool.concurrency.Limit: a node's concurrency limit learned from its replies. Pure: the
replies are drawn here from a model of a node with c slots (lognormal service, FIFO)."""

from __future__ import annotations

import math
import random

from lb.pool.concurrency import Limit
from lb.pool.policy import Tau

SIGMA = 0.5


class Node:
    """Replies of a node with `slots` slots: a request sent with k in flight waits for
    k − slots + 1 of them to finish (about that many service times over `slots`)."""

    def __init__(self, slots: int, seed: int = 1, service: float = 0.02) -> None:
        self.slots, self.service = slots, service
        self.rng = random.Random(seed)
        self.tau = Tau(10.0)

    def reply(self, k: int) -> float:
        work = self.rng.lognormvariate(math.log(self.service), SIGMA)
        wait = max(0, k - self.slots + 1) * self.service / self.slots
        self.tau.update(work + wait, 0.0)
        return work + wait


def drive(limit: Limit, node: Node, replies: int, t0: float = 0.0) -> list[int]:
    """Send at every level below the limit in turn and, every other reply, a probe when
    it wants one, as a busy scheduler would; the limit after each reply."""
    out = []
    for i in range(replies):
        allowed = limit.allowed()
        k = i % allowed
        if i % 2 and limit.wants_probe():
            limit.probe_sent()
            k = allowed
            limit.probes -= 1
        limit.observe(k, node.reply(k), node.tau, t0 + i * 0.01)
        out.append(limit.value)
    return out


def test_a_limit_above_the_nodes_slots_comes_down_to_them_in_one_step() -> None:
    """Started at 8 on a 2-slot node: the levels from 2 up are slower, and the gradient
    (c ≈ (k + 1) / excess) takes L to about 2 at once, not one level at a time."""
    limit = Limit(8)
    values = drive(limit, Node(2), 600)
    assert values[-1] in (2, 3) and limit.decreases <= 3
    assert sum(v <= 3 for v in values[300:]) >= 280


def test_a_limit_below_the_nodes_slots_grows_in_its_slow_start() -> None:
    limit = Limit(2)
    values = drive(limit, Node(16), 1500)
    assert max(values) >= 16 and limit.increases >= 3


def test_a_node_with_flat_latency_is_never_lowered_by_noise() -> None:
    """Thousands of replies at levels that all start at once: no false alarm."""
    for seed in range(5):
        limit = Limit(4, ceiling=4)
        drive(limit, Node(8, seed=seed), 4000)
        assert limit.value == 4 and limit.decreases == 0, seed


def test_a_pinned_limit_never_moves() -> None:
    limit = Limit(3, pinned=True)
    assert drive(limit, Node(1), 300) == [3] * 300 and not limit.wants_probe()


def test_it_measures_the_levels_below_again_when_it_has_none_to_judge_by() -> None:
    """A node kept busy at L − 1 only: the levels below have no replies, so the limit
    allows half of L for a while (Envoy's minRTT window), then judges and goes back."""
    limit = Limit(6)
    limit.starting = False
    node = Node(2)
    for i in range(200):
        limit.observe(5, node.reply(5), node.tau, i * 0.01)
        if limit.measuring:
            break
    assert limit.measuring and limit.allowed() == 3
    now = 3.0
    while limit.measuring:
        k = int(now * 100) % 3
        limit.observe(k, node.reply(k), node.tau, now)
        now += 0.01
    assert limit.value <= 3
