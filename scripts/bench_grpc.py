"""gRPC Predict through the proxy vs straight to one worker, plus the proxy's footprint.

    python scripts/bench_grpc.py [--calls 3000] [--concurrency 16] [--max-seconds 30]

Starts one worker (half_plus_two from tests/data/models, no delay) and one proxy
(`tfserving-lb serve`, cache off, that worker as its only node) on free
127.0.0.1 ports, then runs the same bounded load (distinct inputs, one client
channel) at the worker and at the proxy, side by side, and prints:
proxy start-up time (process start -> gRPC and REST ports answering), idle RSS
of the proxy, requests/s direct and through the proxy, and their ratio.
Everything it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import grpc.aio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.lb.grpcload import PREDICT, predict_bytes
from tests.procs import (
    TEST_MODELS,
    Proc,
    free_port,
    http,
    lb_cmd,
    start_workers,
    tcp_open,
    wait_until,
    write_config,
)


async def load(target: str, calls: int, concurrency: int, max_s: float) -> float:
    """Requests/s of `calls` predicts (or as many as fit in `max_s`) over one channel."""
    done = 0
    queue = iter(range(calls))
    stop_at = time.monotonic() + max_s
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(PREDICT)
        await call(predict_bytes("half_plus_two", -1.0), timeout=10)       # connect

        async def client() -> None:
            nonlocal done
            for i in queue:
                if time.monotonic() > stop_at:
                    return
                await call(predict_bytes("half_plus_two", float(i)), timeout=10)
                done += 1
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(client() for _ in range(concurrency))),
                               max_s + 10)
        return done / (time.perf_counter() - start)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_proxy(log_dir: Path, rest_url: str, grpc_addr: str) -> tuple[Proc, str, float]:
    rest, grpc_port, admin = free_port(), free_port(), free_port()
    cfg = write_config(log_dir / "bench-proxy.yaml", {
        "listen": {"rest": f"127.0.0.1:{rest}", "grpc": f"127.0.0.1:{grpc_port}",
                   "admin": f"127.0.0.1:{admin}"},
        "nodes": [{"name": "w", "rest": rest_url, "grpc": grpc_addr}],
        "cache": {"backend": "none"},
    })
    start = time.monotonic()
    proc = Proc("bench-proxy", lb_cmd("serve", "--config", str(cfg)), log_dir)
    wait_until(lambda: tcp_open(f"127.0.0.1:{grpc_port}")
               and http("GET", f"http://127.0.0.1:{rest}/v1/models/half_plus_two")[0] == 200,
               30.0, "proxy ports", interval=0.01)
    return proc, f"127.0.0.1:{grpc_port}", time.monotonic() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-seconds", type=float, default=30.0)
    args = ap.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="bench-grpc-"))
    models = {"half_plus_two": TEST_MODELS / "half_plus_two_cpu"}
    (worker, url), = start_workers(log_dir, [{"models": models, "name": "bench-worker"}])
    proxy = None
    try:
        assert worker.grpc
        proxy, front, startup_s = start_proxy(log_dir, url, worker.grpc)
        time.sleep(3.0)
        idle = rss_mb(proxy.pid)
        run = (args.calls, args.concurrency, args.max_seconds)
        asyncio.run(load(worker.grpc, 200, args.concurrency, 10))           # warm up both
        asyncio.run(load(front, 200, args.concurrency, 10))
        direct = asyncio.run(load(worker.grpc, *run))
        through = asyncio.run(load(front, *run))
        print(f"proxy start-up (process start -> gRPC+REST answering): {startup_s:.2f} s")
        print(f"proxy idle RSS: {idle:.1f} MB; after load: {rss_mb(proxy.pid):.1f} MB")
        print(f"gRPC Predict direct to worker: {direct:.0f} req/s")
        print(f"gRPC Predict through proxy:    {through:.0f} req/s")
        print(f"ratio proxy/direct: {through / direct:.2f} "
              f"(concurrency {args.concurrency}, one channel, cache off)")
    finally:
        if proxy is not None:
            proxy.stop()
        worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
