"""Dispatcher.finish: what a call that ran out of attempts is answered (lb/dispatch.py)."""

from __future__ import annotations

import time

import pytest

from lb.call import Call, Deadline
from lb.config import parse_config
from lb.dispatch import CLOCK_SLACK_S, Dispatcher, Flow
from lb.errors import DeadlineExceeded, Unavailable, UpstreamConnectError, UpstreamTimeout
from lb.nodes import NodePool


def _dispatcher() -> Dispatcher:
    cfg = parse_config({"listen": {"grpc": None},
                        "nodes": [{"name": "a", "rest": "http://127.0.0.1:9"}]})
    return Dispatcher(cfg, NodePool(cfg.nodes, cfg.policy))


def _call(left_s: float) -> Call:
    return Call("m", 1, None, False, 1.0, Deadline(time.monotonic() + left_s), None)


def test_an_attempt_cut_by_the_deadline_a_hair_early_is_a_504() -> None:
    """The node client's timer runs on the loop's millisecond clock: the attempt the
    call's deadline cut may end a millisecond or two before it by time.monotonic()."""
    flow = Flow()
    flow.error = UpstreamTimeout("a", "read timed out before the deadline")
    with pytest.raises(DeadlineExceeded):
        _dispatcher().finish(flow, _call(CLOCK_SLACK_S / 4))


def test_no_node_left_with_time_to_spare_is_a_503() -> None:
    flow = Flow()
    flow.error = UpstreamConnectError("a", "connection refused")
    with pytest.raises(Unavailable, match="connection refused"):
        _dispatcher().finish(flow, _call(1.0))
    with pytest.raises(Unavailable, match="no node available"):
        _dispatcher().finish(Flow(), _call(1.0))


def _warm(d: Dispatcher, tau: float = 0.02) -> None:
    node = d.pool.nodes["a"]
    for i in range(8):
        node.tau.update(tau, float(i))


def test_a_node_counts_as_stalled_once_it_is_silent_for_the_threshold() -> None:
    """stall_factor (3) × τ (20 ms) × units since the later of its oldest request's
    start and its last answer."""
    d = _dispatcher()
    _warm(d)
    node = d.pool.nodes["a"]
    assert d.stall_at(node) is None                   # nothing in flight
    t0 = time.monotonic()
    node.begin(1.0, t0)
    node.begin(1.0, t0 + 0.01)
    at = d.stall_at(node)
    assert at == pytest.approx(t0 + 0.06)
    assert not d.stalled(node, t0 + 0.05) and d.stalled(node, t0 + 0.07)
    done = node.begin(1.0, t0)
    node.end(done, 0.03, ok=True, now=t0 + 0.03)      # an answer: silent since then
    assert d.stall_at(node) == pytest.approx(t0 + 0.09)


def test_a_hedge_is_looked_at_when_the_node_stalls_not_one_threshold_per_request() -> None:
    """A request sent just before its node stalls is rescued with the ones already
    there: the first look is at the node's stall moment, before its own p95 and its
    own threshold; past all of them, every threshold while it waits."""
    d = _dispatcher()
    _warm(d)
    node = d.pool.nodes["a"]
    t0 = time.monotonic()
    node.begin(1.0, t0 - 0.05)                        # stuck for 50 ms already
    call = _call(5.0)
    first = d.hedge_check(call, node, t0, t0 + 0.1, t0)
    assert first == pytest.approx(t0 + 0.011, abs=1e-6)     # the node's moment, + 1 ms
    assert d.hedge_check(call, node, t0, t0 + 0.1, t0 + 0.2) == pytest.approx(t0 + 0.26)
