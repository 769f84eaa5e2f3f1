"""Cache benchmark: stores × traffic, and the adaptive cache's workloads.

    .venv/bin/python scripts/bench_cache.py [--quick] [--workloads stores,distinct,zipf,scan,mrc,
                                            curve]

Every workload runs against three real MNIST workers (no artificial delay) and
drives `tfserving-lb serve` only through its config; one run on one shared
2-core box, so compare ratios, not absolute figures.

* stores: hit, miss, 50 % partial-hit traffic (row cache, `cache: on` pinned so
  misses stay lookups) × memory, redis, tiered: saturation throughput (closed
  loop, 32 clients), p50/p99 at one common open-loop rate, idle RSS.
* distinct: every body a new tensor; `cache.backend` none vs memory vs tiered
  (adaptive window `--window` lookups, so the model bypasses after 2 windows)
  and memory pinned `cache: on` as the reference; a warm-up run per contender,
  then alternating closed-loop rounds (median) and an open-loop rate.
* zipf / scan: Zipf(0.9) key ids over a key space ~1/`--fit` times what the
  budget holds (`scan`: every third request a never-repeated key); `admission:
  lru` vs `tinylfu` at the same byte budget, fed the same seeded sequence in
  alternating chunks; hit rates from /stats deltas and from X-Cache counts.
* mrc: each 1× run's miss-ratio curve (/stats cache.mrc: miniatures of that
  run's own policy) vs the hit rate measured at 0.5×, 2× (4× in a full run)
  with LRU and TinyLFU. zipf, scan and mrc live in scripts/bench_cache_traces.py.
* curve: in process, no workers: the miss-ratio curve (miniature simulations of
  the policy that runs, `--admission`) against the store run at 0.5×, 1×, 2×, 4×
  over the same stream (Zipf, Zipf + one-off scan, a loop) at each `--curve-mb`,
  and the store's CPU per lookup without a curve, with it, and with the curve of
  `--baseline` (scripts/bench_cache_curve.py).
Also the proxy's CPU time per request (steadier than throughput on a shared box).
Writes bench-out/bench_cache.json and bench-out/bench_cache_adaptive.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.digits import sample_digits
from harness.loadgen import Result, closed_loop, open_loop
from harness.loadgen import run as run_load
from harness.usage import rss_mb
from scripts import bench_cache_curve as curve
from scripts import bench_cache_traces as traces
from scripts.bench_cache_traces import MODEL, PREDICT, Rows, cache_doc, closed
from scripts.benchenv import OUT, Bench
from scripts.charts import NOISE_NOTE

WARM = 64
WORKLOADS = ("stores", "distinct", "zipf", "scan", "mrc", "curve")
BASELINE = "b8d9f42"            # the last commit whose curve was SHARDS' LRU stack distances
DISTINCT_BASE = 700_000_000     # ids of the distinct workload


# -- stores: hit / miss / partial × memory / redis / tiered -------------------------

def bodies(n_warm: int) -> dict[str, Any]:
    images, _ = sample_digits(n_warm, seed=1)
    warm = [img.astype(np.float32).tolist() for img in images]

    def unique(i: int) -> list[float]:
        row = list(warm[i % n_warm])
        row[0] = float(np.float32(1e-3 * (i + 1)))   # a new tensor every time
        return row

    return {
        "hit": lambda i: orjson.dumps({"instances": [warm[i % n_warm]]}),
        "miss": lambda i: orjson.dumps({"instances": [unique(i + 10_000_000 * _EPOCH[0])]}),
        "partial": lambda i: orjson.dumps(
            {"instances": [warm[i % n_warm], unique(i + 10_000_000 * _EPOCH[0])]}),
        "warm": [orjson.dumps({"instances": [row]}) for row in warm],
    }


_EPOCH = [0]                    # misses stay misses across phases


async def warm_up(url: str, traffic: dict[str, Any]) -> None:
    for body in traffic["warm"]:
        await closed_loop(url, _const(body), concurrency=1, count=1)


def _const(body: bytes) -> Callable[[int], bytes]:
    return lambda _i: body


def run_stores(bench: Bench, nodes: list[dict[str, Any]], redis_url: str,
               quick: bool) -> dict[str, Any]:
    traffic, count, out = bodies(WARM), (800 if quick else 3000), {}
    models = {MODEL: {"row_cache": True, "cache": "on"}}
    for store in ("memory", "redis", "tiered"):
        url, _admin, proc = bench.start_proxy(f"bench-{store}", nodes, models=models,
                                              cache={"backend": store, "redis_url": redis_url})
        time.sleep(1.0)
        row: dict[str, Any] = {"idle_rss_mb": round(rss_mb(proc.pid), 1)}
        asyncio.run(warm_up(url + PREDICT, traffic))
        for kind in ("miss", "hit", "partial"):
            _EPOCH[0] += 1
            sat = asyncio.run(closed_loop(url + PREDICT, traffic[kind], 32, count))
            row[kind] = {"saturation_rps": round(sat.achieved_rps, 1),
                         "saturation_failed": sat.failed, "x_cache": dict(sat.x_cache)}
        out[store] = row
        bench.stop(proc)
    # Open loop at one common rate: half the slowest saturation throughput.
    slowest = min(r[k]["saturation_rps"] for r in out.values() for k in ("miss", "hit", "partial"))
    rate = max(20.0, round(slowest * 0.5))
    for store in ("memory", "redis", "tiered"):
        url, _admin, proc = bench.start_proxy(f"bench-ol-{store}", nodes, models=models,
                                              cache={"backend": store, "redis_url": redis_url})
        asyncio.run(warm_up(url + PREDICT, traffic))
        for kind in ("miss", "hit", "partial"):
            _EPOCH[0] += 1
            ol = asyncio.run(open_loop(url + PREDICT, traffic[kind], rate=rate,
                                       count=int(rate * (3 if quick else 8))))
            out[store][kind]["open_loop"] = ol.summary()
        bench.stop(proc)
    return {"stores": out, "open_loop_rps": rate}


# -- distinct: cache off vs on when nothing repeats -------------------------------------

def distinct_contenders(redis_url: str, window: int) -> dict[str, dict[str, Any]]:
    adaptive = {"window": window}
    mem = {"backend": "memory", "adaptive": adaptive}
    return {"none": {"cache": {"backend": "none"}},
            "memory": {"cache": mem},
            "tiered": {"cache": {"backend": "tiered", "redis_url": redis_url,
                                 "adaptive": adaptive}},
            "memory-on": {"cache": mem, "models": {MODEL: {"cache": "on"}}}}


def run_distinct(bench: Bench, nodes: list[dict[str, Any]], redis_url: str,
                 args: argparse.Namespace) -> dict[str, Any]:
    rows, nxt = Rows(), [DISTINCT_BASE]
    procs = {name: bench.start_proxy(f"distinct-{name}", nodes, **sections)
             for name, sections in distinct_contenders(redis_url, args.window).items()}

    def ids(n: int) -> np.ndarray:      # the same fresh ids for every contender of a phase
        nxt[0] += n
        return np.arange(nxt[0] - n, nxt[0])

    out: dict[str, Any] = {"window": args.window, "warmup": {}, "rounds": {n: [] for n in procs}}
    warm = ids(args.distinct_warm)
    for name, proxy in procs.items():
        res, cpu = closed(proxy, rows.of(warm), len(warm), 32)
        out["warmup"][name] = {**brief(res, cpu), "state": model_state(proxy[1])}
    names = list(procs)
    for r in range(args.rounds):
        batch = ids(args.distinct_count)
        for name in names[r % len(names):] + names[:r % len(names)]:
            res, cpu = closed(procs[name], rows.of(batch), len(batch), 32)
            out["rounds"][name].append(brief(res, cpu))
    out["summary"] = paired(out["rounds"], "none")
    out["open_loop"] = distinct_open_loop(procs, rows, ids, out["summary"], args)
    out["final"] = {n: final_cache(admin) for n, (_u, admin, _p) in procs.items()}
    for _url, _admin, proc in procs.values():
        bench.stop(proc)
    return out


def brief(res: Result, cpu_s: float) -> dict[str, Any]:
    return {"rps": round(res.achieved_rps, 1), "ok": res.ok, "failed": res.failed,
            "cpu_s": round(cpu_s, 3), "x_cache": dict(res.x_cache)}


def paired(rounds: dict[str, list[dict[str, Any]]], ref: str) -> dict[str, Any]:
    """Per contender: median rps, the median of its per-round rps ratio to `ref` (the
    rounds alternate, so a ratio pairs runs seconds apart), and the proxy's CPU time
    per request (steadier than wall-clock rates on a shared box), also as a ratio."""
    def cpu_us(rs: list[dict[str, Any]]) -> float:
        return 1e6 * float(sum(r["cpu_s"] for r in rs)) / float(max(1, sum(r["ok"] for r in rs)))

    base = rounds[ref]
    return {n: {"median_rps": statistics.median(r["rps"] for r in rs),
                "rps_ratio": round(statistics.median(
                    r["rps"] / b["rps"] for r, b in zip(rs, base, strict=True)), 3),
                "rps_ratio_min_max": [round(min(r["rps"] / b["rps"] for r, b in zip(
                    rs, base, strict=True)), 3), round(max(r["rps"] / b["rps"] for r, b in zip(
                        rs, base, strict=True)), 3)],
                "proxy_cpu_us_per_req": round(cpu_us(rs), 1),
                "cpu_ratio": round(cpu_us(rs) / cpu_us(base), 3),
                "failed": sum(r["failed"] for r in rs)}
            for n, rs in rounds.items()}


def distinct_open_loop(procs: dict[str, Any], rows: Rows, ids: Callable[[int], np.ndarray],
                       summary: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Half the slowest median saturation rate, 2 alternating rounds; pooled latencies."""
    rate = max(20.0, round(0.5 * min(v["median_rps"] for v in summary.values())))
    pooled: dict[str, Result] = {}
    for r in range(2):
        batch = ids(int(rate * args.ol_seconds))
        for name in list(procs)[::1 if r == 0 else -1]:
            res = run_load(open_loop(procs[name][0] + PREDICT, rows.of(batch), rate=rate,
                                     count=len(batch)))
            if name in pooled:
                pooled[name].latencies_ms += res.latencies_ms
                pooled[name].failed += res.failed
                pooled[name].x_cache.update(res.x_cache)
            else:
                pooled[name] = res
    return {"rate": rate, "by": {n: {"p50_ms": round(r.pct(50), 3), "p99_ms": round(r.pct(99), 3),
                                     "failed": r.failed, "x_cache": dict(r.x_cache)}
                                 for n, r in pooled.items()}}


def model_state(admin: str) -> str | None:
    state = cache_doc(admin).get("by_model", {}).get(MODEL, {}).get("state")
    return None if state is None else str(state)


def final_cache(admin: str) -> dict[str, Any]:
    doc = cache_doc(admin)
    m = doc.get("by_model", {}).get(MODEL, {})
    keep = ("state", "window_hit_rate", "window_estimated", "samples", "hits", "misses",
            "bypasses", "adaptive_bypasses")
    return {"backend": doc.get("backend"), **{k: m.get(k) for k in keep if k in m},
            "store_entries": (doc.get("store", {}).get("memory") or doc.get("store", {}))
            .get("entries")}


# -- report ------------------------------------------------------------------------------

def report_stores(res: dict[str, Any]) -> None:
    print(f"\n== stores (row cache, pinned on); open-loop rate {res['open_loop_rps']} req/s")
    print(f"{'store':8} {'traffic':8} {'sat rps':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6}")
    for store, row in res["stores"].items():
        for kind in ("miss", "hit", "partial"):
            r = row[kind]
            ol = r.get("open_loop", {})
            print(f"{store:8} {kind:8} {r['saturation_rps']:9.1f} {ol.get('p50_ms', 0):8.2f} "
                  f"{ol.get('p99_ms', 0):8.2f} {ol.get('failed', 0) + r['saturation_failed']:6d}")
        print(f"{store:8} idle RSS {row['idle_rss_mb']} MB")
    m, r = res["stores"]["memory"], res["stores"]["redis"]
    mo, ro = m["hit"]["open_loop"], r["hit"]["open_loop"]
    print(f"hit/miss throughput (memory): "
          f"{m['hit']['saturation_rps'] / m['miss']['saturation_rps']:.2f}x; hit p50 / miss p50: "
          f"{mo['p50_ms'] / m['miss']['open_loop']['p50_ms']:.2f}x; redis round trip per hit "
          f"(p50 redis - p50 memory): {ro['p50_ms'] - mo['p50_ms']:.3f} ms")


def report_distinct(d: dict[str, Any]) -> None:
    rounds = len(next(iter(d["rounds"].values())))
    print(f"\n== distinct bodies: cache off vs on (adaptive window {d['window']} lookups, "
          f"patience 2): a warm-up run each, then {rounds} alternating rounds")
    print(f"{'contender':10} {'warm rps':>8} {'cpu us/req':>10} {'warm x-cache':26} {'state':6} "
          f"{'med rps':>7} "
          f"{'x none':>6} {'(min-max)':>13} {'cpu us/req':>10} {'x none':>6} {'p50 ms':>6} "
          f"{'p99 ms':>6} {'now':6}")
    for n, s in d["summary"].items():
        w, ol, fin = d["warmup"][n], d["open_loop"]["by"][n], d["final"][n]
        xc = ",".join(f"{k}:{v}" for k, v in sorted(w["x_cache"].items()))
        lo, hi = s["rps_ratio_min_max"]
        warm_cpu = 1e6 * w["cpu_s"] / max(1, w["ok"])
        print(f"{n:10} {w['rps']:8.1f} {warm_cpu:10.1f} {xc:26} {w['state'] or '-':6} "
              f"{s['median_rps']:7.1f} "
              f"{s['rps_ratio']:6.3f} {f'({lo:.2f}-{hi:.2f})':>13} "
              f"{s['proxy_cpu_us_per_req']:10.1f} {s['cpu_ratio']:6.3f} {ol['p50_ms']:6.2f} "
              f"{ol['p99_ms']:6.2f} {fin.get('state') or '-':6}")
    print(f"x none: median of per-round ratios (rps), total proxy CPU per request (cpu); "
          f"target rps >= 0.97x none for memory and tiered; open loop at "
          f"{d['open_loop']['rate']} req/s")


# -- main ---------------------------------------------------------------------------------

def run(args: argparse.Namespace, workloads: list[str]) -> dict[str, Any]:
    res: dict[str, Any] = {"note": NOISE_NOTE, "quick": args.quick, "workloads": workloads,
                           "seconds": {}}
    if "curve" in workloads:                    # in process: no workers needed
        t0 = time.monotonic()
        res["curve"] = curve.run_curve(args)
        res["seconds"]["curve"] = round(time.monotonic() - t0, 1)
    if not set(workloads) - {"curve"}:
        return res
    bench = Bench()
    try:
        workers = bench.start_workers(MODEL, bench.mnist_model(), [0.0, 0.0, 0.0])
        nodes = [{"name": f"w{i}", "rest": u, "weight": 1} for i, u in enumerate(workers)]
        redis_url = bench.start_redis()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("stores", lambda: res.update(run_stores(bench, nodes, redis_url, args.quick))),
            ("distinct", lambda: res.update(
                distinct=run_distinct(bench, nodes, redis_url.removesuffix("/0") + "/1", args))),
            ("traces", lambda: res.update(traces=traces.run_traces(bench, nodes, args, workloads)))]
        for name, step in steps:
            if name in workloads or (name == "traces" and {"zipf", "scan", "mrc"} & set(workloads)):
                t0 = time.monotonic()
                step()
                res["seconds"][name] = round(time.monotonic() - t0, 1)
    finally:
        bench.close()
    return res


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer, shorter runs")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=", ".join(WORKLOADS))
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--window", type=int, default=200, help="cache.adaptive.window (distinct)")
    p.add_argument("--rounds", type=int, help="distinct: closed-loop rounds per contender")
    p.add_argument("--memory-mb", type=float, help="zipf/scan: the 1x budget")
    p.add_argument("--fit", type=float, default=0.15, help="share of the keys the budget holds")
    p.add_argument("--requests", type=int, help="zipf/scan: requests per contender")
    p.add_argument("--concurrency", type=int, default=16, help="zipf/scan closed-loop clients")
    p.add_argument("--admission", choices=("tinylfu", "lru"), default="tinylfu",
                   help="curve: the memory tier's policy (the config's cache.admission)")
    p.add_argument("--curve-mb", default="0.05,0.25", help="curve: budgets (memory_mb)")
    p.add_argument("--curve-keys", type=int, default=20000, help="curve: Zipf key space")
    p.add_argument("--curve-requests", type=int, help="curve: requests per stream")
    p.add_argument("--cpu-rounds", type=int, help="curve: timing rounds per contender")
    p.add_argument("--baseline", default=BASELINE,
                   help="curve: git revision whose curve the CPU is compared with ('' : none)")
    args = p.parse_args(argv)
    q = args.quick
    args.rounds = args.rounds or (6 if q else 24)
    args.memory_mb = args.memory_mb or 0.25
    args.requests = args.requests or (12000 if q else 60000)
    args.distinct_warm, args.distinct_count = (800, 400) if q else (1500, 600)
    args.ol_seconds = 2.0 if q else 5.0
    args.chunks, args.warm_chunks = (3, 1) if q else (6, 2)
    args.curve_mb = [float(v) for v in args.curve_mb.split(",") if v.strip()]
    args.curve_requests = args.curve_requests or (10000 if q else 30000)
    args.cpu_rounds = args.cpu_rounds or (2 if q else 5)
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if unknown := set(workloads) - set(WORKLOADS):
        p.error(f"unknown workloads {sorted(unknown)}; choose from {', '.join(WORKLOADS)}")
    return args, workloads


def main() -> int:
    args, workloads = parse()
    res = run(args, workloads)
    (OUT / "bench_cache.json").write_text(json.dumps(res, indent=1))
    print(f"\n{NOISE_NOTE}")
    if "stores" in res:
        report_stores(res)
    if "distinct" in res:
        report_distinct(res["distinct"])
    if "curve" in res:
        curve.report_curve(res["curve"])
    if "traces" in res:
        traces.report_traces(res["traces"])
        if (png := traces.chart(res["traces"])) is not None:
            print(f"\nchart: {png}")
    print(f"wall time per workload (s): {res['seconds']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
