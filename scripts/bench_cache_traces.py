"""Bench_cache's Zipf, scan and miss-ratio-curve workloads, and the request bodies
and key sequences of its adaptive workloads.

Called by scripts/bench_cache.py (`--workloads zipf,scan,mrc`; `Rows`, `closed`
and `cache_doc` also by its distinct workload). Key ids are drawn Zipf(0.9) over
a key space ~1/`fit` times what the byte budget holds (`scan`: every third
request a never-repeated id); each budget runs one proxy per admission (`lru`,
`tinylfu`) and feeds them the same seeded sequence in alternating chunks,
reading /stats after every chunk. Guarantees: the same id is always the same
body bytes and distinct ids are distinct tensors; each run's miss-ratio curve
(cache.mrc: miniatures of that run's policy) is compared over exactly the
lookups the hit rate is measured on (`span`).

Sizes: an entry (key + one-row reply) is ~200 B, so the default budget is
0.25 MB (~1300 entries) over ~8700 keys. A budget of 2 MB would hold ~10 k
entries, more than a 60 k-request Zipf(0.9) trace ever touches (~7.5 k keys):
no eviction pressure, nothing to compare. 60 k requests per contender (12 k
with --quick) so that the steady part (after the first third) dominates.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from backends.digits import sample_digits
from harness.loadgen import Result, closed_loop
from harness.loadgen import run as run_load
from harness.usage import cpu_seconds
from scripts.benchenv import OUT, Bench, proxy_stats
from scripts.charts import NOISE_NOTE, _pyplot

MODEL = "mnist"
PREDICT = f"/v1/models/{MODEL}:predict"
SCAN_BASE = 500_000_000         # ids of the scan's one-off keys


# -- request bodies and key sequences for the adaptive workloads ----------------------

class Rows:
    """Single-row predict bodies for integer ids: held-out digit `id % 64` with
    pixels 0-2 (always 0: the border) set to three 3-digit slices of the id, so
    distinct ids are distinct tensors and the same id is the same bytes."""

    def __init__(self, n: int = 64) -> None:
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


# -- LRU vs TinyLFU at a byte budget, the curve vs measured -----------------------

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
    """The hit rate between two /stats snapshots (`a` earlier), and the curve's estimate
    over the same lookups: as /stats gives it (its curve × its reference count) and
    corrected for references counted twice (mrc refs − lookups: a peeked miss of a
    remembered body is counted again by the full lookup, as a hit, in the miniatures too)."""
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
    curve's estimates over the same spans; steady X-Cache hit rate and throughput."""
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
                           "requests": args.requests, "zipf_s": 0.9, "runs": {}, "estimate": {}}
    for trace, factors in trace_plan(workloads, not args.quick).items():
        ids = zipf_ids(n_keys, args.requests, args.seed, scan_every=3 if trace == "scan" else 0)
        out[f"{trace}_distinct_keys"] = len(np.unique(ids))
        for f in sorted(factors, key=lambda x: (x != 1.0, x)):     # 1× first: the estimate
            res = run_budget(bench, nodes, rows, ids, trace, args.memory_mb * f,
                             ["lru", "tinylfu"], args)
            out["runs"][f"{trace}@{f:g}"] = {"trace": trace, "factor": f, **res}
            if f == 1.0:
                out["estimate"][trace] = estimate(res)
            print(f"bench_cache: {trace} at {f:g}x: " + ", ".join(
                f"{a} {r['steady_hit_rate']}" for a, r in res.items()), file=sys.stderr)
    return out


# -- report ------------------------------------------------------------------------------

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


def estimate(run: dict[str, Any]) -> dict[str, Any]:
    """Each 1x run's curve (cache.mrc: miniatures of the policy that run ran), as read
    from /stats and corrected for references counted twice, whole and steady."""
    out: dict[str, Any] = {}
    for key in ("mrc", "mrc_corrected", "steady_mrc", "steady_mrc_corrected"):
        curves = {adm: run[adm][key] for adm in ("lru", "tinylfu") if run[adm].get(key)}
        if curves:
            out[key] = curves
    return out


def report_mrc(t: dict[str, Any]) -> None:
    est = t["estimate"].get("zipf")
    if not est:
        return
    base = t["runs"]["zipf@1"]
    print("\n== miss-ratio curve (miniatures of each run's own policy) read from /stats of "
          "the 1x runs, vs that policy measured at each budget\n   corr: without the "
          f"references counted twice (mrc refs / lookups {base['lru'].get('mrc_refs_per_lookup')}"
          f" in the LRU run, {base['tinylfu'].get('mrc_refs_per_lookup')} in the TinyLFU run)")
    print(f"{'budget':6} {'span':6} {'policy':8} {'est':>6} {'corr':>6} {'measured':>8} "
          f"{'est-meas':>8} {'corr-meas':>9}")
    for f in ("0.5", "1", "2", "4"):
        run = t["runs"].get(f"zipf@{f}")
        for pre in ("", "steady_"):
            if run is None or f"{pre}mrc" not in est:
                continue
            for adm, curve in est[f"{pre}mrc"].items():
                mean, corr = curve[f], est[f"{pre}mrc_corrected"][adm][f]
                got = run[adm][f"{pre}hit_rate"]
                print(f"{f + 'x':6} {pre.strip('_') or 'whole':6} {adm:8} {mean:6.3f} "
                      f"{corr:6.3f} {got:8.3f} {100 * (mean - got):+8.1f} "
                      f"{100 * (corr - got):+9.1f}")
    print("target: |estimate - measured| <= 3 points (the in-process `curve` workload "
          "measures it over exactly the same stream)")


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
        est = t["estimate"].get(trace, {})
        for key, mark, what in (("mrc", "^--", "curve (/stats)"),
                                ("mrc_corrected", "v:", "curve, refs counted once")):
            for adm, curve in est.get(key, {}).items():
                ax.plot([float(f) * t["memory_mb"] for f in curve], list(curve.values()), mark,
                        label=f"{what} of the 1x {adm} run")
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


