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
