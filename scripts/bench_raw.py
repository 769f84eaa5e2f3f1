"""The data path against real peers: nginx, a naive aiohttp proxy, tfserving-lb.

    .venv/bin/python scripts/bench_raw.py [--quick] [--seconds 8] [--connections 32] [--rounds 3]
        [--only SUBSTR ...] [--baseline DIR]

Three nginx `return 200` stubs (one process each, worker_processes 1) speak
enough of TF Serving's REST API: model status (version 1 AVAILABLE), minimal
metadata and a fixed 10-float prediction. In front of them, measured one after
the other: nginx `proxy_pass` least_conn with upstream keep-alive, a naive aiohttp
proxy (scripts/naive_proxy.py), a lean httptools + uvloop proxy without
features (scripts/lean_proxy.py: Python's ceiling on this machine), tfserving-lb
with cache none (its compiled data path, lb/native.py: it refuses to run
without it), the same run as Python (TFSERVING_LB_PURE=1), with the memory
cache answering every request from the cache (X-Cache: HIT), and
`serve --workers 2` with cache none; hedging off (nginx does not hedge).
TLS rows: nginx with TLS and tfserving-lb with `listen.tls` (a certificate
made by the run, harness/certs.py; wrk keeps its connections, so each makes one
handshake), nodes in plaintext; and tfserving-lb with an API key on every
request and a local rate limit that refuses none (`auth`). For the proxy's own
rows the CPU it used per request is measured too (/proc: user + system), and
the report ends with the edge's ratios: TLS vs nginx TLS, and CPU per request
with the key and rate limit vs without.
All contenders are started and checked first (200 and the right body); then,
in interleaved rounds (3; a burst of someone else's load hits one round of
each rather than one contender), each is warmed up 1 s and loaded by wrk,
closed loop, `-t1 -c32 -d8s`, with GET model status and POST :predict of one
784-float row (~6 KB); the median round is reported with the range. Prints
requests/s and the ratio to nginx from the same run, for tfserving-lb's rows the
CPU time its processes (the supervisor and its workers included) spent per
request during the measured runs (steadier than requests/s on a shared box), the
non-2xx and socket errors wrk saw (a contender with errors is flagged), and writes
bench-out/bench_raw.{json,png}. `--only` keeps the rows whose name holds one of
the given strings (nginx's row always runs: it is the ratios' base);
`--baseline DIR` adds the `--workers 2` row of another checkout of
tfserving-lb (its data path compiled there), so a change is measured
before/after in the same run; `--lb NAME=EXE` adds a row run by another
install's console script (e.g. a fresh `pip install .` venv's tfserving-lb).
Installs nginx-light and wrk with apt-get when missing. 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import wrk
from harness.procs import ensure_tool, free_port, wait_http
from harness.usage import tree_cpu_seconds
from lb import native
from scripts.benchenv import (
    OUT,
    Bench,
    http_get,
)
from scripts.charts import NOISE_NOTE, bar_chart

MODEL = "mnist"
PREDICTION = {"predictions": [[0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.55]]}
STATUS = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                    "status": {"error_code": "OK", "error_message": ""}}]}
METADATA = {"model_spec": {"name": MODEL, "signature_name": "", "version": "1"},
            "metadata": {"signature_def": {"signature_def": {"serving_default": {
                "inputs": {"x": {"dtype": "DT_FLOAT", "name": "x:0", "tensor_shape": {
                    "dim": [{"size": "-1", "name": ""}, {"size": "784", "name": ""}],
                    "unknown_rank": False}}},
                "outputs": {"y": {"dtype": "DT_FLOAT", "name": "y:0", "tensor_shape": {
                    "dim": [{"size": "-1", "name": ""}, {"size": "10", "name": ""}],
                    "unknown_rank": False}}},
                "method_name": "tensorflow/serving/predict"}}}}}

# nginx `return` discards a request body by reading it off the socket, so the
# connection stays usable for the next request (checked under wrk: no errors).
STUB = """
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        default_type application/json;
        location = /v1/models/{model} {{ return 200 '{status}'; }}
        location = /v1/models/{model}/metadata {{ return 200 '{metadata}'; }}
        location = /v1/models/{model}:predict {{ return 200 '{prediction}'; }}
        location / {{ return 404 '{{"error": "not found"}}'; }}
    }}
"""

FRONT = """
    upstream tf {{
        least_conn;
{servers}
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        client_body_buffer_size 64k;
        location / {{
            proxy_pass http://tf;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""



# The same front with TLS (ssl_session_cache and tickets: sessions are resumed).
FRONT_TLS = """
    upstream tf {{
        least_conn;
{servers}
        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
        client_body_buffer_size 64k;
        location / {{
            proxy_pass http://tf;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""
# Made by `run` (harness.certs): the certificate both TLS fronts serve.
TLS_FILES: dict[str, str] = {}
BENCH_KEY = "bench-" + "k" * 26
# Per contender URL: the proxy's pid (CPU per request) and headers wrk sends.
PIDS: dict[str, int] = {}
HEADERS: dict[str, dict[str, str]] = {}


def make_certs() -> None:
    from harness.certs import CA

    pair = CA(OUT / "tls", "bench-ca").issue("front", "localhost")
    TLS_FILES.update(cert=str(pair.cert), key=str(pair.key))


def predict_body() -> bytes:
    rng = random.Random(784)
    return orjson.dumps({"instances": [[round(rng.random(), 4) for _ in range(784)]]})


def start_stubs(bench: Bench) -> list[int]:
    ports = [free_port() for _ in range(3)]
    for port in ports:
        conf = STUB.format(port=port, model=MODEL, status=orjson.dumps(STATUS).decode(),
                           metadata=orjson.dumps(METADATA).decode(),
                           prediction=orjson.dumps(PREDICTION).decode())
        bench.start_nginx(f"stub-{port}", conf, f"http://127.0.0.1:{port}/v1/models/{MODEL}")
    return ports


def start_nginx_front(bench: Bench, ports: list[int], tls: bool = False) -> str:
    port = free_port()
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in ports)
    scheme = "https" if tls else "http"
    conf = (FRONT_TLS.format(servers=servers, port=port, **TLS_FILES) if tls
            else FRONT.format(servers=servers, port=port))
    bench.start_nginx("front-tls" if tls else "front", conf,
                      f"{scheme}://127.0.0.1:{port}/v1/models/{MODEL}")
    return f"{scheme}://127.0.0.1:{port}"


def start_script(bench: Bench, ports: list[int], script: str) -> str:
    """A peer proxy of scripts/ (naive_proxy.py, lean_proxy.py) in front of the stubs."""
    port = free_port()
    log = open(bench.logs / f"{Path(script).stem}.log", "wb")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name(script)),
                             "--port", str(port), *(f"http://127.0.0.1:{p}" for p in ports)],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    bench.others.append(proc)
    wait_http(f"http://127.0.0.1:{port}/v1/models/{MODEL}", 15.0)
    return f"http://127.0.0.1:{port}"


def start_lb(bench: Bench, ports: list[int], cache: str, workers: int = 1,
             pure: bool = False, exe: str | None = None, label: str = "",
             source: Path | None = None, cache_extra: dict[str, Any] | None = None,
             tls: bool = False, auth: bool = False) -> str:
    """tfserving-lb in front of the stubs; `pure`: its data path run as Python, not the
    compiled build (lb/native.py), which must then be present and in use. `exe`:
    another install's console script (--lb NAME=EXE, NAME is `label`); `source`: the
    checkout to run (default this one). `tls`: the REST front over TLS; `auth`: one
    API key with a local rate limit far above the load (every request is checked
    and charged, none refused), sent by wrk."""
    nodes = [{"name": f"n{i}", "rest": f"http://127.0.0.1:{p}"} for i, p in enumerate(ports)]
    sections: dict[str, Any] = {}
    if auth:
        sections["auth"] = {"keys": [{
            "id": "bench", "sha256": hashlib.sha256(BENCH_KEY.encode()).hexdigest(),
            "models": [MODEL], "limits": {"requests_per_s": 1e9}}]}
    backend = cache.removesuffix(" cache").replace("cache none", "none")
    name = (f"raw-{backend}-w{workers}{'-pure' if pure else ''}{'-base' if source else ''}"
            f"{'-tls' if tls else ''}{'-auth' if auth else ''}{label}")
    url, admin, proc = bench.start_proxy(
        name, nodes, workers=workers, env={native.PURE_ENV: "1"} if pure else {}, exe=exe,
        cache={"backend": backend, **(cache_extra or {})}, hedge={"enabled": False},
        policy={"name": "least_load"}, source=source, tls=dict(TLS_FILES) if tls else None,
        **sections)
    kind = orjson.loads(http_get(f"{admin}/stats")[2])["data_path"]
    if kind != ("python" if pure else "compiled"):
        raise RuntimeError(f"data path {kind}: run scripts/build_native.py")
    PIDS[url] = proc.pid
    if auth:
        HEADERS[url] = {"x-api-key": BENCH_KEY}
    return url


def verify(url: str, body: bytes, want_hit: bool) -> list[str]:
    """What is wrong with this contender's answers (empty: nothing)."""
    problems = []
    extra = HEADERS.get(url, {})
    status, _h, got = http_get(f"{url}/v1/models/{MODEL}", headers=extra)
    if status != 200 or orjson.loads(got) != STATUS:
        problems.append(f"GET status: {status} {got[:80]!r}")
    if extra and http_get(f"{url}/v1/models/{MODEL}")[0] != 401:
        problems.append("GET without the API key: not 401")
    predict = f"{url}/v1/models/{MODEL}:predict"
    headers = {"Content-Type": "application/json", **extra}
    for _ in range(2 if want_hit else 1):
        status, hdrs, got = http_get(predict, method="POST", body=body, headers=headers)
    if status != 200 or orjson.loads(got) != PREDICTION:
        problems.append(f"POST predict: {status} {got[:80]!r}")
    if want_hit and hdrs.get("X-Cache") != "HIT":
        problems.append(f"POST predict: X-Cache {hdrs.get('X-Cache')!r}, not HIT")
    return problems


def measure(exe: str, url: str, args: argparse.Namespace, lua: Path,
            get: bool) -> dict[str, Any]:
    if url in DISTINCT_URLS:              # --distinct rows: every body new
        lua = DISTINCT_URLS[url]
    row: dict[str, Any] = {}
    runs: list[tuple[str, str, Path | None]] = []
    if get:
        runs.append(("GET", f"{url}/v1/models/{MODEL}", None))
    runs.append(("POST", f"{url}/v1/models/{MODEL}:predict", lua))
    headers = HEADERS.get(url)
    pid = PIDS.get(url)
    for verb, target, script in runs:
        wrk.run(exe, target, args.warmup, args.connections, script, headers)
        cpu0 = tree_cpu_seconds(pid) if pid else 0.0
        row[verb] = wrk.run(exe, target, args.seconds, args.connections, script, headers)
        served = row[verb].get("requests") or row[verb]["rps"] * max(1, round(args.seconds))
        if pid and served > 0:          # all the proxy's processes: user + system CPU
            row[verb]["cpu_us"] = round((tree_cpu_seconds(pid) - cpu0) / served * 1e6, 2)
    return row


DISTINCT_URLS: dict[str, Path] = {}   # url -> the distinct-bodies script of its row
NGINX_ROW = "nginx proxy_pass least_conn, keep-alive"
WORKERS_ROW = "tfserving-lb --workers 2, cache none"
NGINX_TLS_ROW = "nginx TLS, proxy_pass least_conn"
LB_ROW = "tfserving-lb, cache none"
LB_TLS_ROW = "tfserving-lb TLS, cache none"
LB_AUTH_ROW = "tfserving-lb, cache none, key + rate limit"
STUB_ROW = "(reference) one nginx stub, no proxy"
Contender = tuple[str, Callable[[Bench, list[int]], str], bool, bool]   # name, start, GET?, HIT?

CONTENDERS: list[Contender] = [
    (NGINX_ROW, start_nginx_front, True, False),
    ("naive aiohttp proxy (30 lines, uvloop)",
     lambda b, p: start_script(b, p, "naive_proxy.py"), True, False),
    # Not a product: how far Python on uvloop goes when a proxy does nothing else.
    ("lean httptools proxy (no features)", lambda b, p: start_script(b, p, "lean_proxy.py"),
     True, False),
    (LB_ROW, lambda b, p: start_lb(b, p, "none"), True, False),
    # TLS on the client side (wrk keeps its connections: one handshake each), nodes plain
    (NGINX_TLS_ROW, lambda b, p: start_nginx_front(b, p, tls=True), True, False),
    (LB_TLS_ROW, lambda b, p: start_lb(b, p, "none", tls=True), True, False),
    # an API key on every request and a local rate limit that refuses none
    (LB_AUTH_ROW, lambda b, p: start_lb(b, p, "none", auth=True), True, False),
    # The same code run as Python (TFSERVING_LB_PURE=1): what the compiled build gains.
    ("tfserving-lb, cache none, as Python", lambda b, p: start_lb(b, p, "none", pure=True),
     True, False),
    ("tfserving-lb, memory cache, all HIT", lambda b, p: start_lb(b, p, "memory"), False, True),
    (WORKERS_ROW, lambda b, p: start_lb(b, p, "none", 2), True, False),
    # Not a contender: the ceiling of one backend, to show the stubs are not the limit.
    (STUB_ROW, lambda _b, p: f"http://127.0.0.1:{p[0]}", True, False),
]


def other_installs(specs: list[str]) -> list[Contender]:
    """--lb NAME=EXE: tfserving-lb, cache none, run by another install's console script
    (e.g. a fresh venv's bin/tfserving-lb, to compare install routes in one run)."""
    def starter(name: str, exe: str) -> Callable[[Bench, list[int]], str]:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)  # a file name
        return lambda b, p: start_lb(b, p, "none", exe=exe, label=f"-{safe}")

    rows: list[Contender] = []
    for spec in specs:
        name, _, exe = spec.partition("=")
        rows.append((f"tfserving-lb ({name}), cache none", starter(name, exe), True, False))
    return rows


def distinct_rows(bench_lua: Path) -> list[Contender]:
    """--distinct: cache none, memory and tiered with a new body every request (the
    cheap path: a model whose requests never repeat is bypassed by the adaptive cache
    and must cost what cache none costs). The tiered row starts a private redis."""
    def start(cache: str) -> Callable[[Bench, list[int]], str]:
        def go(b: Bench, p: list[int]) -> str:
            extra = {"redis_url": b.start_redis()} if cache == "tiered" else {}
            url = start_lb(b, p, cache, label="-distinct", cache_extra=extra)
            DISTINCT_URLS[url] = bench_lua
            return url
        return go
    return [(f"tfserving-lb, {c}, distinct bodies", start(c), False, False)
            for c in ("cache none", "memory cache", "tiered cache")]


def contenders(args: argparse.Namespace) -> list[Contender]:
    """CONTENDERS, with other installs' rows (--lb) after the first four, the
    baseline's row after ours, the --distinct rows last, and only the rows asked for."""
    rows = list(CONTENDERS[:4]) + other_installs(args.lb) + list(CONTENDERS[4:])
    if args.distinct:
        rows += distinct_rows(wrk.distinct_script(OUT / "raw_distinct.lua"))
    if args.baseline is not None:
        base: Path = args.baseline.resolve()
        at = next(i for i, c in enumerate(rows) if c[0] == WORKERS_ROW) + 1
        rows.insert(at, (f"{WORKERS_ROW} (baseline)",
                         lambda b, p: start_lb(b, p, "none", 2, source=base), True, False))
    if args.only:
        rows = [c for c in rows if c[0] == NGINX_ROW or any(o in c[0] for o in args.only)]
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    exe = ensure_tool("wrk", "wrk")
    ensure_tool("nginx", "nginx-light")
    body = predict_body()
    body_path = OUT / "raw_predict.json"
    OUT.mkdir(exist_ok=True)
    body_path.write_bytes(body)
    lua = wrk.post_script(OUT / "raw_post.lua", body_path)
    make_certs()
    results: dict[str, Any] = {"body_bytes": len(body), "seconds": args.seconds,
                               "connections": args.connections, "rounds": args.rounds,
                               "rows": {}}
    rows: dict[str, dict[str, Any]] = results["rows"]
    chosen = contenders(args)
    bench = Bench()
    try:
        ports = start_stubs(bench)
        urls: dict[str, str] = {}
        for name, start, _get, hit in chosen:           # all up at once, idle in turn
            try:
                urls[name] = start(bench, ports)
                rows[name] = {"problems": verify(urls[name], body, want_hit=hit), "rounds": []}
            except (RuntimeError, TimeoutError, OSError) as exc:
                rows[name] = {"problems": [f"did not start: {exc}"], "rounds": []}
        # Rounds interleave the contenders, so a burst of someone else's load on
        # this shared box lands on one round of each rather than on one contender.
        for k in range(args.rounds):
            for name, _start, get, _hit in chosen:
                row = rows[name]
                if row["problems"]:
                    continue
                row["rounds"].append(measure(exe, urls[name], args, lua, get))
                row["load1"] = os.getloadavg()[0]
                print(f"  round {k + 1}/{args.rounds} {name}: "
                      f"{summary_line(row['rounds'][-1])}", flush=True)
    finally:
        bench.close()
    for row in rows.values():
        for verb in ("GET", "POST"):
            runs = sorted((r[verb] for r in row["rounds"] if verb in r), key=lambda r: r["rps"])
            if runs:
                cpu = sorted(r["cpu_us"] for r in runs if "cpu_us" in r)
                row[verb] = {**runs[len(runs) // 2], "min_rps": runs[0]["rps"],
                             "max_rps": runs[-1]["rps"],
                             "cpu_us": cpu[len(cpu) // 2] if cpu else None,
                             "cpu_us_range": [cpu[0], cpu[-1]] if cpu else None,
                             "non_2xx": sum(r["non_2xx"] for r in runs),
                             "socket_errors": sum(r["socket_errors"] for r in runs)}
    return results


def summary_line(row: dict[str, Any]) -> str:
    return "  ".join(f"{v} {row[v]['rps']:.0f} rps" for v in ("GET", "POST") if v in row)


def flagged(r: dict[str, Any]) -> bool:
    return bool(r["non_2xx"] > 0 or r["socket_errors"] > 0)


def report(res: dict[str, Any]) -> None:
    rows = res["rows"]
    base = rows[NGINX_ROW]
    print(f"\nwrk -t1 -c{res['connections']} -d{res['seconds']:g}s, closed loop; POST body "
          f"{res['body_bytes']} B (one 784-float row); 3 nginx stubs behind each contender; "
          f"{res['rounds']} interleaved round(s), "
          f"{'the (upper) median shown' if res['rounds'] > 1 else 'one each'}")
    print(f"NOTE: {NOISE_NOTE}")
    loads = " ".join(f"{r['load1']:.1f}" for r in rows.values() if "load1" in r)
    print(f"1-min load average after each row's last round (2 cores): {loads}")
    print(f"{'path, one process unless said':48} {'GET rps':>9} {'POST rps':>9} "
          f"{'GET/nginx':>9} {'POST/nginx':>10}  errors")
    for name, row in rows.items():
        if row.get("problems"):
            print(f"{name:48} FLAGGED: {'; '.join(row['problems'])}")
            continue
        cells, errs = [], []
        for verb in ("GET", "POST"):
            r = row.get(verb)
            cells.append(f"{r['rps']:9.0f}" if r else f"{'—':>9}")
            if r and flagged(r):
                errs.append(f"{verb}: {r['non_2xx']} non-2xx, {r['socket_errors']} socket")
        ratios = [f"{row[v]['rps'] / base[v]['rps']:.3f}" if v in row and v in base else "—"
                  for v in ("GET", "POST")]
        print(f"{name:48} {cells[0]} {cells[1]} {ratios[0]:>9} {ratios[1]:>10}  "
              f"{'FLAGGED ' + '; '.join(errs) if errs else '0'}")
        if res["rounds"] > 1:
            spread = ", ".join(f"{v} {row[v]['min_rps']:.0f}-{row[v]['max_rps']:.0f}"
                               for v in ("GET", "POST") if v in row)
            print(f"{'':48} range over rounds: {spread}")
        cpu = [f"{v} {row[v]['cpu_us']:.1f} us ({row[v]['cpu_us_range'][0]:.1f}-"
               f"{row[v]['cpu_us_range'][1]:.1f})" for v in ("GET", "POST")
               if v in row and row[v].get("cpu_us") is not None]
        if cpu:
            print(f"{'':48} CPU per request, all its processes: {', '.join(cpu)}")


def paired(res: dict[str, Any]) -> None:
    """With --baseline: this checkout over the baseline, round by round (each round
    measures both within seconds of each other), the median and the range."""
    ours, base = res["rows"].get(WORKERS_ROW), res["rows"].get(f"{WORKERS_ROW} (baseline)")
    if not ours or not base or not ours["rounds"] or not base["rounds"]:
        return
    print("\n--workers 2, this checkout / baseline, round by round (paired):")
    for verb in ("GET", "POST"):
        pairs = [(a[verb], b[verb]) for a, b in zip(ours["rounds"], base["rounds"], strict=False)
                 if verb in a and verb in b]
        for what, key in (("requests/s", "rps"), ("CPU per request", "cpu_us")):
            ratios = sorted(a[key] / b[key] for a, b in pairs if a.get(key) and b.get(key))
            if ratios:
                print(f"  {verb} {what}: median {ratios[len(ratios) // 2]:.3f} "
                      f"(rounds {', '.join(f'{r:.3f}' for r in ratios)})")


def report_edge(res: dict[str, Any]) -> None:
    """The edge's targets: TLS vs nginx TLS, and the CPU an API key and a rate limit add."""
    rows = res["rows"]
    tls, peer, plain, auth = (rows.get(n, {}) for n in (LB_TLS_ROW, NGINX_TLS_ROW, LB_ROW,
                                                         LB_AUTH_ROW))
    print("\nTLS (wrk keep-alive, one handshake per connection; nodes in plaintext):")
    for verb in ("GET", "POST"):
        if verb in tls and verb in peer:
            print(f"  {verb}: tfslb TLS {tls[verb]['rps']:.0f} rps / nginx TLS "
                  f"{peer[verb]['rps']:.0f} rps = {tls[verb]['rps'] / peer[verb]['rps']:.3f}x")
    print("proxy CPU per request (user + system, the median round):")
    for verb in ("GET", "POST"):
        cells = {name: r[verb].get("cpu_us") for name, r in
                 ((LB_ROW, plain), (LB_TLS_ROW, tls), (LB_AUTH_ROW, auth)) if verb in r}
        line = ", ".join(f"{n} {v:.1f} us" for n, v in cells.items() if v)
        print(f"  {verb}: {line}")
        base, with_auth = cells.get(LB_ROW), cells.get(LB_AUTH_ROW)
        if base and with_auth:
            print(f"  {verb}: with key + rate limit {with_auth / base:.3f}x the CPU without")


def chart(res: dict[str, Any]) -> Path:
    names = [n for n, r in res["rows"].items() if not r.get("problems")]
    series = {v: [res["rows"][n].get(v, {}).get("rps", float("nan")) for n in names]
              for v in ("GET", "POST")}
    return bar_chart(OUT / "bench_raw.png",
                     f"requests/s, wrk -t1 -c{res['connections']} closed loop, "
                     "3 nginx stubs behind each", names, series, "requests/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 s per run: a smoke test")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=None, choices=range(1, 10),
                        metavar="N",
                        help="interleaved rounds, the table shows medians and ranges "
                             "(default 3; 1 with --quick)")
    parser.add_argument("--lb", action="append", default=[], metavar="NAME=EXE",
                        help="also measure another install's tfserving-lb console script "
                             "(cache none), e.g. fresh=/tmp/venv/bin/tfserving-lb")
    parser.add_argument("--distinct", action="store_true",
                        help="also cache none / memory / tiered with a new body every "
                             "request (the adaptive cache's bypass: the cheap path)")
    parser.add_argument("--only", nargs="+", metavar="SUBSTR", default=None,
                        help="only the rows whose name holds one of these (and nginx's)")
    parser.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                        help="also run `--workers 2` from this checkout (before/after)")
    args = parser.parse_args()
    args.warmup = 1.0
    if args.quick:
        args.seconds = 2.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    t0 = time.monotonic()
    res = run(args)
    res["wall_s"] = round(time.monotonic() - t0, 1)
    (OUT / "bench_raw.json").write_text(json.dumps(res, indent=1))
    report(res)
    paired(res)
    report_edge(res)
    print(f"\nchart: {chart(res)}  ({res['wall_s']} s wall)")
    return 1 if any(r.get("problems") for r in res["rows"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
