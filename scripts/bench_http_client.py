"""Forwarding rate of lb.http.client.NodeClient vs aiohttp.ClientSession, one process.

    .venv/bin/python scripts/bench_http_client.py [--seconds 5] [--concurrency 32]

Starts an nginx (one worker process) on a free 127.0.0.1 port whose every location
answers `return 200` with a 2-byte body, then, on uvloop in this process, runs a
tight loop of `--concurrency` senders for `--seconds` through each client (in five
interleaved slices): GET without a body and POST with a small JSON body (the shape of
a predict call).
Both clients keep connections alive; aiohttp is configured as `lb.upstream` does it.
`wrk` (when installed) measures nginx alone for scale. Prints requests/s, this
process's CPU time per request (robust on a shared box, where nginx may cap the
rate), and the ratios NodeClient/aiohttp from the same run. Needs nginx
(`apt-get install nginx-light`).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import nginx, wrk
from harness.procs import free_port
from lb.http.client import ClientLimits, NodeClient
from scripts.benchenv import OUT

NGINX_SERVER = """
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 "ok"; }}
    }}
"""
PATH = "/v1/models/m:predict"
BODY = b'{"instances": [[1.0, 2.0, 5.0, 7.0], [3.0, 4.0, 6.0, 8.0]]}'

ROUNDS = 5
Send = Callable[[], Awaitable[int]]


def start_nginx() -> tuple[str, subprocess.Popen[bytes]]:
    """nginx `return 200` on a free port (harness/nginx.py): its URL and process."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return url, nginx.start(OUT / "nginx-http-client", NGINX_SERVER.format(port=port), url + "/")


async def tight_loop(send: Send, concurrency: int, seconds: float) -> tuple[int, int, float]:
    """Requests answered 200 in `seconds` with `concurrency` senders, the failures, and
    the CPU seconds this process spent."""
    loop = asyncio.get_running_loop()
    stop_at = loop.time() + seconds
    done = [0, 0]

    async def sender() -> None:
        while loop.time() < stop_at:
            try:
                status = await send()
                done[0 if status == 200 else 1] += 1
            except Exception:
                done[1] += 1

    cpu = time.process_time()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return done[0], done[1], time.process_time() - cpu


async def run_all(url: str, seconds: float, concurrency: int
                  ) -> dict[str, tuple[float, float, int]]:
    loop = asyncio.get_running_loop()
    node = NodeClient("nginx", url, ClientLimits())
    connector = aiohttp.TCPConnector(limit=256, limit_per_host=256, keepalive_timeout=30)
    session = aiohttp.ClientSession(base_url=url, connector=connector, auto_decompress=False,
                                    skip_auto_headers=("User-Agent",))

    async def node_get() -> int:
        return (await node.send("GET", PATH, None, loop.time() + 5.0)).status

    async def node_post() -> int:
        return (await node.send("POST", PATH, BODY, loop.time() + 5.0)).status

    async def aio_get() -> int:
        async with asyncio.timeout(5.0), session.get(PATH) as resp:
            await resp.read()
            return resp.status

    async def aio_post() -> int:
        async with asyncio.timeout(5.0), session.post(
                PATH, data=BODY, headers={"Content-Type": "application/json"}) as resp:
            await resp.read()
            return resp.status

    cases: dict[str, Send] = {"NodeClient GET": node_get, "aiohttp GET": aio_get,
                              "NodeClient POST": node_post, "aiohttp POST": aio_post}
    done = dict.fromkeys(cases, 0)
    failed = dict.fromkeys(cases, 0)
    cpu = dict.fromkeys(cases, 0.0)
    try:
        for send in cases.values():
            await tight_loop(send, concurrency, 0.5)                 # warm-up: connections
        # Interleaved slices, so that load from other processes on the box falls on
        # every case alike.
        for _ in range(ROUNDS):
            for name, send in cases.items():
                ok, errors, cpu_s = await tight_loop(send, concurrency, seconds / ROUNDS)
                done[name] += ok
                failed[name] += errors
                cpu[name] += cpu_s
        print(f"  NodeClient stats: {node.stats()}")
    finally:
        await node.close()
        await session.close()
    results = {name: (done[name] / seconds, 1e6 * cpu[name] / max(done[name], 1), failed[name])
               for name in cases}
    for name, (rate, us, errors) in results.items():
        print(f"  {name:16} {rate:9.0f} req/s  {us:6.1f} CPU µs/request  failed {errors}")
    return results


def wrk_rate(url: str, seconds: float, concurrency: int) -> float | None:
    """wrk's requests/s on the same URL (None without wrk or without a figure)."""
    exe = shutil.which("wrk")
    if exe is None:
        return None
    rps = float(wrk.run(exe, url + PATH, seconds, concurrency, None)["rps"])
    return None if math.isnan(rps) else rps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    if not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists():
        print("nginx is not installed: apt-get install nginx-light", file=sys.stderr)
        return 2
    url, proc = start_nginx()
    try:
        print(f"{args.concurrency} senders, {args.seconds:g} s each, against nginx `return 200`")
        res = uvloop.run(run_all(url, args.seconds, args.concurrency))
        time.sleep(0.5)
        wrk_rps = wrk_rate(url, args.seconds, args.concurrency)
    finally:
        nginx.stop(proc)
    for method in ("GET", "POST"):
        node, aio = res[f"NodeClient {method}"], res[f"aiohttp {method}"]
        print(f"{method}: NodeClient / aiohttp = {node[0] / aio[0]:.2f}x the rate, "
              f"{aio[1] / node[1]:.2f}x less CPU per request")
    if wrk_rps is not None:
        print(f"wrk alone (C, -t1 -c{args.concurrency}): {wrk_rps:.0f} req/s; NodeClient GET is "
              f"{res['NodeClient GET'][0] / wrk_rps:.3f}x of it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
