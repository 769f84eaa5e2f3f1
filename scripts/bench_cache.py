"""Cache benchmark: stores × traffic, and the adaptive cache's workloads.

    .venv/bin/python scripts/bench_cache.py [--quick] [--workloads stores,distinct,zipf,scan,mrc]

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
* mrc: the SHARDS estimate (/stats cache.mrc, LRU's curve) of the 1× runs vs
  the hit rate measured at 0.5×, 2× (4× in a full run) with LRU (and TinyLFU).
Writes bench-out/bench_cache.json and bench-out/bench_cache_adaptive.png.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.digits import sample_digits
from scripts.benchenv import NOISE_NOTE, OUT, Bench, _pyplot, cpu_seconds, proxy_stats, rss_mb
from scripts.loadgen import Result, closed_loop, open_loop
from scripts.loadgen import run as run_load

MODEL = "mnist"
WARM = 64
WORKLOADS = ("stores", "distinct", "zipf", "scan", "mrc")
SCAN_BASE = 500_000_000         # ids of the scan's one-off keys
DISTINCT_BASE = 700_000_000     # ids of the distinct workload
PREDICT = f"/v1/models/{MODEL}:predict"


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


# -- request bodies and key sequences for the adaptive workloads ----------------------

class Rows:
    """Single-row predict bodies for integer ids: held-out digit `id % 64` with
    pixels 0-2 (always 0: the border) set to three 3-digit slices of the id, so
    distinct ids are distinct tensors and the same id is the same bytes."""

    def __init__(self, n: int = WARM) -> None:
        images, _ = sample_digits(n, seed=1)
        self._tails = [orjson.dumps(img.astype(np.float32)[3:].tolist())[1:] for img in images]

    def body(self, key_id: int) -> bytes:
        k = int(key_id)
        head = f'{{"instances":[[{k % 1000 / 1000:.3f},{k // 1000 % 1000 / 1000:.3f},' \
               f'{k // 1_000_000 % 1000 / 1000:.3f},'
        return head.encode() + self._tails[k % len(self._tails)] + b"]}"

    def of(self, ids: np.ndarray) -> Callable[[int], bytes]:
        return lambda i: self.body(ids[i])


def zipf_ids(n_keys: int, count: int, seed: int, s: float = 0.9,
             scan_every: int = 0) -> np.ndarray:
    """`count` ids drawn Zipf(s) over `n_keys` (rank r has weight r^-s, ranks shuffled
    over ids); with `scan_every` = k every k-th request is a never-repeated id."""
    rng = np.random.default_rng(seed)
    weights = np.arange(1, n_keys + 1, dtype=float) ** -s
    ids = rng.permutation(n_keys)[rng.choice(n_keys, size=count, p=weights / weights.sum())]
    if scan_every:
        scan = np.arange(count) % scan_every == scan_every - 1
        ids[scan] = SCAN_BASE + np.flatnonzero(scan)
    return ids


def cache_doc(admin: str) -> dict[str, Any]:
    docs = proxy_stats(admin, 1, timeout=10.0)
    if not docs:
        raise RuntimeError(f"{admin}/stats did not answer")
    return dict(next(iter(docs.values()))["cache"])


def closed(proxy: tuple[str, str, Any], body: Callable[[int], bytes], count: int,
           concurrency: int) -> tuple[Result, float]:
    """A closed loop against `proxy` (url, admin, process) and the CPU seconds the
    proxy spent meanwhile."""
    before = cpu_seconds(proxy[2].pid)
    res = run_load(closed_loop(proxy[0] + PREDICT, body, concurrency, count))
    return res, cpu_seconds(proxy[2].pid) - before


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
        return 1e6 * sum(r["cpu_s"] for r in rs) / max(1, sum(r["ok"] for r in rs))

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
    return cache_doc(admin).get("by_model", {}).get(MODEL, {}).get("state")


def final_cache(admin: str) -> dict[str, Any]:
    doc = cache_doc(admin)
    m = doc.get("by_model", {}).get(MODEL, {})
    keep = ("state", "window_hit_rate", "window_estimated", "samples", "hits", "misses",
            "bypasses", "adaptive_bypasses")
    return {"backend": doc.get("backend"), **{k: m.get(k) for k in keep if k in m},
            "store_entries": (doc.get("store", {}).get("memory") or doc.get("store", {}))
            .get("entries")}


# -- zipf / scan / mrc: LRU vs TinyLFU at a byte budget, SHARDS vs measured ---------------

def entry_bytes(bench: Bench, nodes: list[dict[str, Any]], rows: Rows) -> float:
    """The size of one cache entry (key + reply) as the memory store counts it."""
    proxy = bench.start_proxy("entry-size", nodes, cache={"backend": "memory", "admission": "lru"})
    closed(proxy, rows.of(np.arange(900_000_000, 900_000_200)), 200, 8)
    store = cache_doc(proxy[1])["store"]
    bench.stop(proxy[2])
    return float(store["bytes"]) / max(1, int(store["entries"]))


def run_budget(bench: Bench, nodes: list[dict[str, Any]], rows: Rows, ids: np.ndarray,
               tag: str, budget_mb: float, admissions: list[str],
               args: argparse.Namespace) -> dict[str, Any]:
    """One proxy per admission at this budget, fed `ids` in alternating chunks."""
    procs = {adm: bench.start_proxy(f"{tag}-{adm}-{budget_mb:g}mb", nodes,
                                    cache={"backend": "memory", "memory_mb": budget_mb,
                                           "admission": adm})
             for adm in admissions}
    chunks: dict[str, list[dict[str, Any]]] = {adm: [] for adm in admissions}
    bounds = np.linspace(0, len(ids), args.chunks + 1).astype(int)
    for k, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        part = ids[lo:hi]
        for adm in admissions if k % 2 == 0 else admissions[::-1]:
            res, cpu = closed(procs[adm], rows.of(part), len(part), args.concurrency)
            doc = cache_doc(procs[adm][1])
            store = doc["store"]
            chunks[adm].append({
                "ok": res.ok, "failed": res.failed, "elapsed_s": res.elapsed_s, "cpu_s": cpu,
                "x_cache": dict(res.x_cache), "hits": doc["hits"], "misses": doc["misses"],
                "mrc": doc.get("mrc"), "mrc_refs": store.get("mrc_sampling", {}).get("lookups"),
                "entries": store["entries"], "bytes": store["bytes"],
                "rejected": store.get("rejected"), "evictions": store.get("evictions"),
                "state": doc.get("by_model", {}).get(MODEL, {}).get("state")})
    for _url, _admin, proc in procs.values():
        bench.stop(proc)
    return {adm: summarize(c, args.warm_chunks) for adm, c in chunks.items()}


ZERO = {"hits": 0, "misses": 0, "mrc": None, "mrc_refs": 0}


def span(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The hit rate between two /stats snapshots (`a` earlier), and the SHARDS estimate
    over the same lookups: as /stats gives it (its curve × its reference count) and
    corrected for references counted twice (mrc refs − lookups: a peeked miss of a
    remembered body is counted again by the full lookup, as a hit at distance ~0)."""
    hits = b["hits"] - a["hits"]
    lookups = b["hits"] + b["misses"] - a["hits"] - a["misses"]
    out: dict[str, Any] = {"hit_rate": round(hits / lookups, 4) if lookups else None}
    refs = (b["mrc_refs"] or 0) - (a["mrc_refs"] or 0)
    if not b["mrc"] or not lookups or refs < lookups:      # none, or the curve decayed
        return out
    est = {f: b["mrc"][f] * b["mrc_refs"] - (a["mrc"][f] * a["mrc_refs"] if a["mrc"] else 0.0)
           for f in b["mrc"]}
    out["mrc"] = {f: round(v / refs, 4) for f, v in est.items()}
    out["mrc_corrected"] = {f: round(min(max((v - (refs - lookups)) / lookups, 0.0), 1.0), 4)
                            for f, v in est.items()}
    out["mrc_refs_per_lookup"] = round(refs / lookups, 4)
    return out


def summarize(chunks: list[dict[str, Any]], warm: int) -> dict[str, Any]:
    """Whole-trace and steady (chunks after the first `warm`) hit rates, with the
    SHARDS estimates over the same spans; steady X-Cache hit rate and throughput."""
    last, steady = chunks[-1], chunks[warm:]
    xc: Counter[str] = Counter()
    for c in steady:
        xc.update(c["x_cache"])
    ok = max(1, sum(c["ok"] for c in steady))
    out = {
        **span(ZERO, last), **{f"steady_{k}": v for k, v in span(chunks[warm - 1], last).items()},
        "steady_xcache_hit_rate": round(xc["HIT"] / max(1, sum(xc.values())), 4),
        "steady_x_cache": dict(xc),
        "steady_rps": round(ok / sum(c["elapsed_s"] for c in steady), 1),
        "steady_cpu_us_per_req": round(1e6 * sum(c["cpu_s"] for c in steady) / ok, 1),
        "failed": sum(c["failed"] for c in chunks),
        "entry_bytes": round(last["bytes"] / max(1, last["entries"]), 1),
        "entries": last["entries"], "rejected": last["rejected"], "evictions": last["evictions"],
        "state": last["state"], "mrc_refs": last["mrc_refs"],
        "hit_rate_by_chunk": [span(p, c)["hit_rate"]
                              for p, c in itertools.pairwise([ZERO, *chunks])],
    }
    return out


def trace_plan(workloads: list[str], full: bool) -> dict[str, list[float]]:
    """trace -> budget factors to run (each with LRU and TinyLFU)."""
    plan: dict[str, list[float]] = {}
    if "zipf" in workloads or "mrc" in workloads:
        plan["zipf"] = [1.0]
    if "mrc" in workloads:
        plan["zipf"] = [0.5, 1.0, 2.0] + ([4.0] if full else [])
    if "scan" in workloads:
        plan["scan"] = [1.0]
    return plan


def run_traces(bench: Bench, nodes: list[dict[str, Any]], args: argparse.Namespace,
               workloads: list[str]) -> dict[str, Any]:
    rows = Rows()
    size = entry_bytes(bench, nodes, rows)
    budget = args.memory_mb * 2**20
    n_keys = int(budget / size / args.fit)
    out: dict[str, Any] = {"entry_bytes": round(size, 1), "memory_mb": args.memory_mb,
                           "entries_fit": int(budget / size), "n_keys": n_keys,
                           "requests": args.requests, "zipf_s": 0.9, "runs": {}}
    for trace, factors in trace_plan(workloads, not args.quick).items():
        ids = zipf_ids(n_keys, args.requests, args.seed, scan_every=3 if trace == "scan" else 0)
        out[f"{trace}_distinct_keys"] = len(np.unique(ids))
        for f in sorted(factors, key=lambda x: (x != 1.0, x)):     # 1× first: the estimate
            res = run_budget(bench, nodes, rows, ids, trace, args.memory_mb * f,
                             ["lru", "tinylfu"], args)
            out["runs"][f"{trace}@{f:g}"] = {"trace": trace, "factor": f, **res}
            print(f"bench_cache: {trace} at {f:g}x: " + ", ".join(
                f"{a} {r['steady_hit_rate']}" for a, r in res.items()), file=sys.stderr)
    return out


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


def report_traces(t: dict[str, Any]) -> None:
    print(f"\n== Zipf(0.9): entry {t['entry_bytes']} B, budget {t['memory_mb']} MB holds "
          f"~{t['entries_fit']} entries, key space {t['n_keys']}, {t['requests']} requests "
          f"(distinct: zipf {t.get('zipf_distinct_keys')}, scan {t.get('scan_distinct_keys')})")
    print(f"{'trace@budget':14} {'admission':9} {'hit':>6} {'steady':>7} {'x-cache':>8} "
          f"{'rps':>7} {'x lru':>6} {'cpu us/req':>10} {'x lru':>6} {'rejected':>9} {'state':6}")
    for name, run in t["runs"].items():
        lru = run["lru"]
        for adm in ("lru", "tinylfu"):
            r = run[adm]
            print(f"{name:14} {adm:9} {r['hit_rate']:6.3f} {r['steady_hit_rate']:7.3f} "
                  f"{r['steady_xcache_hit_rate']:8.3f} {r['steady_rps']:7.1f} "
                  f"{r['steady_rps'] / lru['steady_rps']:6.3f} {r['steady_cpu_us_per_req']:10.1f} "
                  f"{r['steady_cpu_us_per_req'] / lru['steady_cpu_us_per_req']:6.3f} "
                  f"{r['rejected'] or 0:9d} {r['state'] or '-':6}")
        gap = 100 * (run["tinylfu"]["steady_hit_rate"] - lru["steady_hit_rate"])
        print(f"{'':14} tinylfu - lru: {gap:+.1f} points (steady)")
    report_mrc(t)


def report_mrc(t: dict[str, Any]) -> None:
    base = t["runs"].get("zipf@1")
    if base is None:
        return
    print("\n== SHARDS estimate (an LRU curve), read at 1x, vs LRU measured at each budget;"
          "\n   corr: without the references /stats counts twice (mrc refs / lookups: "
          f"{base['lru'].get('mrc_refs_per_lookup')} in the 1x LRU run, "
          f"{base['tinylfu'].get('mrc_refs_per_lookup')} in the TinyLFU run)")
    print(f"{'budget':7} {'span':7} {'estimate':>8} {'corr':>6} {'LRU':>6} {'est-LRU':>7} "
          f"{'corr-LRU':>8} {'TinyLFU':>7} {'est(tlfu run)':>13}")
    for f in ("0.5", "1", "2", "4"):
        run = t["runs"].get(f"zipf@{f}")
        if run is None:
            continue
        for pre in ("", "steady_"):
            est, corr = base["lru"].get(f"{pre}mrc"), base["lru"].get(f"{pre}mrc_corrected")
            got = run["lru"][f"{pre}hit_rate"]
            if not est or not corr or got is None:
                continue
            other = (base["tinylfu"].get(f"{pre}mrc") or {}).get(f, float("nan"))
            print(f"{f + 'x':7} {pre.strip('_') or 'whole':7} {est[f]:8.3f} {corr[f]:6.3f} "
                  f"{got:6.3f} {100 * (est[f] - got):+7.1f} {100 * (corr[f] - got):+8.1f} "
                  f"{run['tinylfu'][f'{pre}hit_rate']:7.3f} {other:13.3f}")
    print("target: |estimate - measured LRU| <= 5 points at 0.5x and 2x")


def chart(t: dict[str, Any]) -> Path | None:
    traces = sorted({r["trace"] for r in t["runs"].values()}, key=lambda x: x != "zipf")
    if not traces:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(traces), figsize=(6 * len(traces), 4.5), squeeze=False)
    for ax, trace in zip(axes[0], traces, strict=True):
        runs = sorted((r for r in t["runs"].values() if r["trace"] == trace),
                      key=lambda r: r["factor"])
        mb = [r["factor"] * t["memory_mb"] for r in runs]
        for adm, mark in (("lru", "o-"), ("tinylfu", "s-")):
            ax.plot(mb, [r[adm]["hit_rate"] for r in runs], mark, label=f"measured {adm}")
        base = (t["runs"].get(f"{trace}@1") or {}).get("lru", {})
        for key, mark, what in (("mrc", "^--", "SHARDS estimate (/stats)"),
                                ("mrc_corrected", "v:", "SHARDS, refs counted once")):
            if curve := base.get(key):
                ax.plot([float(f) * t["memory_mb"] for f in curve], list(curve.values()), mark,
                        label=f"{what}, 1x LRU run")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("cache.memory_mb")
        ax.set_ylabel("hit rate (whole trace)")
        ax.set_title(f"{trace}: Zipf(0.9), {t['n_keys']} keys, {t['requests']} requests",
                     fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.text(0.01, 0.01, NOISE_NOTE, fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = OUT / "bench_cache_adaptive.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- main ---------------------------------------------------------------------------------

def run(args: argparse.Namespace, workloads: list[str]) -> dict[str, Any]:
    bench = Bench()
    res: dict[str, Any] = {"note": NOISE_NOTE, "quick": args.quick, "workloads": workloads,
                           "seconds": {}}
    try:
        workers = bench.start_workers(MODEL, bench.mnist_model(), [0.0, 0.0, 0.0])
        nodes = [{"name": f"w{i}", "rest": u, "weight": 1} for i, u in enumerate(workers)]
        redis_url = bench.start_redis()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("stores", lambda: res.update(run_stores(bench, nodes, redis_url, args.quick))),
            ("distinct", lambda: res.update(
                distinct=run_distinct(bench, nodes, redis_url.removesuffix("/0") + "/1", args))),
            ("traces", lambda: res.update(traces=run_traces(bench, nodes, args, workloads)))]
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
    args = p.parse_args(argv)
    q = args.quick
    args.rounds = args.rounds or (6 if q else 24)
    args.memory_mb = args.memory_mb or 0.25
    args.requests = args.requests or (12000 if q else 60000)
    args.distinct_warm, args.distinct_count = (800, 400) if q else (1500, 600)
    args.ol_seconds = 2.0 if q else 5.0
    args.chunks, args.warm_chunks = (3, 1) if q else (6, 2)
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
    if "traces" in res:
        report_traces(res["traces"])
        if (png := chart(res["traces"])) is not None:
            print(f"\nchart: {png}")
    print(f"wall time per workload (s): {res['seconds']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
