"""Open-loop HTTP load: requests start on a fixed schedule, whatever the replies do.

Used by the benchmarks in scripts/. Latency is measured from each request's
*scheduled* start, so a stalled server shows up in the percentiles instead of
silently slowing the sender (the coordinated-omission trap of closed-loop
tools). Every run is bounded in count and in time, and targets 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

Body = Callable[[int], bytes]          # request i -> body bytes


@dataclass
class Result:
    offered_rps: float
    sent: int
    ok: int
    failed: int
    elapsed_s: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    x_cache: Counter[str] = field(default_factory=Counter)
    nodes: Counter[str] = field(default_factory=Counter)

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def achieved_rps(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0

    def summary(self) -> dict[str, Any]:
        return {"offered_rps": self.offered_rps, "achieved_rps": round(self.achieved_rps, 1),
                "sent": self.sent, "ok": self.ok, "failed": self.failed,
                "p50_ms": round(self.pct(50), 3), "p99_ms": round(self.pct(99), 3),
                "max_ms": round(max(self.latencies_ms, default=float("nan")), 3),
                "x_cache": dict(self.x_cache), "nodes": dict(self.nodes)}


def _check_target(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        raise ValueError(f"load tests target loopback only, not {host!r}")


async def _post(session: aiohttp.ClientSession, url: str, data: bytes,
                headers: dict[str, str], since: float, res: Result) -> None:
    """One POST, recorded in `res`; latency counted from `since`."""
    try:
        async with session.post(url, data=data, headers=headers) as resp:
            await resp.read()
            res.statuses[resp.status] += 1
            res.x_cache[resp.headers.get("X-Cache", "-")] += 1
            res.nodes[resp.headers.get("X-Node", "-")] += 1
            if resp.status == 200:
                res.ok += 1
                res.latencies_ms.append((time.perf_counter() - since) * 1000)
            else:
                res.failed += 1
    except (aiohttp.ClientError, TimeoutError):
        res.failed += 1
        res.statuses[0] += 1


async def open_loop(url: str, body: Body, rate: float, count: int, *,
                    timeout_s: float = 10.0, max_duration_s: float = 120.0,
                    headers: dict[str, str] | None = None) -> Result:
    """Send `count` POSTs at `rate` per second (evenly spaced) and wait for all."""
    _check_target(url)
    res = Result(offered_rps=rate, sent=0, ok=0, failed=0, elapsed_s=0.0)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    tmo = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=conn, timeout=tmo) as session:
        async def one(i: int, scheduled: float) -> None:
            await _post(session, url, body(i), hdrs, scheduled, res)

        start = time.perf_counter()
        tasks: list[asyncio.Task[None]] = []
        for i in range(count):
            scheduled = start + i / rate
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.perf_counter() - start > max_duration_s:
                break
            tasks.append(asyncio.create_task(one(i, scheduled), name=f"load-{i}"))
            res.sent += 1
        await asyncio.wait_for(asyncio.gather(*tasks), timeout_s + 5)
        res.elapsed_s = time.perf_counter() - start
    return res


async def closed_loop(url: str, body: Body, concurrency: int, count: int, *,
                      timeout_s: float = 10.0) -> Result:
    """`concurrency` clients back to back: the server's saturation throughput."""
    _check_target(url)
    res = Result(offered_rps=float("nan"), sent=0, ok=0, failed=0, elapsed_s=0.0)
    counter = iter(range(count))
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn,
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
        async def client() -> None:
            for i in counter:
                res.sent += 1
                await _post(s, url, body(i), {"Content-Type": "application/json"},
                            time.perf_counter(), res)
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(client() for _ in range(concurrency))),
                               timeout_s * count)
        res.elapsed_s = time.perf_counter() - start
    return res
