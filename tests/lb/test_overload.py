"""Overload end to end: three simulated nodes (harness/simnode.py: 2 slots each,
20/20/60 ms) behind the real proxy, open-loop load at 1.8x their capacity.

What the proxy must do (lb/request/scheduler.py): answer what it can, refuse the rest early
and clearly — every refusal a 503 with Retry-After in TF Serving's {"error"} shape,
fast — and drop no connection; the answered requests stay fast, because the queue
in front of the nodes is kept short (CoDel), instead of growing for as long as the
load lasts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from harness import simnode
from tests.procs import Proc, ProxyProc, free_port, node, running

MODEL = "mnist"
MEANS_MS = (20.0, 20.0, 60.0)
CAPACITY = sum(2 / (m / 1000.0) for m in MEANS_MS)     # 233 req/s
RATE, SECONDS = 1.8 * CAPACITY, 5.0
pytestmark = pytest.mark.slow


@pytest.fixture
def simnodes(logs_dir: Path) -> Iterator[list[int]]:
    ports = [free_port() for _ in MEANS_MS]
    procs = [Proc(f"simnode-over-{port}", simnode.command(port, mean, slots=2, seed=i,
                                                          model=MODEL), logs_dir)
             for i, (port, mean) in enumerate(zip(ports, MEANS_MS, strict=True))]
    with running(*procs):
        for proc, port in zip(procs, ports, strict=True):
            proc.wait_http(f"http://127.0.0.1:{port}/v1/models/{MODEL}", 15.0)
        yield ports


Reply = tuple[int, float, str | None, bytes]        # status, seconds, Retry-After, body


async def open_loop(url: str, rate: float, seconds: float) -> list[Reply]:
    """Requests on a fixed schedule whatever the answers; status 0: no HTTP answer."""
    body = orjson.dumps({"instances": [[0.5] * 8]})
    out: list[Reply] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=30)) as session:
        async def one() -> None:
            start = time.perf_counter()
            try:
                async with session.post(url, data=body) as resp:
                    data = await resp.read()
                    out.append((resp.status, time.perf_counter() - start,
                                resp.headers.get("Retry-After"), data))
            except (aiohttp.ClientError, TimeoutError):
                out.append((0, time.perf_counter() - start, None, b""))

        tasks = []
        t0 = time.perf_counter()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return out


def test_overload_answers_what_it_can_and_refuses_the_rest_early(
        logs_dir: Path, simnodes: list[int]) -> None:
    p = ProxyProc(logs_dir, [node(f"n{i}", f"http://127.0.0.1:{port}")
                             for i, port in enumerate(simnodes)],
                  name="proxy-overload", cache={"backend": "none"})
    with running(p.proc):
        url = f"{p.url}/v1/models/{MODEL}:predict"
        asyncio.run(open_loop(url, CAPACITY * 0.5, 2.0))            # warm: τ, limits
        replies = asyncio.run(open_loop(url, RATE, SECONDS))
        queue = p.stats()["queue"]
    ok = sorted(s for status, s, _, _ in replies if status == 200)
    refused = [(s, ra, body) for status, s, ra, body in replies if status == 503]
    other = [status for status, *_ in replies if status not in (200, 503)]
    slow_refusal = sorted(s for s, _, _ in refused)[int(0.99 * len(refused))] if refused else 0
    print(f"overload: {len(replies)} sent at {RATE:.0f}/s, {len(ok)} answered "
          f"({len(ok) / SECONDS / CAPACITY:.2f}x capacity), p99 "
          f"{ok[int(0.99 * len(ok))]:.3f} s; {len(refused)} refused, p99 {slow_refusal:.3f} s; "
          f"queue {queue}")
    assert other == [], other[:10]                   # no dropped connection, no timeout
    assert refused and all(ra == "1" and set(orjson.loads(b)) == {"error"}
                           for _, ra, b in refused)
    assert queue["refused"] + queue["shed"] > 0
    assert len(ok) >= 0.6 * CAPACITY * SECONDS       # the nodes stayed busy
    assert ok[int(0.99 * len(ok))] < 1.0             # the answered stay fast: no long queue
