"""lb.pool.nodes.Node: in-flight entries, ghosts of cancelled attempts, and what the policy
sees of a node that stops answering. Pure: plain numbers for the clock."""

from __future__ import annotations

import pytest

from lb.config import parse_config
from lb.pool.nodes import NodePool
from lb.pool.outlier import OutlierPolicy


def _pool() -> NodePool:
    cfg = parse_config({"listen": {"grpc": None},
                        "nodes": [{"name": "a", "rest": "http://127.0.0.1:9"}]})
    return NodePool(cfg.nodes, cfg.policy)


def test_a_cancelled_attempt_stays_a_ghost_until_the_node_answers() -> None:
    node = _pool().nodes["a"]
    stuck = node.begin(1.0, now=10.0)
    node.end(stuck, 0.5, ok=True, now=10.5, sample=False, lower_bound=True)   # rescued
    assert node.inflight == 0 and node.inflight_units == 0.0
    assert node.oldest(10.6) is stuck                 # the node likely still works on it
    later = node.begin(1.0, now=10.7)
    node.end(later, 0.1, ok=True, now=10.8)          # it answered: not stuck any more
    assert node.oldest(10.8) is None


def test_a_ghost_lapses_at_twice_the_age_it_had_when_cancelled() -> None:
    node = _pool().nodes["a"]
    stuck = node.begin(1.0, now=10.0)
    node.end(stuck, 0.3, ok=True, now=10.3, sample=False, lower_bound=True)
    assert node.oldest(10.59) is stuck
    assert node.oldest(10.61) is None


def test_the_policy_sees_the_oldest_request_age_since_the_node_last_answered() -> None:
    """A queueing node answers one request after the other: its oldest request's age
    counts from the last answer (its time in service), not from when it was sent."""
    node = _pool().nodes["a"]
    opolicy = OutlierPolicy()
    first = node.begin(1.0, now=10.0)
    node.begin(1.0, now=10.0)
    assert node.candidate(10.2, opolicy).oldest_age == pytest.approx(0.2)
    node.end(first, 0.15, ok=True, now=10.15)
    view = node.candidate(10.2, opolicy)
    assert view.oldest_age == pytest.approx(0.05) and view.inflight == 1
