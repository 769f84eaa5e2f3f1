"""A simulated TF Serving node for policy benchmarks: slots, lognormal service, stalls.

    python harness/simnode.py --port P --mean-ms 20 [--slots 2] [--sigma 0.5]
                              [--stall-ms 200 --stall-every-s 2] [--seed S] [--model mnist]

Started by scripts/bench_policy.py and bench_batching.py (Bench.start_simnode) and
by the overload and hedging tests, one process per node, on 127.0.0.1 only.
It speaks enough of TF Serving's REST API for the proxy: model status (version
1 AVAILABLE), metadata (404: the policy benchmarks run without a cache) and
`:predict`/`:classify`/`:regress` answering a small fixed JSON.

Guarantees, so that a node behaves like a real server and not like a sleep():
* at most `slots` requests are in service; the others queue inside the node
  (FIFO), as requests queue in a model server's batch queue;
* each request needs a lognormal amount of work with mean `mean_ms` and shape
  `sigma` (seeded: the same seed gives the same sequence of service times);
* with `--stall-ms`, the node stops serving for `stall_ms` every
  `stall_every_s` seconds (a GC pause, a noisy neighbour): work in service
  makes no progress during a stall, queued work waits, and no reply (status
  included) leaves the node before the stall ends;
* `GET /_sim/stats` reports predicts received (counted on arrival, so a
  request its client gave up on still counts) and served, and the node's concurrency (in
  service + queued) as a time integral, so a caller that reads it twice gets
  the time-weighted average concurrency between the reads; `max_concurrency`
  is the peak since the last `POST /_sim/reset`.

For callers (scripts/bench_policy.py): `command` builds the command line,
`read_stats` reads /_sim/stats of several nodes and `deltas` turns two
readings into requests received and each node's share of the in-flight work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import random
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from aiohttp import web

log = logging.getLogger("scripts.simnode")

PREDICTION = b'{"predictions": [[0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]]}'
DEADLINE_S = 30.0          # no request waits in the node longer than this


class Stalls:
    """The stall windows [k·every, k·every + length) on the node's own clock."""

    def __init__(self, every_s: float, length_s: float, t0: float) -> None:
        self.every = every_s
        self.length = length_s if every_s > 0 else 0.0
        self.t0 = t0

    def resume_at(self, t: float) -> float:
        """`t`, or the end of the stall that `t` falls in."""
        if self.length <= 0:
            return t
        k = math.floor((t - self.t0) / self.every)
        end = self.t0 + k * self.every + self.length
        return end if t < end and t >= self.t0 + k * self.every else t

    def finish(self, start: float, work: float) -> float:
        """When `work` seconds of service that start at `start` are done, skipping stalls."""
        t = self.resume_at(start)
        if self.length <= 0:
            return t + work
        while True:
            k = math.floor((t - self.t0) / self.every)
            next_stall = self.t0 + (k + 1) * self.every
            if t + work <= next_stall:
                return t + work
            work -= next_stall - t
            t = next_stall + self.length


class Node:
    def __init__(self, args: argparse.Namespace) -> None:
        self.slots = asyncio.Semaphore(args.slots)
        self.sigma = args.sigma
        # Lognormal with mean m: mu = ln(m) - sigma²/2.
        self.mu = math.log(args.mean_ms / 1000.0) - args.sigma ** 2 / 2
        self.rng = random.Random(args.seed)
        now = time.monotonic()
        self.stalls = Stalls(args.stall_every_s, args.stall_ms / 1000.0,
                             now + args.stall_every_s * self.rng.random())
        self.model = args.model
        self.received = 0
        self.served = 0
        self.concurrency = 0
        self.max_concurrency = 0
        self.area = 0.0                      # ∫ concurrency dt, seconds
        self.t_start = self.t_last = now

    def _account(self, delta: int) -> None:
        now = time.monotonic()
        self.area += self.concurrency * (now - self.t_last)
        self.t_last = now
        self.concurrency += delta
        self.max_concurrency = max(self.max_concurrency, self.concurrency)

    async def _until(self, t: float) -> None:
        delay = t - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def predict(self, request: web.Request) -> web.Response:
        await request.read()
        self.received += 1
        self._account(+1)
        try:
            async with asyncio.timeout(DEADLINE_S):
                async with self.slots:
                    work = self.rng.lognormvariate(self.mu, self.sigma)
                    await self._until(self.stalls.finish(time.monotonic(), work))
        finally:
            self._account(-1)
        self.served += 1
        return web.Response(body=PREDICTION, content_type="application/json")

    async def status(self, request: web.Request) -> web.Response:
        if request.match_info["model"] != self.model:
            return web.json_response({"error": "Servable not found"}, status=404)
        await self._until(self.stalls.resume_at(time.monotonic()))
        return web.json_response({"model_version_status": [
            {"version": "1", "state": "AVAILABLE",
             "status": {"error_code": "OK", "error_message": ""}}]})

    async def metadata(self, _request: web.Request) -> web.Response:
        return web.json_response({"error": "no metadata in the simulator"}, status=404)

    async def stats(self, _request: web.Request) -> web.Response:
        self._account(0)
        return web.json_response({
            "received": self.received, "served": self.served, "concurrency": self.concurrency,
            "concurrency_area_s": self.area, "t_s": self.t_last - self.t_start,
            "avg_concurrency": self.area / max(1e-9, self.t_last - self.t_start),
            "max_concurrency": self.max_concurrency})

    async def reset(self, _request: web.Request) -> web.Response:
        self.max_concurrency = self.concurrency
        return web.json_response({"ok": True})


def build_app(node: Node) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post(r"/v1/models/{model}:{verb}", node.predict)
    app.router.add_post(r"/v1/models/{model}/versions/{v}:{verb}", node.predict)
    app.router.add_get("/v1/models/{model}", node.status)
    app.router.add_get("/v1/models/{model}/metadata", node.metadata)
    app.router.add_get("/_sim/stats", node.stats)
    app.router.add_post("/_sim/reset", node.reset)
    return app


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--mean-ms", type=float, default=20.0)
    p.add_argument("--slots", type=int, default=2)
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--stall-ms", type=float, default=0.0)
    p.add_argument("--stall-every-s", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="mnist")
    args = p.parse_args(argv)
    if not args.host.startswith("127."):
        p.error("the simulator listens on loopback only")
    if (args.stall_ms > 0) != (args.stall_every_s > 0):
        p.error("--stall-ms and --stall-every-s go together")
    if args.stall_ms / 1000.0 >= args.stall_every_s > 0:
        p.error("a stall must be shorter than its period")
    return args


def command(port: int, mean_ms: float, *, slots: int = 2, sigma: float = 0.5, seed: int = 0,
            model: str = "mnist", stall_ms: float = 0.0, stall_every_s: float = 0.0
            ) -> list[str]:
    """The command line of one simulated node on 127.0.0.1:`port`."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--port", str(port),
           "--mean-ms", str(mean_ms), "--slots", str(slots), "--sigma", str(sigma),
           "--seed", str(seed), "--model", model]
    if stall_ms > 0:
        cmd += ["--stall-ms", str(stall_ms), "--stall-every-s", str(stall_every_s)]
    return cmd


def read_stats(ports: list[int], timeout: float = 5.0) -> list[dict[str, Any]]:
    """/_sim/stats of the nodes on these 127.0.0.1 ports, in order."""
    out = []
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/stats",
                                    timeout=timeout) as r:
            out.append(json.loads(r.read()))
    return out


def deltas(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, Any]:
    """Between two `read_stats`: requests received per node, time-weighted average
    concurrency per node, each node's share of it, and the largest share over the
    fair share (1.0: perfectly even; 1.3: one node carries 30 % more than its part)."""
    pairs = list(zip(before, after, strict=True))
    received = [a["received"] - b["received"] for b, a in pairs]
    conc = [(a["concurrency_area_s"] - b["concurrency_area_s"]) / max(1e-9, a["t_s"] - b["t_s"])
            for b, a in pairs]
    total = sum(conc) or 1.0
    shares = [c / total for c in conc]
    return {"received": received, "avg_concurrency": [round(c, 3) for c in conc],
            "inflight_share": [round(s, 4) for s in shares],
            "max_share_over_fair": round(max(shares) * len(shares), 3),
            "max_concurrency": [a["max_concurrency"] for a in after]}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    async def make() -> web.Application:
        return build_app(Node(args))      # the semaphore belongs to the running loop

    web.run_app(make(), host=args.host, port=args.port, access_log=None, print=None,
                backlog=4096, shutdown_timeout=1.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
