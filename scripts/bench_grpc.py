"""gRPC Predict through the proxy vs straight to one worker, plus the proxy's footprint.

    python scripts/bench_grpc.py [--calls 3000] [--concurrency 16] [--max-seconds 30]

Starts one worker (half_plus_two from tests/data/models, no delay) and one proxy
(`tfserving-lb serve`, cache off, that worker as its only node) on free
127.0.0.1 ports, then runs the same bounded load (distinct inputs, one client
channel) at the worker and at the proxy, side by side, and prints:
proxy start-up time (process start -> gRPC and REST ports answering), idle RSS
of the proxy, requests/s direct and through the proxy, and their ratio.

The edge: the same load through nginx `grpc_pass` (h2c, and TLS with http2) as
the peer, through the proxy with `listen.tls` (a certificate made by the run,
harness/certs.py; one channel: one handshake), and through the proxy with an API
key on every call and a local rate limit that refuses none; it prints the TLS
ratio to nginx TLS and the proxy's CPU per call (user + system from /proc)
with the key and rate limit vs without. Everything it starts is stopped at the
end. Run it under the exclusive lock (COMMON.md).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.certs import CA
from harness.grpcwire import PREDICT, predict_bytes
from harness.procs import Proc, free_port, wait_until
from harness.proxy import ProxyProc
from harness.usage import cpu_seconds, rss_mb
from harness.workers import TEST_MODELS, start_workers
from scripts.benchenv import Bench


def channel_to(target: str, ca: bytes | None) -> grpc.aio.Channel:
    if ca is None:
        return grpc.aio.insecure_channel(target)
    return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(ca),
                                   options=[("grpc.ssl_target_name_override", "localhost")])


async def load(target: str, calls: int, concurrency: int, max_s: float,
               ca: bytes | None = None, metadata: tuple[tuple[str, str], ...] = ()) -> float:
    """Requests/s of `calls` predicts (or as many as fit in `max_s`) over one channel
    (TLS when `ca` is given), with `metadata` on every call."""
    done = 0
    queue = iter(range(calls))
    stop_at = time.monotonic() + max_s
    async with channel_to(target, ca) as channel:
        call = channel.unary_unary(PREDICT)
        await call(predict_bytes("half_plus_two", -1.0), timeout=10,
                   metadata=metadata)                                       # connect

        async def client() -> None:
            nonlocal done
            for i in queue:
                if time.monotonic() > stop_at:
                    return
                await call(predict_bytes("half_plus_two", float(i)), timeout=10,
                           metadata=metadata)
                done += 1
        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(client() for _ in range(concurrency))),
                               max_s + 10)
        return done / (time.perf_counter() - start)


def start_proxy(log_dir: Path, rest_url: str, grpc_addr: str, name: str = "bench-proxy",
                tls: dict[str, str] | None = None,
                **sections: Any) -> tuple[Proc, str, float]:
    """A proxy with a gRPC front before the worker (cache none): its process, its
    gRPC address and the seconds from its start to its node seen healthy."""
    start = time.monotonic()
    proxy = ProxyProc(log_dir, [{"name": "w", "rest": rest_url, "grpc": grpc_addr}], name=name,
                      grpc=True, tls=tls, poll_s=0.01, cache={"backend": "none"}, **sections)
    wait_until(lambda: all(n["healthy"] for n in proxy.stats()["nodes"]), 30.0,
               "proxy's node healthy", interval=0.01)
    assert proxy.grpc is not None
    return proxy.proc, proxy.grpc, time.monotonic() - start


NGINX_GRPC = """
    server {{
        listen 127.0.0.1:{port} {listen};
        listen 127.0.0.1:{ping};
        {tls}
        location = /ping {{ return 200 "ok"; }}
        location / {{ grpc_pass grpc://{node}; }}
    }}
"""


def start_nginx_grpc(bench: Bench, node: str, tls: dict[str, str] | None) -> str:
    """nginx `grpc_pass` to the worker: h2c, or TLS with http2 (the pair of `tls`)."""
    port, ping = free_port(), free_port()
    extra = (f"ssl_certificate {tls['cert']}; ssl_certificate_key {tls['key']}; "
             "ssl_protocols TLSv1.2 TLSv1.3;") if tls else ""
    conf = NGINX_GRPC.format(port=port, ping=ping, node=node, tls=extra,
                             listen="ssl http2" if tls else "http2")
    bench.start_nginx(f"grpc-{'tls' if tls else 'h2c'}", conf, f"http://127.0.0.1:{ping}/ping")
    return f"127.0.0.1:{port}"


async def measured(proc: Proc | None, target: str, run: tuple[int, int, float],
                   ca: bytes | None = None,
                   metadata: tuple[tuple[str, str], ...] = ()) -> tuple[float, float]:
    """(requests/s, the proxy's CPU µs per call: NaN without a proxy process)."""
    await load(target, 200, run[1], 10, ca, metadata)                     # warm up
    cpu = cpu_seconds(proc.pid) if proc else 0.0
    t0 = time.perf_counter()
    rps = await load(target, *run, ca, metadata)
    calls = rps * (time.perf_counter() - t0)
    used = (cpu_seconds(proc.pid) - cpu) / calls * 1e6 if proc and calls else float("nan")
    return rps, used


def edge(log_dir: Path, url: str, grpc_addr: str, args: argparse.Namespace) -> None:
    """The TLS and API-key rows (see the module docstring)."""
    pair = CA(log_dir / "tls", "bench-ca").issue("front", "localhost")
    tls = {"cert": str(pair.cert), "key": str(pair.key)}
    ca = (log_dir / "tls" / "bench-ca.pem").read_bytes()      # the clients trust the CA
    key = "bench-" + "k" * 26
    auth = {"keys": [{"id": "bench", "sha256": hashlib.sha256(key.encode()).hexdigest(),
                      "limits": {"requests_per_s": 1e9}}]}
    bench = Bench()
    procs: list[Proc] = []
    try:
        plain, plain_at, _ = start_proxy(log_dir, url, grpc_addr, "edge-plain")
        tlsp, tls_at, _ = start_proxy(log_dir, url, grpc_addr, "edge-tls", tls=tls)
        authp, auth_at, _ = start_proxy(log_dir, url, grpc_addr, "edge-auth", auth=auth)
        procs += [plain, tlsp, authp]
        nginx_h2c = start_nginx_grpc(bench, grpc_addr, None)
        nginx_tls = start_nginx_grpc(bench, grpc_addr, tls)
        run = (args.calls, args.concurrency, args.max_seconds)
        rows = {
            "nginx grpc_pass (h2c)": asyncio.run(measured(None, nginx_h2c, run)),
            "tfserving-lb": asyncio.run(measured(plain, plain_at, run)),
            "nginx grpc_pass, TLS": asyncio.run(measured(None, nginx_tls, run, ca)),
            "tfserving-lb, TLS": asyncio.run(measured(tlsp, tls_at, run, ca)),
            "tfserving-lb, key + rate limit": asyncio.run(measured(
                authp, auth_at, run, None, (("x-api-key", key),))),
        }
    finally:
        for proc in procs:
            proc.stop()
        bench.close()
    print("\ngRPC, the edge (one channel; TLS: one handshake):")
    for name, (rps, cpu) in rows.items():
        print(f"  {name:32} {rps:7.0f} req/s" + (f"  proxy CPU {cpu:6.1f} us/call"
                                                  if cpu == cpu else ""))
    print(f"  proxy / nginx, h2c: {rows['tfserving-lb'][0] / rows['nginx grpc_pass (h2c)'][0]:.2f}"
          f"; TLS: {rows['tfserving-lb, TLS'][0] / rows['nginx grpc_pass, TLS'][0]:.2f}")
    print(f"  proxy CPU per call with key + rate limit: "
          f"{rows['tfserving-lb, key + rate limit'][1] / rows['tfserving-lb'][1]:.3f}x without")


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
        proxy.stop()
        proxy = None
        edge(log_dir, url, worker.grpc, args)
    finally:
        if proxy is not None:
            proxy.stop()
        worker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
