"""Policies side by side: tfserving-lb vs nginx in front of the same workers.

    .venv/bin/python scripts/bench_policy.py [--rate 200] [--seconds 15]

Starts three half_plus_two workers (tests/data/models), two at 10 ms and one
deliberately 4x slower (40 ms), then puts each balancer in front of them in
turn and offers the same open-loop load (distinct inputs, no caching):
nginx least_conn, nginx round robin (the Debian package, one worker process,
upstream keep-alive), and tfserving-lb with least_load, least_conn and
round_robin (one process, cache off). A second pass with three equal workers
shows the proxies' own overhead. Prints p50/p99 and the slow node's share,
with ratios against nginx least_conn from the same run. 127.0.0.1 only;
bounded in requests and time. Needs nginx (`apt-get install nginx-light`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts.benchenv import OUT, Bench, _wait_http, free_port
from scripts.loadgen import open_loop

MODEL = "half_plus_two"
TEST_MODELS = Path(__file__).resolve().parent.parent / "tests" / "data" / "models"

NGINX_CONF = """
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
    upstream tf {{
        {method}
        {servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://tf;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            add_header X-Node $upstream_addr always;
        }}
    }}
}}
"""


def start_nginx(bench: Bench, name: str, ports: list[int], method: str
                ) -> tuple[str, subprocess.Popen[bytes]]:
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix = OUT / f"nginx-{name}"
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir(parents=True)
    prefix.chmod(0o777)
    port = free_port()
    servers = "\n        ".join(f"server 127.0.0.1:{p};" for p in ports)
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, method=method, servers=servers, port=port))
    proc = subprocess.Popen([exe, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    bench.others.append(proc)
    _wait_http(f"http://127.0.0.1:{port}/v1/models/{MODEL}", 15.0)
    return f"http://127.0.0.1:{port}", proc


def body(i: int) -> bytes:
    return orjson.dumps({"instances": [float(i)]})


def measure(url: str, rate: float, seconds: float, slow: set[str]) -> dict[str, Any]:
    asyncio.run(open_loop(f"{url}/v1/models/{MODEL}:predict", body, rate=rate,
                          count=int(rate * 2)))                       # warm-up
    res = asyncio.run(open_loop(f"{url}/v1/models/{MODEL}:predict", body, rate=rate,
                                count=int(rate * seconds), max_duration_s=seconds + 5))
    out = res.summary()
    total = sum(res.nodes.values()) or 1
    out["slow_share"] = round(sum(v for k, v in res.nodes.items() if k in slow) / total, 4)
    return out


def run_pass(bench: Bench, delays: list[float], rate: float, seconds: float) -> dict[str, Any]:
    ports = [free_port() for _ in delays]
    from backends.pool import start_pool, wait_available
    procs = start_pool(MODEL, TEST_MODELS / "half_plus_two_cpu", ports, delays, log_dir=bench.logs)
    bench.workers += procs
    for p in ports:
        wait_available(f"http://127.0.0.1:{p}", MODEL, timeout=120.0)
    slowest = max(delays)
    slow_ports = {p for p, d in zip(ports, delays, strict=True) if d == slowest and d > min(delays)}
    slow = {f"127.0.0.1:{p}" for p in slow_ports} | {f"n{i}" for i, p in enumerate(ports)
                                                       if p in slow_ports}
    nodes = [{"name": f"n{i}", "rest": f"http://127.0.0.1:{p}"} for i, p in enumerate(ports)]
    results: dict[str, Any] = {}
    for name, method in (("nginx least_conn", "least_conn;"), ("nginx round robin", "")):
        url, proc = start_nginx(bench, name.split()[1], ports, method)
        results[name] = measure(url, rate, seconds, slow)
        bench.stop(proc)
    for policy in ("least_load", "least_conn", "round_robin"):
        url, _admin, proc = bench.start_proxy(f"policy-{policy}", nodes,
                                              policy={"name": policy},
                                              cache={"backend": "none"})
        time.sleep(1.0)
        results[f"tfserving-lb {policy}"] = measure(url, rate, seconds, slow)
        bench.stop(proc)
    for proc in procs:
        proc.terminate()
    return results


def report(title: str, results: dict[str, Any]) -> None:
    base = results["nginx least_conn"]
    print(f"\n{title}")
    print(f"{'balancer':28} {'p50 ms':>8} {'p99 ms':>8} {'p99 vs nginx lc':>16} "
          f"{'slow share':>10} {'failed':>6}")
    for name, r in results.items():
        ratio = r["p99_ms"] / base["p99_ms"] if base["p99_ms"] else float("nan")
        print(f"{name:28} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {ratio:15.2f}x "
              f"{r['slow_share']:10.3f} {r['failed']:6d}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    if not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists():
        print("nginx is not installed: apt-get install nginx-light", file=sys.stderr)
        return 2
    bench = Bench()
    try:
        mixed = run_pass(bench, [10.0, 10.0, 40.0], args.rate, args.seconds)
        equal = run_pass(bench, [10.0, 10.0, 10.0], args.rate, args.seconds)
    finally:
        bench.close()
    (OUT / "bench_policy.json").write_text(json.dumps({"mixed": mixed, "equal": equal},
                                                      indent=1))
    report(f"one node 4x slower (10/10/40 ms), open loop {args.rate:.0f} req/s", mixed)
    report(f"equal nodes (10 ms), open loop {args.rate:.0f} req/s", equal)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
