"""Start-up in-process: a request goes only to nodes that have its model AVAILABLE,
whatever the probes and the nodes' refusals say in between (lb/pool/nodes.py, lb/pool/health.py,
lb/request/dispatch.py). Deterministic: the health checks talk to a scripted upstream, and the
dispatcher to a scripted transport; no sockets, no processes.

The failure these pin down (issue 28): with three workers starting at once under CPU
pressure, the one AVAILABLE worker's status probe timed out, the probe wiped what it
had reported, and requests resolved to its version went to the two that were still
loading (`serving or pool`), which answered 503.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from lb.config import parse_config
from lb.errors import LbError, NotReady, UpstreamTimeout
from lb.pool.health import HealthChecker
from lb.pool.nodes import Node, NodePool
from lb.request.call import Call, Deadline
from lb.request.dispatch import Dispatcher

M = "hp2"


def _status(state: str, version: int = 123) -> bytes:
    return orjson.dumps({"model_version_status": [{"version": str(version), "state": state,
                                                   "status": {"error_code": "OK"}}]})


class _Reply:
    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body


class ScriptedStatus:
    """What each node's model-status probe answers now: a state, or "timeout"."""

    def __init__(self, states: dict[str, str]) -> None:
        self.states = states

    async def get(self, node: Node, path: str, timeout_s: float) -> _Reply:
        state = self.states[node.name]
        if state == "timeout":
            raise UpstreamTimeout(node.name, "probe timed out")
        return _Reply(200, _status(state))


def _cfg(**extra: Any) -> Any:
    return parse_config({"listen": {"grpc": None}, "models": {M: {}},
                         "nodes": [{"name": n, "rest": f"http://127.0.0.1:{9 + i}"}
                                   for i, n in enumerate("abc")], **extra})


def _checked(states: dict[str, str]) -> tuple[NodePool, HealthChecker, ScriptedStatus]:
    cfg = _cfg()
    pool = NodePool(cfg.nodes, cfg.policy, seed=1)
    upstream = ScriptedStatus(states)
    return pool, HealthChecker(cfg.health, pool, upstream, [M]), upstream


async def test_a_probe_that_times_out_does_not_send_requests_to_loading_nodes() -> None:
    pool, health, upstream = _checked({"a": "AVAILABLE", "b": "LOADING", "c": "LOADING"})
    await health.probe_all()
    assert pool.latest_version(M) == 123
    upstream.states["a"] = "timeout"             # busy: its probe misses the timeout once
    await health.probe_all()
    for _ in range(50):
        node = pool.pick(1.0, (), M, 123)
        assert node is not None and node.name == "a", node
    assert pool.readiness(M, 123) == "ready"


async def test_with_every_node_unhealthy_requests_go_to_the_one_last_known_to_serve() -> None:
    """The serving node's probes time out until it counts as unhealthy, and the loading
    ones count as unhealthy too (nothing AVAILABLE): every node is tried rather than
    none, but only the one that reported the model AVAILABLE; once it is excluded (it
    failed this call), the call waits for the others."""
    pool, health, upstream = _checked({"a": "AVAILABLE", "b": "LOADING", "c": "LOADING"})
    await health.probe_all()
    upstream.states["a"] = "timeout"
    for _ in range(health.cfg.unhealthy_after):
        await health.probe_all()
    assert not any(n.healthy for n in pool)
    assert pool.latest_version(M) == 123
    for _ in range(50):
        assert pool.pick(1.0, (), M, 123) is pool.nodes["a"]
    assert pool.pick(1.0, (pool.nodes["a"],), M, 123) is None     # held: b, c load it
    assert pool.knows(M, 123)


def test_the_last_node_left_gets_the_request_only_if_it_serves_the_model() -> None:
    cfg = _cfg()
    pool = NodePool(cfg.nodes, cfg.policy, seed=1)
    a, b, c = (pool.nodes[n] for n in "abc")
    pool.set_versions(a, {M: frozenset({123})}, {M: frozenset()})
    for n in (b, c):
        pool.set_versions(n, {M: frozenset()}, {M: frozenset({123})})
    assert pool.pick(1.0, (a, b), M, 123) is None          # only c left: loading
    assert pool.pick(1.0, (a, b), M, 123, explicit=True) is None
    assert pool.pick(1.0, (b, c), M, 123) is a


def test_a_model_no_node_knows_still_goes_to_a_node_for_its_404() -> None:
    cfg = _cfg()
    pool = NodePool(cfg.nodes, cfg.policy, seed=1)
    for n in pool:
        pool.set_versions(n, {M: frozenset({123})}, {M: frozenset()})
    assert pool.readiness("other", 7) == "absent"
    assert pool.pick(1.0, (), "other", 7, explicit=True) is not None


# -- the dispatcher: a node's refusal, and holding a request ----------------------------

class _Answer:
    __slots__ = ("body", "content_type", "status")

    def __init__(self, status: int) -> None:
        self.status, self.body, self.content_type = status, b"{}", "application/json"


class ScriptedNodes:
    """A Transport whose nodes answer by name, a status code from a table, on the next
    loop turn; like the REST transport it calls `on_done` itself as the answer lands,
    before the awaiting coroutine resumes."""

    codec: Any = None
    usable: Callable[[Node], bool] | None = None

    def __init__(self, statuses: dict[str, int]) -> None:
        self.statuses = statuses
        self.sent: list[str] = []

    def send(self, node: Node, call: Call, timeout_s: float,
             on_done: Callable[[Any], object]) -> asyncio.Future[_Answer]:
        self.sent.append(node.name)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_Answer] = loop.create_future()

        def land() -> None:
            fut.set_result(_Answer(self.statuses[node.name]))
            on_done(fut)

        loop.call_soon(land)
        return fut

    def verdict(self, answer: _Answer, cut: bool) -> Any:
        from lb.status import rest_verdict
        return rest_verdict(answer.status)

    def body(self, answer: _Answer) -> bytes:
        return answer.body

    def from_cache(self, call: Call, body: bytes) -> _Answer | None:
        return None


def _call(left_s: float = 5.0) -> Call:
    return Call(model=M, version=123, pinned=False, units=1.0,
                deadline=Deadline(time.monotonic() + left_s), payload=None)


def _pool_with(available: str, loading: str, **cfg: Any) -> tuple[Dispatcher, NodePool]:
    config = _cfg(**cfg)
    pool = NodePool(config.nodes, config.policy, seed=1)
    for n in pool:
        if n.name in available:
            pool.set_versions(n, {M: frozenset({123})}, {M: frozenset()})
        elif n.name in loading:
            pool.set_versions(n, {M: frozenset()}, {M: frozenset({123})})
    return Dispatcher(config, pool), pool


async def test_a_node_that_refuses_leaves_the_models_set_and_the_retry_is_free() -> None:
    """b said AVAILABLE, then answered 503 (a restart, an unload): the request goes to
    the node that serves the model, without spending a try or the retry budget, and b
    gets no more of the model's requests until a probe says AVAILABLE again."""
    d, pool = _pool_with("abc", "", upstream={"retries": 0})
    nodes = ScriptedNodes({"a": 200, "b": 503, "c": 200})
    rechecked: list[str] = []
    pool.on_refusal = lambda node: rechecked.append(node.name)
    for _ in range(30):
        answer, node = await d.send(_call(), nodes)
        assert answer.status == 200 and node.name in "ac"
    assert nodes.sent.count("b") == 1 and rechecked == ["b"]
    assert d.budget.retries == 0
    pool.set_versions(pool.nodes["b"], {M: frozenset({123})}, {M: frozenset()})
    assert any(pool.pick(1.0, (), M, 123).name == "b" for _ in range(60))  # type: ignore[union-attr]


async def test_a_request_is_held_until_a_node_serves_its_model() -> None:
    d, pool = _pool_with("a", "bc")
    nodes = ScriptedNodes({"a": 503, "b": 200, "c": 200})

    async def b_loads() -> None:
        await asyncio.sleep(0.05)
        pool.set_versions(pool.nodes["b"], {M: frozenset({123})}, {M: frozenset()})

    loaded = asyncio.ensure_future(b_loads())
    answer, node = await d.send(_call(), nodes)
    await loaded
    assert (answer.status, node.name) == (200, "b")
    assert nodes.sent == ["a", "b"]
    assert pool.waits.waits == 1 and pool.waits.timeouts == 0


async def test_a_held_request_gets_503_not_ready_past_the_queue_timeout() -> None:
    d, pool = _pool_with("a", "bc", limits={"queue_timeout_s": 0.05})
    nodes = ScriptedNodes({"a": 503, "b": 200, "c": 200})
    with pytest.raises(NotReady) as err:
        await d.send(_call(), nodes)
    assert isinstance(err.value, LbError) and err.value.retry_after is not None
    assert nodes.sent == ["a"] and pool.waits.timeouts == 1
