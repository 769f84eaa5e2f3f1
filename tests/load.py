"""Steady open-loop load in a background thread, for fault-injection tests.

Requests start on a fixed schedule (`rate` per second) whatever the replies
do, so a stalled node shows up as latency rather than as a slower sender.
Bounded: it stops at `stop()`, after `max_s`, or after `rate * max_s`
requests, whichever comes first; 127.0.0.1 only (http or https).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from ssl import SSLContext

import aiohttp
import numpy as np


@dataclass(slots=True, frozen=True)
class Sample:
    at: float           # time.monotonic() of the scheduled start
    latency_ms: float
    status: int         # 0: no HTTP answer
    node: str


class OpenLoad:
    """`headers` go with every request; `ssl` is the client context of an https:// URL;
    `fresh` opens a new connection (a new TLS handshake) for every request."""

    def __init__(self, url: str, body: Callable[[int], bytes], rate: float,
                 max_s: float = 60.0, timeout_s: float = 10.0,
                 headers: dict[str, str] | None = None, ssl: SSLContext | None = None,
                 fresh: bool = False):
        """`fresh`: a new connection per request (none is reused), so that a request
        can only fail with the process that accepted it while it is in flight."""
        assert url.startswith(("http://127.0.0.1:", "https://127.0.0.1:",
                               "https://localhost:")), url
        self.url, self.body, self.rate = url, body, rate
        self.max_s, self.timeout_s = max_s, timeout_s
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.ssl, self.fresh = ssl, fresh
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> OpenLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 10)
        assert not self._thread.is_alive(), "load thread did not stop"

    async def _run(self) -> None:
        tmo = aiohttp.ClientTimeout(total=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=0, ssl=self.ssl or True,
                                         force_close=self.fresh)
        async with aiohttp.ClientSession(timeout=tmo, connector=connector) as s:
            tasks: set[asyncio.Task[None]] = set()
            start = time.monotonic()
            i = 0
            while not self._stop.is_set() and time.monotonic() - start < self.max_s:
                at = start + i / self.rate
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                task = asyncio.create_task(self._one(s, i, at), name=f"load-{i}")
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            await asyncio.wait_for(asyncio.gather(*tasks), self.timeout_s + 5)

    async def _one(self, s: aiohttp.ClientSession, i: int, at: float) -> None:
        status, node = 0, "-"
        try:
            async with s.post(self.url, data=self.body(i), headers=self.headers) as r:
                await r.read()
                status, node = r.status, r.headers.get("X-Node", "-")
        except (aiohttp.ClientError, TimeoutError):
            pass
        self.samples.append(Sample(at, (time.monotonic() - at) * 1000, status, node))

    def between(self, t0: float, t1: float) -> list[Sample]:
        return [s for s in self.samples if t0 <= s.at < t1]

    @staticmethod
    def p99(samples: list[Sample]) -> float:
        return float(np.percentile([s.latency_ms for s in samples], 99)) if samples else 0.0

    def failed(self) -> list[Sample]:
        return [s for s in self.samples if s.status != 200]
