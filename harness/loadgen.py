"""Open-loop HTTP load: requests start on a fixed schedule, whatever the replies do.

Used by the benchmarks in scripts/ and, through `OpenLoad` (the same open loop in
a background thread, readable while it runs), by the fault-injection tests.
Latency is measured from each request's
*scheduled* start, so a stalled server shows up in the percentiles instead of
silently slowing the sender (the coordinated-omission trap of closed-loop
tools). Arrivals are evenly spaced or Poisson (`arrivals="poisson"`, seeded).
`connections=K` spreads requests over K client sessions (at least K kept-alive
connections: with `serve --workers N` the kernel spreads connections, not
requests, over the processes). The sender checks itself: `send_lag_ms` is how
late each request actually started against its schedule, and `sent_rps` the
rate it managed, so a saturated generator shows instead of passing for a slow
server. `burst` sends a list of bodies all at once (a correctness check that
needs concurrency, not a rate). Every run is bounded in count and in time, and
targets 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np

Body = Callable[[int], bytes]          # request i -> body bytes


@dataclass(slots=True, frozen=True)
class Sample:
    """One request, as the fault-injection tests read it."""

    at: float           # time.monotonic() of the scheduled start
    latency_ms: float
    status: int         # 0: no HTTP answer
    node: str           # its X-Node header, "-" without


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
    send_lag_ms: list[float] = field(default_factory=list)
    refused_ms: list[float] = field(default_factory=list)   # latency of the 503s
    retry_after: int = 0                # 503s that carried a Retry-After header
    send_span_s: float = 0.0            # first to last request start, wall clock
    schedule_span_s: float = 0.0        # first to last request start, as scheduled
    # (scheduled start, end, status) of each request, time.perf_counter() seconds
    spans: list[tuple[float, float, int]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)     # in the order they ended
    # time.monotonic() - time.perf_counter() at the start: `Sample.at` on the former
    mono_offset: float = 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def achieved_rps(self) -> float:
        return self.ok / self.elapsed_s if self.elapsed_s else 0.0

    @property
    def sent_rps(self) -> float:
        """The rate requests really started at (vs `offered_rps`)."""
        return (self.sent - 1) / self.send_span_s if self.send_span_s > 0 else float("nan")

    @property
    def on_schedule(self) -> float:
        """Scheduled over actual sending time: 1.0 when the sender kept its schedule
        (Poisson gaps make `sent_rps` differ from `offered_rps` by chance alone)."""
        return self.schedule_span_s / self.send_span_s if self.send_span_s > 0 else float("nan")

    def lag_pct(self, q: float) -> float:
        return float(np.percentile(self.send_lag_ms, q)) if self.send_lag_ms else float("nan")

    def summary(self) -> dict[str, Any]:
        return {"offered_rps": self.offered_rps, "achieved_rps": round(self.achieved_rps, 1),
                "sent_rps": round(self.sent_rps, 1), "on_schedule": round(self.on_schedule, 4),
                "sent": self.sent, "ok": self.ok, "failed": self.failed,
                "p50_ms": round(self.pct(50), 3), "p99_ms": round(self.pct(99), 3),
                "p999_ms": round(self.pct(99.9), 3),
                "max_ms": round(max(self.latencies_ms, default=float("nan")), 3),
                "send_lag_p99_ms": round(self.lag_pct(99), 3),
                "statuses": {str(k): v for k, v in self.statuses.items()},
                "x_cache": dict(self.x_cache), "nodes": dict(self.nodes),
                "refused": len(self.refused_ms), "retry_after": self.retry_after,
                "refused_p99_ms": round(float(np.percentile(self.refused_ms, 99)), 3)
                if self.refused_ms else None}

    def goodput(self, within_ms: float) -> float:
        """Answers (200) within `within_ms` per second of the run."""
        good = sum(1 for ms in self.latencies_ms if ms <= within_ms)
        return good / self.elapsed_s if self.elapsed_s else 0.0


def run(coro: Coroutine[Any, Any, Result]) -> Result:
    """`asyncio.run` on uvloop when it is installed: the generator shares the cores
    with what it measures, so it should spend as little of them as it can."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _check_target(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        raise ValueError(f"load tests target loopback only, not {host!r}")


async def _post(session: aiohttp.ClientSession, url: str, data: bytes,
                headers: dict[str, str], since: float, res: Result) -> None:
    """One POST, recorded in `res`; latency counted from `since`."""
    status, node = 0, "-"
    try:
        async with session.post(url, data=data, headers=headers) as resp:
            await resp.read()
            status = resp.status
            res.statuses[resp.status] += 1
            res.x_cache[resp.headers.get("X-Cache", "-")] += 1
            node = resp.headers.get("X-Node", "-")
            res.nodes[node] += 1
            if resp.status == 200:
                res.ok += 1
                res.latencies_ms.append((time.perf_counter() - since) * 1000)
            else:
                res.failed += 1
                if resp.status == 503:
                    res.refused_ms.append((time.perf_counter() - since) * 1000)
                    res.retry_after += "Retry-After" in resp.headers
    except (aiohttp.ClientError, TimeoutError):
        res.failed += 1
        res.statuses[0] += 1
    end = time.perf_counter()
    res.spans.append((since, end, status))
    res.samples.append(Sample(since + res.mono_offset, (end - since) * 1000, status, node))


def schedule(rate: float, count: int, arrivals: str = "uniform", seed: int = 0) -> np.ndarray:
    """Start offsets (s) of `count` requests at `rate`/s: evenly spaced or Poisson."""
    if arrivals == "uniform":
        return np.arange(count, dtype=float) / rate
    if arrivals == "poisson":
        gaps = np.random.default_rng(seed).exponential(1.0 / rate, count)
        return np.concatenate(([0.0], np.cumsum(gaps[:-1])))
    raise ValueError(f"arrivals: uniform or poisson, not {arrivals!r}")


async def open_loop(url: str, body: Body, rate: float, count: int, *,
                    timeout_s: float = 10.0, max_duration_s: float = 120.0,
                    headers: dict[str, str] | None = None, arrivals: str = "uniform",
                    seed: int = 0, connections: int = 1, fresh: bool = False,
                    ssl: SSLContext | None = None, stop: threading.Event | None = None,
                    into: Result | None = None) -> Result:
    """Send `count` POSTs at `rate` per second and wait for all; request i goes
    over client session i % `connections`; `fresh`: a new connection per request
    (so a request can fail only with the server process that took it). `ssl`: the
    client context of an https URL; `stop`: no request starts once it is set;
    `into`: the Result to fill as requests end (read by another thread)."""
    _check_target(url)
    res = into or Result(offered_rps=rate, sent=0, ok=0, failed=0, elapsed_s=0.0)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    tmo = aiohttp.ClientTimeout(total=timeout_s)
    sessions = [aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=fresh, ssl=ssl or True),
        timeout=tmo) for _ in range(max(1, connections))]
    offsets = schedule(rate, count, arrivals, seed)
    try:
        async def one(i: int, scheduled: float) -> None:
            res.send_lag_ms.append((time.perf_counter() - scheduled) * 1000)
            await _post(sessions[i % len(sessions)], url, body(i), hdrs, scheduled, res)

        start = time.perf_counter()
        res.mono_offset = time.monotonic() - start
        first = last = start
        tasks: list[asyncio.Task[None]] = []
        for i in range(count):
            scheduled = start + float(offsets[i])
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            last = time.perf_counter()
            if last - start > max_duration_s or (stop is not None and stop.is_set()):
                break
            tasks.append(asyncio.create_task(one(i, scheduled), name=f"load-{i}"))
            res.sent += 1
        res.send_span_s = last - first
        res.schedule_span_s = float(offsets[res.sent - 1]) if res.sent else 0.0
        await asyncio.wait_for(asyncio.gather(*tasks), timeout_s + 5)
        res.elapsed_s = time.perf_counter() - start
    finally:
        await asyncio.gather(*(s.close() for s in sessions))
    return res


async def burst(url: str, bodies: list[bytes], *, limit: int,
                timeout_s: float = 30.0) -> list[tuple[int, bytes]]:
    """POST every body at once over at most `limit` connections (so a proxy sees
    them concurrently); (status, reply body) in the order of `bodies`, status 0
    when no reply came. Bounded by `timeout_s` per request and overall."""
    _check_target(url)
    hdrs = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit),
                                     timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
        async def one(data: bytes) -> tuple[int, bytes]:
            try:
                async with s.post(url, data=data, headers=hdrs) as resp:
                    return resp.status, await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                return 0, repr(exc).encode()
        done = asyncio.gather(*(one(b) for b in bodies))
        return list(await asyncio.wait_for(done, timeout_s * 2))


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


class OpenLoad:
    """`open_loop` in a background thread while a test does something else (kills a
    node, reloads, rotates certificates): uniform arrivals at `rate`, bounded by
    `stop()`, `max_s` and `rate * max_s` requests. `samples` grows as requests end
    and may be read meanwhile. `headers` go with every request; `ssl` is the client
    context of an https:// URL; `fresh` opens a new connection (a new TLS handshake)
    for every request, so that a request can only fail with the process that
    accepted it while it is in flight."""

    def __init__(self, url: str, body: Body, rate: float,
                 max_s: float = 60.0, timeout_s: float = 10.0,
                 headers: dict[str, str] | None = None, ssl: SSLContext | None = None,
                 fresh: bool = False):
        _check_target(url)
        self.result = Result(offered_rps=rate, sent=0, ok=0, failed=0, elapsed_s=0.0)
        self.samples = self.result.samples
        self.timeout_s = timeout_s
        self._stop = threading.Event()
        count = max(1, math.ceil(rate * max_s))
        run = functools.partial(open_loop, url, body, rate, count, timeout_s=timeout_s,
                                max_duration_s=max_s, headers=headers, fresh=fresh, ssl=ssl,
                                stop=self._stop, into=self.result)
        self._thread = threading.Thread(target=lambda: asyncio.run(run()), daemon=True,
                                        name="open-load")

    def __enter__(self) -> OpenLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Start no more requests, and wait (bounded) for those in flight."""
        self._stop.set()
        self._thread.join(self.timeout_s + 10)
        assert not self._thread.is_alive(), "load thread did not stop"

    def between(self, t0: float, t1: float) -> list[Sample]:
        """The samples scheduled in [t0, t1) (time.monotonic())."""
        return [s for s in self.samples if t0 <= s.at < t1]

    @staticmethod
    def p99(samples: list[Sample]) -> float:
        return float(np.percentile([s.latency_ms for s in samples], 99)) if samples else 0.0

    def failed(self) -> list[Sample]:
        return [s for s in self.samples if s.status != 200]
