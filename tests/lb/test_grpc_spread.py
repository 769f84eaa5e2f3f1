"""Per-call balancing on the gRPC front: one client channel, every node, by weight.

gRPC pins a client's calls to one server behind an L4 balancer (HTTP/2 reuses
one connection); the proxy balances each call. Uses the suite's shared pool of
half_plus_two workers (tests/lb/conftest.py: 50 ms per call, gRPC on).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import grpc.aio
import pytest

from harness.grpcwire import PREDICT, predict_bytes
from tests.lb.conftest import SPREAD_DELAY_MS, Pool, assert_weight_shares, worker_delay
from tests.lb.grpcload import grpc_node, spread
from tests.procs import ProxyProc, free_port, wait_until


def test_one_channel_spreads_over_all_nodes_by_weight(logs_dir: Path, hp2_pool: Pool) -> None:
    """With `policy.name: round_robin` (the configured split), one channel's calls go to
    every node by weight."""
    p = ProxyProc(logs_dir, [grpc_node("w3", hp2_pool, 0, 3), grpc_node("w1a", hp2_pool, 1, 1),
                             grpc_node("w1b", hp2_pool, 2, 1)],
                  name="proxy-grpc-311", grpc=True, cache={"backend": "none"},
                  policy={"name": "round_robin"})
    assert p.grpc
    try:
        with worker_delay(hp2_pool.fast, SPREAD_DELAY_MS):
            counts = asyncio.run(spread(p.grpc, 1200, 30))
    finally:
        p.stop()
    assert_weight_shares(counts, "gRPC one-channel")


def test_one_channel_reaches_every_node_through_the_queue(logs_dir: Path,
                                                          hp2_pool: Pool) -> None:
    """least_load: one channel's 30 calls in flight spread over every node, each in
    proportion to its learned limit at least (tests/lb/test_rest_e2e.py says why)."""
    p = ProxyProc(logs_dir, [grpc_node(f"g{i}", hp2_pool, i, 1) for i in range(3)],
                  name="proxy-grpc-equal", grpc=True, cache={"backend": "none"})
    assert p.grpc
    try:
        with worker_delay(hp2_pool.fast, SPREAD_DELAY_MS):
            counts = asyncio.run(spread(p.grpc, 900, 30))
            limits = {n["name"]: n["limit"] for n in p.stats()["nodes"]}
    finally:
        p.stop()
    total = sum(counts.values())
    assert set(counts) == {"g0", "g1", "g2"} and sum(limits.values()) >= 30, limits
    for name, n in counts.items():
        assert n / total >= 0.8 * limits[name] / sum(limits.values()), (counts, limits)


def test_dead_node_is_retried_and_deadlines_are_forwarded(logs_dir: Path,
                                                          hp2_pool: Pool) -> None:
    dead = {"name": "dead", "rest": f"http://127.0.0.1:{free_port()}",
            "grpc": f"127.0.0.1:{free_port()}", "weight": 10.0}
    rest_only = {"name": "rest-only", "rest": hp2_pool.fast[1], "weight": 10.0}
    p = ProxyProc(logs_dir, [dead, rest_only, grpc_node("ok", hp2_pool, 2, 1)],
                  name="proxy-grpc-dead", grpc=True, cache={"backend": "none"},
                  health={"interval_s": 5.0, "timeout_s": 0.5, "unhealthy_after": 3})
    assert p.grpc
    try:
        counts = asyncio.run(spread(p.grpc, 10, 1))
        assert counts == {"ok": 10}                   # dead: retried; rest-only: skipped
        with grpc.insecure_channel(p.grpc) as ch, pytest.raises(grpc.RpcError) as err:
            ch.unary_unary(PREDICT)(predict_bytes("half_plus_two", 0.5), timeout=0.02)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # The node's call ended with the client's deadline (the proxy forwards it and
        # cancels the call when it passes), long before the proxy's own 60 s cap. The
        # client's deadline is not the node's failure: no error, no ejection.
        start = time.monotonic()
        wait_until(lambda: _node(p, "ok")["requests"] == 11, 2.0, "the node call to end")
        assert time.monotonic() - start < 2.0
        assert _node(p, "ok")["inflight"] == 0 and _node(p, "ok")["errors"] == 0
    finally:
        p.stop()


def _node(p: ProxyProc, name: str) -> dict[str, int]:
    found: dict[str, int] = {n["name"]: n for n in p.stats()["nodes"]}[name]
    return found
