"""lb.request.dispatch in-process: the real dispatcher, scheduler and pool, a scripted transport
(tests/lb/fakes.py). Retries, refusals, the answer a call that ran out of attempts gets,
stall detection, hedges and rescues, and the slots they hold."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from lb.config import parse_config
from lb.errors import DeadlineExceeded, Unavailable
from lb.pool.nodes import NodePool
from lb.request.dispatch import CLOCK_SLACK_S, Dispatcher
from tests.lb.fakes import ScriptedNodes, call


def _dispatcher(names: str = "a", **cfg: Any) -> Dispatcher:
    config = parse_config({"listen": {"grpc": None}, **cfg,
                           "nodes": [{"name": n, "rest": f"http://127.0.0.1:{9 + i}"}
                                     for i, n in enumerate(names)]})
    pool = NodePool(config.nodes, config.policy, seed=1)
    for node in pool:                               # every node serves m, version 1
        pool.set_versions(node, {"m": frozenset({1})}, {})
    return Dispatcher(config, pool)


async def test_a_call_cut_by_the_deadline_a_hair_early_is_a_504() -> None:
    """The node client's timer runs on the loop's millisecond clock: the attempt the
    call's deadline cut may end a millisecond or two before it by time.monotonic()."""
    d = _dispatcher()
    nodes = ScriptedNodes({"a": 200}, {"a": 0.05})
    with pytest.raises(DeadlineExceeded):
        await d.send(call(left_s=CLOCK_SLACK_S / 2), nodes)


async def test_no_node_left_with_time_to_spare_is_a_503_with_the_reason() -> None:
    d = _dispatcher("ab", upstream={"retries": 1})
    nodes = ScriptedNodes({"a": 502, "b": 502})
    answer, _node = await d.send(call(), nodes)      # a node's answer is passed through
    assert (answer.status == 502 and nodes.sent == ["a"]) or nodes.sent == ["b"]
    none = ScriptedNodes({"a": 200, "b": 200})
    none.usable = lambda _node: False               # e.g. no node has a gRPC address
    with pytest.raises(Unavailable, match="no node available"):
        await d.send(call(), none)


async def test_a_retry_goes_to_another_node_within_the_tries() -> None:
    d = _dispatcher("ab", upstream={"retries": 1})
    nodes = ScriptedNodes({"a": 429, "b": 429})
    answer, _ = await d.send(call(), nodes)
    assert answer.status == 429 and sorted(nodes.sent) == ["a", "b"]
    assert d.budget.retries == 1


def _warm(d: Dispatcher, name: str = "a", tau: float = 0.02) -> None:
    node = d.pool.nodes[name]
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


async def test_a_rescue_copies_a_stalled_nodes_call_to_a_free_slot_and_wins() -> None:
    """Node a answers after 2 s (stalled); b answers at once. The rescue sweep copies
    the call to b once a counts as stalled; b's answer wins, a's attempt is cancelled
    and its slot is kept as a ghost until the node answers something."""
    d = _dispatcher("ab", hedge={"min_delay_ms": 5})
    for name in "ab":
        _warm(d, name, 0.005)
    d.pool.nodes["b"].limit.value = 1
    d.pool.nodes["a"].limit.value = 1
    for _ in range(100):                            # recent traffic funds the budget
        d.hedging.deposit(time.monotonic())
    nodes = ScriptedNodes({"a": 200, "b": 200}, {"a": 2.0, "b": 0.001})
    d.pool.nodes["b"].healthy = False               # the first attempt goes to a
    ended = asyncio.Event()
    job = d.dispatch(call(), nodes, lambda _j: ended.set())
    d.pool.nodes["b"].healthy = True
    start = time.monotonic()
    await asyncio.wait_for(ended.wait(), 1.0)
    _answer, node = job.outcome()
    assert node.name == "b" and time.monotonic() - start < 0.5
    assert d.hedging.rescues == 1 and d.hedging.won == 1
    a = d.pool.nodes["a"]
    assert a.inflight == 0 and a.occupied(time.monotonic()) == 1     # a ghost holds it
    assert nodes.open == {"a": 0, "b": 0}
