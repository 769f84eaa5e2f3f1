"""lb.request.core in-process: the real core, dispatcher, scheduler, pool and memory
cache, with a scripted transport (tests/lb/fakes.py). The cache path (miss, fill, hit,
coalescing, Cache-Control), admission, and a call's deadline while the nodes are
probed for its model."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from lb.config import parse_config
from lb.errors import DeadlineExceeded, Overloaded
from lb.pool.nodes import NodePool
from lb.request.call import Call, XCache
from lb.request.core import Core, Plan
from lb.request.directives import Directives
from lb.request.dispatch import Dispatcher
from lb.server import build_cache
from tests.lb.fakes import Answer, ScriptedNodes, call


class CachingNodes(ScriptedNodes):
    """Scripted nodes whose answers the cache can hold and give back."""

    def from_cache(self, call: Call, body: bytes) -> Answer | None:
        return Answer(200, body)


class SlowProbes:
    """Health probes that take `seconds` to learn a model (a node that hangs)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def learn(self, model: str) -> None:
        await asyncio.sleep(self.seconds)

    def model_seen(self, model: str) -> None:
        pass


def _core(cache: str = "memory", probes: Any = None, **cfg: Any) -> Core:
    config = parse_config({"listen": {"grpc": None}, "cache": {"backend": cache}, **cfg,
                           "nodes": [{"name": "a", "rest": "http://127.0.0.1:9"}]})
    pool = NodePool(config.nodes, config.policy, seed=1)
    for node in pool:
        pool.set_versions(node, {"m": frozenset({1})}, {})
    return Core(config, pool, Dispatcher(config, pool),
                build_cache(config, lambda model: "auto"), probes)


def _keyed(key: str):  # type: ignore[no-untyped-def]
    async def plan(c: Call) -> Plan:
        return Plan(key=key)
    return plan


async def test_a_miss_is_forwarded_and_filled_and_the_same_call_then_hits() -> None:
    core, nodes = _core(), CachingNodes({"a": 200})
    first = await core.serve(call(), nodes, _keyed("k"))
    second = await core.serve(call(), nodes, _keyed("k"))
    assert (first.x_cache, first.node, second.x_cache, second.node) == (
        XCache.MISS, "a", XCache.HIT, None)
    assert nodes.sent == ["a"]
    assert core.cache is not None and core.cache.stats()["hits"] == 1


async def test_identical_calls_in_flight_share_one_attempt() -> None:
    core, nodes = _core(), CachingNodes({"a": 200}, {"a": 0.05})
    outs = await asyncio.gather(*(core.serve(call(), nodes, _keyed("k")) for _ in range(3)))
    assert sorted(o.x_cache.name for o in outs) == ["COALESCED", "COALESCED", "MISS"]
    assert nodes.sent == ["a"]


async def test_no_store_skips_the_cache_and_no_cache_refreshes_it() -> None:
    core, nodes = _core(), CachingNodes({"a": 200})
    skip = call()
    skip.directives = Directives(lookup=False, store=False)
    assert (await core.serve(skip, nodes, _keyed("k"))).x_cache is XCache.BYPASS
    refresh = call()
    refresh.directives = Directives(lookup=False, store=True)
    assert (await core.serve(refresh, nodes, _keyed("k"))).x_cache is XCache.BYPASS
    assert (await core.serve(call(), nodes, _keyed("k"))).x_cache is XCache.HIT
    assert nodes.sent == ["a", "a"]         # the no-cache call filled it


async def test_an_error_answer_is_not_stored() -> None:
    core, nodes = _core(), CachingNodes({"a": 500})
    for _ in range(2):
        out = await core.serve(call(), nodes, _keyed("k"))
        assert (out.answer.status, out.x_cache) == (500, XCache.MISS)
    assert nodes.sent == ["a", "a"]


async def test_past_max_inflight_a_call_is_refused_at_admission() -> None:
    core = _core(limits={"max_inflight": 2})
    core.admit()
    core.admit()
    with pytest.raises(Overloaded):
        core.admit()
    assert core.shed == 1
    core.release()
    core.admit()


async def test_probing_the_nodes_for_an_unknown_model_stops_at_the_deadline() -> None:
    core, nodes = _core(cache="none", probes=SlowProbes(10.0)), ScriptedNodes({"a": 200})
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await core.serve(call(model="unknown", version=None, left_s=0.05), nodes)
    assert time.monotonic() - start < 1.0 and nodes.sent == []
