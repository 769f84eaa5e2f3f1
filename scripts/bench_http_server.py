"""The lean HTTP server against nginx: requests/s of a trivial reply to a ~9 KB POST.

    .venv/bin/python scripts/bench_http_server.py [--duration 5] [--rounds 1] [--no-pin] [--get]

Starts nginx (`worker_processes 1`, a `return 200` location) and `lb.http.server`
(`HttpServer` on uvloop with an app that answers synchronously), each a single
process on a free 127.0.0.1 port, and drives each in turn with
`wrk -t1 -c32 -d<duration>s` posting the same 9 KB JSON body (`--get`: GET / with no
body). By default the server
under test is pinned to CPU 1 and wrk to CPU 0, so both servers get one core each.
Prints each rate and the ratio lean/nginx, and each server's CPU time per request
(user + system, from /proc: less disturbed than the rate when other work shares the
machine); writes bench-out/bench_http_server.json.
Needs `nginx` and `wrk` (apt-get install nginx-light wrk). Figures are only
comparable within one run on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import nginx
from harness import wrk as harness_wrk
from harness.procs import die_with_us, free_port
from harness.usage import tree_cpu_seconds
from scripts.benchenv import OUT

REPLY = b'{"predictions": [2.5]}'
NGINX_SERVER = """
    server {{
        listen 127.0.0.1:{port} reuseport;
        location / {{
            default_type application/json;
            return 200 '{reply}';
        }}
    }}
"""
WRK_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[{body}]==]
"""
# (a level-2 long bracket: the body itself ends in "]]", which would close "[[")


def body_9kb() -> str:
    row = ", ".join(f"{0.001 * i:.3f}" for i in range(1300))
    return '{"instances": [[' + row + "]]}"


def serve(port: int) -> None:
    """The lean server with an app that answers at once (run in a child process)."""
    import uvloop

    from lb.http.server import Exchange, HttpServer, ServerLimits

    class Trivial:
        def handle(self, exchange: Exchange) -> None:
            exchange.respond(200, REPLY)

    async def main() -> None:
        server = HttpServer(Trivial(), ServerLimits())
        await server.start("127.0.0.1", port)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.shutdown(1.0)

    uvloop.run(main())


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout}s")


def wrk(port: int, lua: Path | None, duration: int, pin: bool) -> tuple[float, int]:
    """Requests/s and the number of requests of one wrk run (GET / without a script)."""
    res = harness_wrk.run("wrk", f"http://127.0.0.1:{port}/", duration, 32, lua,
                          prefix=["taskset", "-c", "0"] if pin else ())
    if res["stderr"]:                   # e.g. a Lua error: wrk then sends plain GETs
        raise RuntimeError(f"wrk: {res['stderr']}")
    if res["non_2xx"] or res["socket_errors"]:
        print(res, file=sys.stderr)
    if res["raw"]:
        raise RuntimeError(f"no Requests/sec in wrk output:\n{res['raw']}")
    return float(res["rps"]), int(res["requests"])


def run_one(kind: str, tmp: Path, lua: Path | None, duration: int, pin: bool
            ) -> tuple[float, float]:
    """Requests/s and CPU microseconds per request of one server."""
    port = free_port()
    pin_to = ["taskset", "-c", "1"] if pin else []
    if kind == "nginx":
        proc = nginx.start(tmp / "nginx", NGINX_SERVER.format(port=port, reply=REPLY.decode()),
                           f"http://127.0.0.1:{port}/", wrapper=pin_to)
    else:
        proc = subprocess.Popen([*pin_to, sys.executable, __file__, "--serve", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                preexec_fn=die_with_us())
    try:
        wait_port(port, proc)
        wrk(port, lua, 1, pin)          # warm-up: connections, caches, page faults
        cpu0 = tree_cpu_seconds(proc.pid)
        rate, count = wrk(port, lua, duration, pin)
        return rate, (tree_cpu_seconds(proc.pid) - cpu0) / count * 1e6
    finally:
        if kind == "nginx":
            nginx.stop(proc)
        else:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=5, help="seconds per wrk run (max 30)")
    ap.add_argument("--rounds", type=int, default=1, help="nginx/lean pairs (max 5)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin to CPUs 0 and 1")
    ap.add_argument("--get", action="store_true", help="GET / without a body instead")
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return
    for tool in ("wrk", "nginx"):
        if not (shutil.which(tool) or Path(f"/usr/sbin/{tool}").exists()):
            sys.exit(f"{tool} is not installed: apt-get install nginx-light wrk")
    duration, rounds = min(args.duration, 30), min(args.rounds, 5)
    pin = not args.no_pin and len(os.sched_getaffinity(0)) >= 2 and bool(shutil.which("taskset"))
    rates: dict[str, list[float]] = {"nginx": [], "lean": []}
    cpu_us: dict[str, list[float]] = {"nginx": [], "lean": []}
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmpdir:
        tmp = Path(tmpdir)
        lua: Path | None = None
        if not args.get:
            lua = tmp / "post.lua"
            lua.write_text(WRK_LUA.format(body=body_9kb()))
        for _ in range(rounds):
            for kind in ("nginx", "lean"):
                rate, cpu = run_one(kind, tmp, lua, duration, pin)
                rates[kind].append(rate)
                cpu_us[kind].append(cpu)
                print(f"{kind:6s} {rate:10.0f} req/s  {cpu:6.2f} us CPU/request", flush=True)
    nginx, lean = max(rates["nginx"]), max(rates["lean"])
    ratio = lean / nginx
    cpu_ratio = min(cpu_us["nginx"]) / min(cpu_us["lean"])
    load = os.getloadavg()[0]
    what = "GET" if args.get else "9 KB POST"
    print(f"lean/nginx = {ratio:.2f} by rate, {cpu_ratio:.2f} by CPU per request  (best of "
          f"{rounds}; wrk -t1 -c32 -d{duration}s, {what}, pinned={pin}, 1-min load "
          f"average at the end {load:.2f})")
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_http_server.json").write_text(json.dumps(
        {"rates": rates, "cpu_us_per_request": cpu_us, "ratio": ratio,
         "cpu_ratio": cpu_ratio, "duration_s": duration, "pinned": pin, "request": what,
         "loadavg_1m": load}, indent=2))


if __name__ == "__main__":
    main()
