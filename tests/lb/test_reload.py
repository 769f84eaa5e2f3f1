"""Hot reload end to end: real workers, the real proxy, SIGHUP / file change / POST."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.lb.conftest import SPREAD_DELAY_MS, Pool, worker_delay
from tests.lb.grpcload import grpc_node, spread
from tests.procs import (
    ProxyProc,
    get_json,
    http,
    node,
    read_config,
    rewrite_config,
    sample,
    scrape,
    wait_until,
)

HP2 = "half_plus_two"
_inputs = itertools.count()


def _predict(url: str) -> tuple[int, str]:
    status, hdrs, _ = http("POST", f"{url}/v1/models/{HP2}:predict",
                           {"instances": [float(next(_inputs))]})
    return status, hdrs.get("X-Node", "")


def _nodes(p: ProxyProc) -> dict[str, dict[str, Any]]:
    return {n["name"]: n for n in p.stats()["nodes"]}


# -- weights follow a reload under steady load ------------------------------------

Record = tuple[float, str, int]      # (monotonic time of the reply, X-Node, status)


async def _steady_load(url: str, stop: asyncio.Event, records: list[Record],
                       concurrency: int) -> None:
    async with aiohttp.ClientSession() as session:
        async def client() -> None:
            while not stop.is_set():
                body = {"instances": [float(next(_inputs))]}
                async with session.post(f"{url}/v1/models/{HP2}:predict", json=body) as resp:
                    await resp.read()
                    records.append((time.monotonic(), resp.headers.get("X-Node", ""),
                                    resp.status))
        await asyncio.wait_for(asyncio.gather(*(client() for _ in range(concurrency))), 60)


def _share(records: list[Record], name: str, start: float, end: float) -> float:
    window = [r for r in records if start <= r[0] < end]
    assert len(window) > 50, f"only {len(window)} replies in the window"
    return sum(1 for r in window if r[1] == name) / len(window)


async def _reweigh_under_load(p: ProxyProc) -> tuple[list[Record], float, float]:
    """4 s at 1:1, rewrite the file to 4:1, 5 s more; returns records, write and
    apply times (the watcher polls every 0.2 s)."""
    records: list[Record] = []
    stop = asyncio.Event()
    load = asyncio.create_task(_steady_load(p.url, stop, records, 30), name="load")
    await asyncio.sleep(4.0)
    doc = read_config(p.config_path)
    doc["nodes"][0]["weight"] = 4.0
    rewrite_config(p.config_path, doc)
    written = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"{p.admin}/stats") as resp:
                if (await resp.json())["nodes"][0]["weight"] == 4.0:
                    break
            assert time.monotonic() - written < 5.0, "reload not applied within 5 s"
            await asyncio.sleep(0.02)
    applied = time.monotonic()
    await asyncio.sleep(5.0)
    stop.set()
    await load
    return records, written, applied


def test_weight_share_follows_reload_without_failures(logs_dir: Path, hp2_pool: Pool) -> None:
    p = ProxyProc(logs_dir, [node("a", hp2_pool.fast[0]), node("b", hp2_pool.fast[1])],
                  name="proxy-reweigh", cache={"backend": "none"},
                  policy={"name": "round_robin"}, reload={"poll_s": 0.2})
    try:
        # The configured split (round_robin): weights decide the shares, 30 in flight.
        with worker_delay(hp2_pool.fast[:2], SPREAD_DELAY_MS):
            records, written, applied = asyncio.run(_reweigh_under_load(p))
    finally:
        p.stop()
    assert {r[2] for r in records} == {200}, "a request failed across the reload"
    first = records[0][0]
    before = _share(records, "a", first + 1.0, written)
    after = _share(records, "a", applied + 1.5, records[-1][0])
    follow = next(t for t in (applied + i * 0.25 for i in range(20))
                  if _share(records, "a", t, t + 0.5) >= 0.72)
    print(f"share of a: {before:.3f} at 1:1, {after:.3f} at 4:1; reload applied "
          f"{applied - written:.2f} s after the write, share >= 0.72 from "
          f"{follow - written:.2f} s; {len(records)} requests")
    assert before == pytest.approx(0.5, abs=0.1)
    assert after == pytest.approx(0.8, abs=0.07)
    assert follow - written < 3.0


# -- an invalid file keeps the running config ---------------------------------------

def test_invalid_config_keeps_serving_and_is_reported(logs_dir: Path, hp2_pool: Pool) -> None:
    p = ProxyProc(logs_dir, [node("a", hp2_pool.fast[0]), node("b", hp2_pool.fast[1])],
                  name="proxy-invalid", cache={"backend": "none"}, reload={"watch": False})
    try:
        good = read_config(p.config_path)
        bad = read_config(p.config_path)
        bad["nodes"][1]["weight"] = -1
        bad["polcy"] = {"name": "least_load"}
        rewrite_config(p.config_path, bad)
        p.proc.signal(signal.SIGHUP)
        wait_until(lambda: p.stats()["config"]["failures"] == 1, 5.0, "the failed reload")
        status = p.stats()["config"]
        assert status["reloads"] == 0 and status["last_result"] == "failed"
        assert "nodes.1.weight" in status["last_error"] and "polcy" in status["last_error"]
        fams = scrape(p.admin)
        assert sample(fams, "tfslb_config_reload_failures_total") == 1.0
        assert sample(fams, "tfslb_config_last_reload_ok") == 0.0
        assert "config reload (SIGHUP) failed" in p.proc.log_path.read_text()
        assert "nodes.1.weight" in p.proc.log_path.read_text()
        assert {n: v["weight"] for n, v in _nodes(p).items()} == {"a": 1.0, "b": 1.0}
        assert all(_predict(p.url)[0] == 200 for _ in range(20))
        # Fixed file: the next reload applies it.
        good["nodes"][1]["weight"] = 2.0
        rewrite_config(p.config_path, good)
        p.proc.signal(signal.SIGHUP)
        wait_until(lambda: p.stats()["config"]["reloads"] == 1, 5.0, "the good reload")
        assert p.stats()["config"]["last_result"] == "ok"
        assert _nodes(p)["b"]["weight"] == 2.0
    finally:
        p.stop()


# -- node state across reloads ----------------------------------------------------

async def _concurrent(url: str, n: int, concurrency: int) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    async with aiohttp.ClientSession() as session:
        async def client() -> None:
            while len(out) < n:
                body = {"instances": [float(next(_inputs))]}
                async with session.post(f"{url}/v1/models/{HP2}:predict", json=body) as resp:
                    await resp.read()
                    out.append((resp.status, resp.headers.get("X-Node", "")))
        await asyncio.wait_for(asyncio.gather(*(client() for _ in range(concurrency))), 30)
    return out


def test_staying_nodes_keep_state_and_added_node_gets_traffic(logs_dir: Path,
                                                             hp2_pool: Pool) -> None:
    p = ProxyProc(logs_dir, [node("a", hp2_pool.fast[0]), node("b", hp2_pool.fast[1])],
                  name="proxy-keep", cache={"backend": "none"}, reload={"watch": False})
    try:
        assert all(_predict(p.url)[0] == 200 for _ in range(30))
        before = _nodes(p)
        assert before["a"]["requests"] > 0 and before["a"]["ewma_ms"] > 40
        doc = read_config(p.config_path)
        doc["nodes"][1]["weight"] = 2.0
        doc["nodes"].append(node("c", hp2_pool.fast[2]))
        rewrite_config(p.config_path, doc)
        status, _, body = http("POST", f"{p.admin}/reload", b"")
        assert status == 200, body
        after = _nodes(p)
        for name in ("a", "b"):      # same counters and τ: no traffic in between
            for key in ("requests", "errors", "ewma_ms"):
                assert after[name][key] == before[name][key], (name, key)
        assert after["b"]["weight"] == 2.0 and after["c"]["requests"] == 0
        # The added node slow-starts (lb.pool.concurrency, the default policy): one slot at
        # first, more only while probes show it keeps up (`policy.slow_start_s` is the
        # round_robin / least_conn ramp). Its first replies may be slow (a cold model):
        # too few to judge it by, so it keeps getting calls, and takes its part.
        assert (after["c"]["limit"], after["c"]["limit_state"]) == (1, "starting")
        ramping = asyncio.run(_concurrent(p.url, 120, 12))
        served = asyncio.run(_concurrent(p.url, 120, 12))
        assert all(s == 200 for s, _ in ramping + served)
        assert sum(1 for _, n in served if n == "c") >= 10
        assert _nodes(p)["a"]["requests"] > before["a"]["requests"]
    finally:
        p.stop()


async def _remove_while_in_flight(p: ProxyProc, new_nodes: list[dict[str, Any]]
                                  ) -> tuple[list[tuple[int, str]], int]:
    """16 requests for the only (200 ms) node, some in flight on it and the rest in the
    proxy's queue; reload it away while they run: the queued ones go to the new node."""
    async with aiohttp.ClientSession() as session:
        async def one(i: int) -> tuple[int, str]:
            async with session.post(f"{p.url}/v1/models/{HP2}:predict",
                                    json={"instances": [1000.0 + i]}) as resp:
                await resp.read()
                return resp.status, resp.headers.get("X-Node", "")

        calls = [asyncio.create_task(one(i), name=f"call-{i}") for i in range(16)]
        inflight = 0
        async with asyncio.timeout(5.0):
            while inflight < 4:
                async with session.get(f"{p.admin}/stats") as resp:
                    inflight = (await resp.json())["nodes"][0]["inflight"]
        doc = read_config(p.config_path)
        doc["nodes"] = new_nodes
        rewrite_config(p.config_path, doc)
        async with session.post(f"{p.admin}/reload") as resp:
            assert resp.status == 200, await resp.text()
        results = await asyncio.wait_for(asyncio.gather(*calls), 10.0)
    return results, inflight


def test_removed_node_finishes_in_flight_and_gets_no_more(logs_dir: Path,
                                                         hp2_pool: Pool) -> None:
    p = ProxyProc(logs_dir, [node("slow", hp2_pool.slow)], name="proxy-remove",
                  cache={"backend": "none"}, reload={"watch": False})
    try:
        results, inflight = asyncio.run(_remove_while_in_flight(p, [node("a", hp2_pool.fast[0])]))
        assert [s for s, _ in results] == [200] * 16
        assert sum(1 for _, n in results if n == "slow") >= inflight
        assert list(_nodes(p)) == ["a"]
        served = [_predict(p.url) for _ in range(30)]
        assert served == [(200, "a")] * 30
        assert get_json(f"{p.admin}/stats")["config"]["reloads"] == 1
        # Its keep-alive pool is closed once its requests have drained.
        wait_until(lambda: f"closed the connection pool of {hp2_pool.slow}" in p.proc.log(),
                   5.0, "the removed node's pool to close")
    finally:
        p.stop()


def test_removed_node_closes_its_grpc_channel(logs_dir: Path, hp2_pool: Pool) -> None:
    nodes = [grpc_node("g0", hp2_pool, 0, 1), grpc_node("g1", hp2_pool, 1, 1)]
    p = ProxyProc(logs_dir, nodes, name="proxy-reload-grpc", grpc=True,
                  cache={"backend": "none"}, reload={"watch": True, "poll_s": 0.1})
    try:
        assert p.grpc
        counts = asyncio.run(spread(p.grpc, 40, 4))
        assert set(counts) == {"g0", "g1"}
        assert p.stats()["upstream"]["grpc_channels"] == 2
        doc = read_config(p.config_path)
        doc["nodes"] = nodes[:1]
        rewrite_config(p.config_path, doc)
        wait_until(lambda: p.stats()["config"]["reloads"] == 1, 10.0, "the reload")
        wait_until(lambda: p.stats()["upstream"]["grpc_channels"] == 1, 10.0,
                   "the removed node's channel to close")
        assert asyncio.run(spread(p.grpc, 10, 2)) == {"g0": 10}
    finally:
        p.stop()
