"""Cache benchmark: hit, miss and 50 % partial-hit traffic, memory vs redis vs tiered.

    .venv/bin/python scripts/bench_cache.py [--quick]

Starts three MNIST workers (no artificial delay), a private redis-server and
one proxy per store, then for every (store, traffic) pair measures:
* saturation throughput (closed loop, 32 clients), and
* p50/p99 latency under open-loop load at a fixed rate, the same for all pairs
  (half of the slowest pair's saturation throughput), measured from each
  request's scheduled start.
Also the proxy's idle RSS. Prints a table and writes bench-out/bench_cache.json.
All figures come from one run on one machine: compare them as ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.digits import sample_digits
from scripts.benchenv import OUT, Bench, rss_mb
from scripts.loadgen import closed_loop, open_loop

MODEL = "mnist"
WARM = 64


def bodies(n_warm: int) -> dict[str, Any]:
    images, _ = sample_digits(n_warm, seed=1)
    warm = [img.astype(np.float32).tolist() for img in images]

    def unique(i: int) -> list[float]:
        row = list(warm[i % n_warm])
        row[0] = float(np.float32(1e-3 * (i + 1)))   # a new tensor every time
        return row

    return {
        "hit": lambda i: orjson.dumps({"instances": [warm[i % n_warm]]}),
        "miss": lambda i: orjson.dumps({"instances": [unique(i + 10_000_000 * _epoch())]}),
        "partial": lambda i: orjson.dumps(
            {"instances": [warm[i % n_warm], unique(i + 10_000_000 * _epoch())]}),
        "warm": [orjson.dumps({"instances": [row]}) for row in warm],
    }


_EPOCH = [0]


def _epoch() -> int:
    return _EPOCH[0]


async def measure(url: str, traffic: dict[str, Any], kind: str, count: int,
                  rate: float | None) -> dict[str, Any]:
    _EPOCH[0] += 1                       # misses stay misses across phases
    sat = await closed_loop(url, traffic[kind], concurrency=32, count=count)
    out: dict[str, Any] = {"saturation_rps": round(sat.achieved_rps, 1),
                           "saturation_failed": sat.failed, "x_cache": dict(sat.x_cache)}
    if rate:
        _EPOCH[0] += 1
        ol = await open_loop(url, traffic[kind], rate=rate, count=int(rate * 5))
        out["open_loop"] = ol.summary()
    return out


async def warm_up(url: str, traffic: dict[str, Any]) -> None:
    for body in traffic["warm"]:
        await closed_loop(url, _const(body), concurrency=1, count=1)


def _const(body: bytes) -> Callable[[int], bytes]:
    return lambda _i: body


def run(quick: bool) -> dict[str, Any]:
    bench = Bench()
    results: dict[str, Any] = {"stores": {}}
    try:
        base = bench.mnist_model()
        workers = bench.start_workers(MODEL, base, [0.0, 0.0, 0.0])
        nodes = [{"name": f"w{i}", "rest": u, "weight": 1} for i, u in enumerate(workers)]
        redis_url = bench.start_redis()
        traffic = bodies(WARM)
        count = 800 if quick else 3000
        for store in ("memory", "redis", "tiered"):
            url, _admin, proc = bench.start_proxy(
                f"bench-{store}", nodes, models={MODEL: {"row_cache": True}},
                cache={"backend": store, "redis_url": redis_url})
            time.sleep(1.0)
            row: dict[str, Any] = {"idle_rss_mb": round(rss_mb(proc.pid), 1)}
            predict = f"{url}/v1/models/{MODEL}:predict"
            asyncio.run(warm_up(predict, traffic))
            for kind in ("miss", "hit", "partial"):
                row[kind] = asyncio.run(measure(predict, traffic, kind, count, None))
            results["stores"][store] = row
            bench.stop(proc)
        # Open loop at one common rate: half the slowest saturation throughput.
        slowest = min(r[k]["saturation_rps"] for r in results["stores"].values()
                      for k in ("miss", "hit", "partial"))
        rate = max(20.0, round(slowest * 0.5))
        results["open_loop_rps"] = rate
        for store in ("memory", "redis", "tiered"):
            url, _admin, proc = bench.start_proxy(
                f"bench-ol-{store}", nodes, models={MODEL: {"row_cache": True}},
                cache={"backend": store, "redis_url": redis_url})
            predict = f"{url}/v1/models/{MODEL}:predict"
            asyncio.run(warm_up(predict, traffic))
            for kind in ("miss", "hit", "partial"):
                _EPOCH[0] += 1
                ol = asyncio.run(open_loop(predict, traffic[kind], rate=rate,
                                           count=int(rate * (3 if quick else 8))))
                results["stores"][store][kind]["open_loop"] = ol.summary()
            bench.stop(proc)
    finally:
        bench.close()
    return results


def report(res: dict[str, Any]) -> None:
    print(f"\nopen-loop rate for latency: {res['open_loop_rps']} req/s")
    print(f"{'store':8} {'traffic':8} {'sat rps':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6}")
    for store, row in res["stores"].items():
        for kind in ("miss", "hit", "partial"):
            r = row[kind]
            ol = r.get("open_loop", {})
            print(f"{store:8} {kind:8} {r['saturation_rps']:9.1f} {ol.get('p50_ms', 0):8.2f} "
                  f"{ol.get('p99_ms', 0):8.2f} {ol.get('failed', 0) + r['saturation_failed']:6d}")
        print(f"{store:8} idle RSS {row['idle_rss_mb']} MB")
    m = res["stores"]["memory"]
    r = res["stores"]["redis"]
    ratio = m["hit"]["saturation_rps"] / m["miss"]["saturation_rps"]
    print(f"\nhit/miss throughput (memory): {ratio:.2f}x")
    print(f"hit p50 / miss p50 (memory): "
          f"{m['hit']['open_loop']['p50_ms'] / m['miss']['open_loop']['p50_ms']:.2f}x")
    print(f"redis round trip per hit (p50 redis - p50 memory): "
          f"{r['hit']['open_loop']['p50_ms'] - m['hit']['open_loop']['p50_ms']:.3f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    args = parser.parse_args()
    res = run(args.quick)
    (OUT / "bench_cache.json").write_text(json.dumps(res, indent=1))
    report(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
