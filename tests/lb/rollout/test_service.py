"""lb.rollout.service in-process: a real NodePool and config, a recording transport in
place of the sockets (pure logic: which calls are routed, copied, counted, compared)."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from lb.config import Config, parse_config
from lb.errors import Unavailable, UpstreamConnectError
from lb.http.client_conn import Response
from lb.pool.nodes import Node, NodePool
from lb.request.call import Call, Deadline, Outcome, XCache
from lb.rest.upstream import RestPayload
from lb.rollout.progress import Phase, Refused
from lb.rollout.service import Rollouts
from lb.status import Verdict, rest_verdict

NODES = [{"name": "s1", "rest": "http://h:1", "group": "stable"},
         {"name": "s2", "rest": "http://h:2", "group": "stable"},
         {"name": "c1", "rest": "http://h:3", "group": "canary"}]


def make_config(**model: Any) -> Config:
    return parse_config({"nodes": NODES, "models": {"m": model, "plain": {}}})


class Recorder:
    """A Transport that keeps each attempt's future for the test to settle."""

    usable: Callable[[Node], bool] | None = None
    codec: Any = None

    def __init__(self) -> None:
        self.sent: list[tuple[Node, Call, asyncio.Future[Response]]] = []

    def send(self, node: Node, call: Call, timeout_s: float,
             on_done: Callable[[Any], object]) -> asyncio.Future[Response]:
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(on_done)
        self.sent.append((node, call, fut))
        return fut

    def verdict(self, answer: Response, cut_by_try_timeout: bool) -> Verdict:
        return rest_verdict(answer.status)

    def body(self, answer: Response) -> bytes:
        return answer.body

    def from_cache(self, call: Call, body: bytes) -> Response | None:
        return None


class Load:
    def __init__(self) -> None:
        self.inflight, self.limit, self.shed = 0, 100, 0

    def __call__(self) -> tuple[int, int, int]:
        return self.inflight, self.limit, self.shed


def setup(cfg: Config) -> tuple[Rollouts, NodePool, Recorder, Load]:
    pool = NodePool(cfg.nodes, cfg.policy, seed=1)
    for node in pool:
        pool.set_versions(node, {"m": frozenset({1}), "plain": frozenset({1})}, {})
    load = Load()
    return Rollouts(cfg, pool, load), pool, Recorder(), load


def call(model: str = "m", body: bytes = b'{"instances": [[1.0]]}') -> Call:
    return Call(model=model, version=None, pinned=False, units=1.0,
                deadline=Deadline.after(10.0),
                payload=RestPayload("POST", f"/v1/models/{model}:predict", body, None,
                                    "predict"))


def route(r: Rollouts, c: Call, **headers: str) -> Call:
    names = {k.replace("_", "-"): v.encode() for k, v in headers.items()}

    class Req:
        @staticmethod
        def header(name: bytes) -> bytes | None:
            return names.get(name.decode())
    r.route_rest(c, Req())
    return c


def answer(*rows: list[float], status: int = 200) -> Response:
    return Response(status, orjson.dumps({"predictions": list(rows)}), "application/json")


async def test_route_gives_groups_by_split_and_leaves_other_models() -> None:
    r, _, _, _ = setup(make_config(split=[{"group": "stable", "share": 80},
                                          {"group": "canary", "share": 20}]))
    groups = Counter(route(r, call()).group for _ in range(1000))
    assert groups == {"stable": 800, "canary": 200}
    assert route(r, call("plain")).group is None
    assert route(r, call("unknown")).group is None


async def test_unhealthy_group_is_diverted_and_reported() -> None:
    r, pool, _, _ = setup(make_config(split=[{"group": "stable", "share": 50},
                                             {"group": "canary", "share": 50}]))
    pool.nodes["c1"].healthy = False
    groups = Counter(route(r, call()).group for _ in range(100))
    assert groups == {"stable": 100}
    doc = r.stats()["m"]
    assert doc["degraded"] == ["canary"]
    assert doc["groups"]["canary"]["diverted"] == 50
    assert doc["groups"]["canary"]["effective"] == 0.0
    assert doc["groups"]["stable"]["effective"] == 100.0


async def test_shadow_copies_a_share_and_never_touches_the_node_books() -> None:
    r, pool, t, _ = setup(make_config(split=[{"group": "stable", "share": 100}],
                                      shadow={"group": "canary", "share": 25,
                                              "max_per_s": 1000, "max_inflight": 1000}))
    canary = pool.nodes["c1"]
    tickets = []
    for _ in range(100):
        c = route(r, call())
        assert c.group == "stable"
        tickets.append(r.open(c, t, "rest", "predict", b"body"))
    copies = len(t.sent)
    assert abs(copies - 25) <= 1 and {n.name for n, _, _ in t.sent} == {"c1"}
    assert {c.group for _, c, _ in t.sent} == {"canary"}
    for _, _, fut in t.sent:
        fut.set_result(answer([0.1, 0.9]))
    await asyncio.sleep(0)
    for ticket in tickets:
        assert ticket is not None
        ticket.answered(200, answer([0.2, 0.8]).body, hit=False)
    assert (canary.requests, canary.inflight, canary.tau.samples) == (0, 0, 0)
    doc = r.shadow_doc("m")
    assert doc is not None and doc["totals"]["pairs"] == copies
    assert doc["totals"]["agreement"] == 1.0 and doc["inflight"] == 0


def nodes_config(**model: Any) -> Config:
    nodes = [*NODES, {"name": "d1", "rest": "http://h:4"}]
    return parse_config({"nodes": nodes, "models": {"m": model}})


async def test_pairs_compare_in_either_order_and_count_disagreements() -> None:
    r, _, t, _ = setup(nodes_config(shadow={"group": "canary", "share": 100}))
    first = r.open(route(r, call()), t, "rest", "predict", b"input-1")
    second = r.open(route(r, call()), t, "rest", "predict", b"input-2")
    assert first is not None and second is not None and len(t.sent) == 2
    first.answered(200, answer([0.9, 0.1], [0.2, 0.8]).body, hit=False)   # primary first
    t.sent[0][2].set_result(answer([0.8, 0.2], [0.7, 0.3]))
    t.sent[1][2].set_result(answer([0.1, 0.9]))                           # shadow first
    await asyncio.sleep(0)
    second.answered(200, answer([0.1, 0.9]).body, hit=False)
    doc = r.shadow_doc("m")
    assert doc is not None
    assert (doc["totals"]["class_rows"], doc["totals"]["agreed"]) == (3, 2)
    [sample] = doc["disagreements"]
    assert sample["rows"] == [1] and sample["primary"] == [1] and sample["shadow"] == [0]
    import hashlib
    assert sample["input"] == hashlib.blake2b(b"input-1", digest_size=16).hexdigest()


async def test_shadow_failures_and_departed_clients() -> None:
    r, _, t, _ = setup(nodes_config(shadow={"group": "canary", "share": 100}))
    a = r.open(route(r, call()), t, "rest", "predict", b"a")
    b = r.open(route(r, call()), t, "rest", "predict", b"b")
    c = r.open(route(r, call()), t, "rest", "predict", b"c")
    assert a is not None and b is not None and c is not None
    t.sent[0][2].set_exception(UpstreamConnectError("c1", "refused"))
    t.sent[1][2].set_result(answer(status=500))
    a.answered(200, answer([1.0, 0.0]).body, hit=False)
    b.answered(200, answer([1.0, 0.0]).body, hit=False)
    c.answered(499, None, hit=False)                    # the client left
    t.sent[2][2].set_result(answer([1.0, 0.0]))
    await asyncio.sleep(0)
    doc = r.shadow_doc("m")
    assert doc is not None
    assert doc["totals"]["pairs"] == 2 and doc["totals"]["shadow_errors"] == 2
    assert doc["totals"]["agreement"] is None and doc["skipped"] == {"client_left": 1}
    assert doc["inflight"] == 0


async def test_cap_budget_and_shedding_skip_shadows_first() -> None:
    r, _, t, load = setup(nodes_config(shadow={"group": "canary", "share": 100,
                                               "max_inflight": 2, "max_per_s": 5}))
    for _ in range(4):
        r.open(route(r, call()), t, "rest", "predict", b"x")
    assert len(t.sent) == 2 and r.shadow_doc("m")["skipped"] == {"cap": 2}  # type: ignore[index]
    for _, _, fut in t.sent:
        fut.set_result(answer([1.0, 0.0]))
    await asyncio.sleep(0)
    for _ in range(10):
        r.open(route(r, call()), t, "rest", "predict", b"x")
        for _, _, fut in t.sent:
            if not fut.done():
                fut.set_result(answer([1.0, 0.0]))
        await asyncio.sleep(0)
    skipped = r.shadow_doc("m")["skipped"]  # type: ignore[index]
    assert len(t.sent) == 5 and skipped["budget"] == 7      # a burst of 5 per second
    load.inflight = 50                                      # half of max_inflight
    r.open(route(r, call()), t, "rest", "predict", b"x")
    load.inflight, load.shed = 0, 1                         # the proxy shed a request
    r.open(route(r, call()), t, "rest", "predict", b"x")
    assert r.shadow_doc("m")["skipped"]["shedding"] == 2  # type: ignore[index]
    assert len(t.sent) == 5


async def test_shadow_skips_calls_already_on_its_group_and_non_predict() -> None:
    r, _, t, _ = setup(make_config(split=[{"group": "stable", "share": 50},
                                          {"group": "canary", "share": 50}],
                                   shadow={"group": "canary", "share": 100}))
    for _ in range(10):
        r.open(route(r, call()), t, "rest", "predict", b"x")
    assert len(t.sent) == 5 and all(c.group == "canary" for _, c, _ in t.sent)
    assert r.open(route(r, call()), t, "rest", None, None) is None     # a GET
    r.open(route(r, call()), t, "rest", "classify", b"x")
    assert len(t.sent) == 5


async def test_watch_tells_the_ticket_how_a_grpc_call_ended() -> None:
    r, _, t, _ = setup(make_config(split=[{"group": "stable", "share": 100}]))

    class Reply:
        def __init__(self, code: Any) -> None:
            self.code, self.body = code, b""

    import grpc

    async def ok() -> Outcome[Any]:
        return Outcome(Reply(grpc.StatusCode.OK), XCache.MISS, "s1")

    async def internal() -> Outcome[Any]:
        return Outcome(Reply(grpc.StatusCode.INTERNAL), XCache.MISS, "s1")

    async def fails() -> Outcome[Any]:
        raise Unavailable("no node")

    for coro in (ok(), internal()):
        await r.watch(r.open(route(r, call()), t, "grpc", "predict", b"x"), coro)
    with pytest.raises(Unavailable):
        await r.watch(r.open(route(r, call()), t, "grpc", "predict", b"x"), fails())
    g = r.stats()["m"]["groups"]["stable"]
    assert (g["answered"], g["errors"]) == (3, 2)


async def test_rollout_moves_the_split_and_answers_the_admin() -> None:
    cfg = make_config(rollout={"from": "stable", "to": "canary", "steps": [10, 50, 100],
                               "every_s": 1, "abort_if": {"min_requests": 5}})
    r, _, t, _ = setup(cfg)
    assert Counter(route(r, call()).group for _ in range(100)) == {"stable": 90, "canary": 10}
    for _ in range(60):
        tk = r.open(route(r, call()), t, "rest", "predict", b"x")
        assert tk is not None
        tk.answered(200, None, hit=False)
    m = r.models["m"]
    assert m.progress is not None
    r.tick(m.progress.step_at + 1.5)
    assert m.progress.share == 50.0
    assert Counter(route(r, call()).group for _ in range(100)) == {"stable": 50, "canary": 50}
    assert r.control("m", "pause")["state"] == "paused"
    with pytest.raises(Refused):
        r.control("m", "pause")
    with pytest.raises(KeyError):
        r.control("plain", "pause")
    r.control("m", "resume")
    for _ in range(20):                       # the canary starts failing: 500s
        tk = r.open(route(r, call()), t, "rest", "predict", b"x")
        assert tk is not None
        tk.answered(500 if tk.group == "canary" else 200, None, hit=False)
    r.tick(m.progress.step_at + 0.1)
    assert m.progress.phase is Phase.ABORTED and m.progress.share == 0.0
    assert Counter(route(r, call()).group for _ in range(100)) == {"stable": 100}
    rollout = r.stats()["m"]["rollout"]
    assert rollout["state"] == "aborted" and "error rate" in rollout["reason"]


async def test_reload_keeps_counters_and_rollout_state() -> None:
    rollout = {"from": "stable", "to": "canary", "steps": [10, 50, 100], "every_s": 1,
               "abort_if": {"min_requests": 5}}
    r, _, _, _ = setup(make_config(rollout=rollout, shadow={"group": "canary", "share": 10}))
    m = r.models["m"]
    assert m.progress is not None
    m.progress.pause(0.0)
    for _ in range(30):
        route(r, call())
    r.reconfigure(make_config(rollout={**rollout, "every_s": 5},
                              shadow={"group": "canary", "share": 20}))
    assert r.models["m"] is m and m.progress is not None
    assert m.progress.phase is Phase.PAUSED and m.progress.cfg.every_s == 5
    assert sum(m.router.routed.values()) == 30 and m.shadow is not None
    assert m.shadow.cfg.share == 20
    r.reconfigure(make_config(split=[{"group": "stable", "share": 100}]))
    assert r.models["m"].progress is None and r.models["m"].shadow is None
    assert Counter(route(r, call()).group for _ in range(10)) == {"stable": 10}
    r.reconfigure(parse_config({"nodes": NODES}))
    assert r.models == {} and route(r, call()).group is None


async def test_cache_hits_are_no_evidence_and_failed_shadows_abort() -> None:
    cfg = make_config(rollout={"from": "stable", "to": "canary", "steps": [50, 100],
                               "every_s": 1, "abort_if": {"min_requests": 5}},
                      shadow={"group": "canary", "share": 100, "max_inflight": 100,
                              "max_per_s": 1000})
    r, _, t, _ = setup(cfg)
    m = r.models["m"]
    assert m.progress is not None
    for _ in range(40):
        tk = r.open(route(r, call()), t, "rest", "predict", b"x")
        assert tk is not None
        tk.answered(200, answer([1.0, 0.0]).body, hit=True)
    for _, _, fut in t.sent:                      # the stable calls' copies: 500s
        fut.set_result(answer(status=500))
    await asyncio.sleep(0)
    reading = m.reading()
    assert reading is not None and reading.canary.requests == 0      # hits: not evidence
    assert reading.shadowed == len(t.sent) == 20 and reading.shadow_errors == 20
    r.tick(m.progress.step_at + 0.5)
    assert m.progress.phase is Phase.ABORTED and "20 calls" in (m.progress.reason or "")
