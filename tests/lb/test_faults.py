"""Fault injection under steady open-loop load through the real proxy.

Each test prints the figures of its fault (requests sent, failed, p99 during
the fault) so a run's log carries them. Bounded in time: every wait has a
deadline, and the load stops by itself.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from harness.loadgen import OpenLoad
from tests.lb.conftest import Pool
from tests.procs import (
    Proc,
    ProxyProc,
    RedisServer,
    free_port,
    get_json,
    node,
    start_workers,
    wait_until,
)

HP2 = "half_plus_two"
DELAY_MS = 20.0


def body(i: int) -> bytes:
    return orjson.dumps({"instances": [float(i % 1000)]})


@pytest.fixture(scope="module")
def fault_workers(logs_dir: Path, test_models: Path) -> Iterator[list[tuple[Proc, str, int]]]:
    """Three workers of our own (tests kill them), on ports we can restart them on."""
    ports = [free_port() for _ in range(3)]
    specs = [{"models": {HP2: test_models / "half_plus_two_cpu"}, "delay_ms": DELAY_MS,
              "port": p, "name": f"fault-{p}"} for p in ports]
    started = start_workers(logs_dir, specs)
    workers = [(proc, url, port) for (proc, url), port in zip(started, ports, strict=True)]
    yield workers
    for proc, _, _ in workers:
        proc.stop()


def fault_proxy(logs_dir: Path, urls: list[str], name: str) -> ProxyProc:
    return ProxyProc(logs_dir, [node(f"n{i}", u) for i, u in enumerate(urls)], name=name,
                     cache={"backend": "none"},
                     health={"interval_s": 0.5, "timeout_s": 0.5, "unhealthy_after": 1},
                     outlier={"consecutive_errors": 3, "base_ejection_s": 2.0},
                     upstream={"try_timeout_s": 1.0, "connect_timeout_s": 0.5},
                     policy={"tau_relax_s": 2.0, "slow_start_s": 3.0})


def node_state(p: ProxyProc, name: str) -> dict[str, Any]:
    return next(n for n in p.stats()["nodes"] if n["name"] == name)


def report(what: str, load: OpenLoad, t0: float, t1: float) -> None:
    during = load.between(t0, t1)
    print(f"\n{what}: sent {len(load.samples)}, failed {len(load.failed())}, "
          f"during the fault {len(during)} sent, p99 {load.p99(during):.0f} ms "
          f"(overall p99 {load.p99(load.samples):.0f} ms)")


def test_kill_9_worker_loses_no_request_and_node_comes_back(
        logs_dir: Path, test_models: Path, fault_workers: list[tuple[Proc, str, int]]) -> None:
    urls = [u for _, u, _ in fault_workers]
    p = fault_proxy(logs_dir, urls, "proxy-kill9")
    victim, _, port = fault_workers[1]
    try:
        with OpenLoad(f"{p.url}/v1/models/{HP2}:predict", body, rate=100, max_s=60) as load:
            time.sleep(2.0)
            killed = time.monotonic()
            victim.signal(signal.SIGKILL)
            wait_until(lambda: node_state(p, "n1")["state"] != "healthy", 2.0,
                       "the killed node to leave the pool within 2 s")
            out_after = time.monotonic() - killed
            time.sleep(1.0)
            fault_workers[1] = (*start_workers(logs_dir, [{
                "models": {HP2: test_models / "half_plus_two_cpu"}, "delay_ms": DELAY_MS,
                "port": port, "name": f"fault-{port}-restarted"}])[0], port)
            back = time.monotonic()
            wait_until(lambda: node_state(p, "n1")["state"] == "healthy", 10.0,
                       "the restarted node to be readmitted")
            readmitted_after = time.monotonic() - back
            served_before = node_state(p, "n1")["requests"]
            # Slow start (3 s here) ramps its weight up: traffic comes back gradually.
            wait_until(lambda: node_state(p, "n1")["requests"] > served_before + 10, 10.0,
                       "the readmitted node to take traffic again")
        report("kill -9", load, killed, back)
        print(f"node out after {out_after:.2f} s; readmitted {readmitted_after:.2f} s "
              f"after its restart was AVAILABLE")
        assert load.failed() == [], load.failed()[:5]
    finally:
        p.stop()


def test_sigstop_worker_moves_traffic_off_and_bounds_p99(
        logs_dir: Path, fault_workers: list[tuple[Proc, str, int]]) -> None:
    urls = [u for _, u, _ in fault_workers]
    p = fault_proxy(logs_dir, urls, "proxy-sigstop")
    victim = fault_workers[2][0]
    try:
        with OpenLoad(f"{p.url}/v1/models/{HP2}:predict", body, rate=100, max_s=30) as load:
            time.sleep(2.0)
            stopped = time.monotonic()
            victim.signal(signal.SIGSTOP)
            time.sleep(3.0)
            victim.signal(signal.SIGCONT)
            resumed = time.monotonic()
            time.sleep(2.0)
        during = load.between(stopped + 0.5, resumed)
        report("SIGSTOP 3 s", load, stopped, resumed)
        share = sum(s.node == "n2" for s in during) / max(len(during), 1)
        print(f"stopped node's share while stopped: {share:.3f}")
        assert load.failed() == [], load.failed()[:5]
        assert share < 0.05                               # traffic moved off it
        assert load.p99(load.between(stopped, resumed)) < 2500   # try timeout 1 s + a retry
    finally:
        os.kill(victim.pid, signal.SIGCONT)
        p.stop()


def test_sigterm_finishes_requests_in_flight(logs_dir: Path, hp2_pool: Pool) -> None:
    p = ProxyProc(logs_dir, [node("slow", hp2_pool.slow)], name="proxy-sigterm",
                  cache={"backend": "none"})

    async def in_flight() -> list[int]:
        async with aiohttp.ClientSession() as s:
            async def one(i: int) -> int:
                async with s.post(f"{p.url}/v1/models/{HP2}:predict",
                                  json={"instances": [float(i)]}) as r:
                    await r.read()
                    return r.status
            tasks = [asyncio.create_task(one(i)) for i in range(20)]
            await asyncio.sleep(0.08)                      # all sent, none answered (200 ms)
            p.proc.signal(signal.SIGTERM)
            return await asyncio.wait_for(asyncio.gather(*tasks), 20)

    statuses = asyncio.run(in_flight())
    assert statuses == [200] * 20
    assert p.proc.popen.wait(15) == 0, p.proc.log()


def test_every_node_down_tries_them_all_then_answers_503(logs_dir: Path) -> None:
    p = ProxyProc(logs_dir, [node("x", f"http://127.0.0.1:{free_port()}"),
                             node("y", f"http://127.0.0.1:{free_port()}")],
                  name="proxy-alldown", cache={"backend": "none"},
                  # Nodes that never answered a probe may be starting: the request waits
                  # for one first. Its default 10 s raced the client's 10 s timeout.
                  limits={"queue_timeout_s": 1.0})
    try:
        from tests.procs import http
        status, hdrs, raw = http("POST", f"{p.url}/v1/models/{HP2}:predict", {"instances": [1]})
        assert status == 503 and "error" in orjson.loads(raw) and "X-Node" not in hdrs
        assert get_json(f"{p.admin}/stats")["nodes"][0]["healthy"] is False
    finally:
        p.stop()


def test_redis_stop_and_restart_under_load_gives_zero_client_errors(
        logs_dir: Path, fault_workers: list[tuple[Proc, str, int]],
        private_redis: RedisServer) -> None:
    redis = private_redis
    urls = [u for _, u, _ in fault_workers]
    p = ProxyProc(logs_dir, [node(f"n{i}", u) for i, u in enumerate(urls)], name="proxy-redis",
                  cache={"backend": "tiered", "redis_url": redis.url, "redis_timeout_ms": 50})
    repeated = [orjson.dumps({"instances": [float(i)]}) for i in range(50)]

    def body_of(i: int) -> bytes:      # half hits, half new inputs (each miss asks Redis)
        return repeated[i % 50] if i % 2 else orjson.dumps({"instances": [1e4 + i]})

    try:
        with OpenLoad(f"{p.url}/v1/models/{HP2}:predict", body_of, rate=150, max_s=30) as load:
            time.sleep(2.0)
            stopped = time.monotonic()
            redis.stop()
            time.sleep(3.0)
            redis.start()
            restarted = time.monotonic()
            time.sleep(3.0)
        report("Redis stopped 3 s and restarted", load, stopped, restarted)
        assert load.failed() == [], load.failed()[:5]
        cache = p.stats()["cache"]
        assert cache["hits"] > 0
        assert cache["store"]["redis"]["errors"] > 0         # the outage was seen, and hidden
    finally:
        p.stop()


def test_request_deadline_gives_504_with_error(logs_dir: Path, hp2_pool: Pool) -> None:
    from tests.procs import http

    p = ProxyProc(logs_dir, [node("slow", hp2_pool.slow)], name="proxy-deadline",
                  cache={"backend": "none"}, limits={"request_timeout_s": 0.05})
    try:
        start = time.monotonic()
        status, _, raw = http("POST", f"{p.url}/v1/models/{HP2}:predict",
                                 {"instances": [1.0]})
        assert time.monotonic() - start < 1.0          # not the node's 200 ms + retries
        assert status == 504 and set(orjson.loads(raw)) == {"error"}
    finally:
        p.stop()


def test_only_configured_nodes_are_contacted(logs_dir: Path, hp2_pool: Pool) -> None:
    """An absolute URL or a Host header naming another server changes nothing."""
    import socket

    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(8)
    trap.settimeout(0.5)
    trap_port = trap.getsockname()[1]
    p = ProxyProc(logs_dir, [node("a", hp2_pool.fast[0])], name="proxy-ssrf",
                  cache={"backend": "none"})
    try:
        port = int(p.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(f"GET http://127.0.0.1:{trap_port}/v1/models/{HP2} HTTP/1.1\r\n"
                      f"Host: 127.0.0.1:{trap_port}\r\nConnection: close\r\n\r\n".encode())
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 200") and b"X-Node: a" in reply
        with pytest.raises(TimeoutError):
            trap.accept()                                # nobody called the trap
    finally:
        trap.close()
        p.stop()
