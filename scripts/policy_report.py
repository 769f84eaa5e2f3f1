"""The tables bench_policy prints: real workers, the generator alone, each simulated scenario.

Called by scripts/bench_policy.py's main, after the run, with the results it
also writes to bench-out/bench_policy.json. Guarantees: it only reads those
results and prints (nothing is measured, started or written here); a ratio
whose base is missing, zero or NaN prints as "—"; a contender that failed
prints its error instead of figures; a run where the generator fell behind its
schedule (`generator_late`: on-schedule < 0.98 or send lag p99 > `LATE_MS`) is
flagged, since its latencies include the generator's own lag.
"""

from __future__ import annotations

from typing import Any

LATE_MS = 10.0          # a sender lag p99 past this distorts 20 ms-scale latencies


def report_real(title: str, results: dict[str, Any]) -> None:
    base = results["nginx least_conn"]
    print(f"\n{title}")
    print(f"{'balancer':28} {'p50 ms':>8} {'p99 ms':>8} {'p99 vs nginx lc':>16} "
          f"{'slow share':>10} {'failed':>6}")
    for name, r in results.items():
        ratio = r["p99_ms"] / base["p99_ms"] if base["p99_ms"] else float("nan")
        print(f"{name:28} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {ratio:15.2f}x "
              f"{r['slow_share']:10.3f} {r['failed']:6d}")


def generator_late(r: dict[str, Any]) -> bool:
    """The sender missed its schedule (it shares the cores with what it measures)."""
    return bool(r["on_schedule"] < 0.98 or r["send_lag_p99_ms"] > LATE_MS)


def report_generator(rows: list[dict[str, Any]]) -> None:
    print("\ngenerator alone (a 0.2 ms node, no proxy): on-sched = scheduled / actual "
          "sending time, lag99 = p99 of how late requests started")
    for r in rows:
        flag = "  LATE" if generator_late(r) else ""
        print(f"  {r['rate']:6.0f} req/s, {r['connections']:2d} session(s): on-sched "
              f"{r['on_schedule']:.3f}, lag99 {r['send_lag_p99_ms']:.1f} ms, "
              f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, failed {r['failed']}, "
              f"load {r['load1']:.1f}{flag}")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b and b == b and a == a else "—"


def report_sim(res: dict[str, Any]) -> None:
    rows = res["contenders"]
    base = rows.get("nginx least_conn", {})
    wbase = rows.get("nginx weighted least_conn", {}) if res["weighted"] else {}
    load = res["rate"] / res["capacity_rps"] if res["capacity_rps"] else float("nan")
    print(f"\n{res['title']}: open-loop Poisson {res['rate']:.0f} req/s = {100 * load:.0f} % "
          f"of capacity {res['capacity_rps']:.0f} req/s, {res['connections']} client "
          f"session(s)")
    head = (f"{'contender':32} {'p50':>6} {'p99':>7} {'p99.9':>7} {'p99/lc':>7} {'p99.9/lc':>8}"
            + (f" {'p99/wlc':>7} {'p99.9/wlc':>9}" if wbase else "")
            + f" {'be/req':>6} {'on-sched':>8} {'lag99':>6} {'fail':>4}  request shares")
    print(head + "   (ms; lc = nginx least_conn, wlc = weighted least_conn)")
    for name, r in rows.items():
        if "error" in r:
            print(f"{name:32} FAILED: {r['error']}")
            continue
        be = r["backend"]
        line = (f"{name:32} {r['p50_ms']:6.1f} {r['p99_ms']:7.1f} {r['p999_ms']:7.1f} "
                f"{_ratio(r['p99_ms'], base.get('p99_ms', 0)):>7} "
                f"{_ratio(r['p999_ms'], base.get('p999_ms', 0)):>8}")
        if wbase:
            line += (f" {_ratio(r['p99_ms'], wbase.get('p99_ms', 0)):>7} "
                     f"{_ratio(r['p999_ms'], wbase.get('p999_ms', 0)):>9}")
        total = sum(be["received"]) or 1
        shares = "/".join(f"{n / total:.2f}" for n in be["received"])
        line += (f" {sum(be['received']) / max(1, r['sent']):6.3f} "
                 f"{r['on_schedule']:8.3f} {r['send_lag_p99_ms']:6.1f} "
                 f"{r['failed']:4d}  {shares}")
        print(line)
    for name, r in rows.items():
        if "error" not in r and r.get("hedge"):
            print(f"  hedge counters, {name}: {r['hedge']}")
        if "error" not in r and r.get("limits"):
            print(f"  learned limits, {name} (average over the run / last): "
                  + ", ".join(f"{n} {v['avg']:.2f}/{v['last']}" for n, v in r["limits"].items()))
    if "half_load_p99_ms" in res:
        report_overload(res)
        if "error" not in r and len(r.get("requests_per_process", [])) > 1:
            print(f"  node requests per proxy process, {name}: {r['requests_per_process']}")
    late = [n for n, r in rows.items() if "error" not in r and generator_late(r)]
    if late:
        print(f"  WARNING: the generator fell behind its schedule for {', '.join(late)}: "
              "those latencies include the generator's own lag")
    if not res["weighted"] and not res["herding"]:
        print("  weights are equal: each weighted nginx row repeats its unweighted config, "
              "so their difference is this run's noise")
    if not any(r.get("hedge") for r in rows.values() if "error" not in r):
        print("  hedge counters: none (/stats has no \"hedge\" key): if this proxy does not "
              "hedge, its hedge / no-hedge rows run the same code and differ by noise only")
    loads = [f"{r['load1']:.1f}" for r in rows.values() if "load1" in r]
    print(f"  1-min load average of the machine after each contender: {' '.join(loads)} "
          f"(2 cores)")
    if res["herding"]:
        print("  in-flight work per node (time-weighted concurrency share); max share / fair "
              "share (target <= 1.3x):")
        for name, r in rows.items():
            if "error" not in r:
                be = r["backend"]
                print(f"    {name:32} shares {be['inflight_share']}  avg conc "
                      f"{be['avg_concurrency']}  peak {be['max_concurrency']}  "
                      f"max/fair {be['max_share_over_fair']:.2f}x")
    print(f"  chart: {res['chart']}")


def report_overload(res: dict[str, Any]) -> None:
    """Goodput (200s within 1 s) over capacity, the p99 of the 200s against the proxy's
    own at 0.5x capacity, and the refusals: how many, how fast, with Retry-After."""
    half = res["half_load_p99_ms"]
    print(f"  overload (tfserving-lb's own p99 at 0.5x capacity: {half:.1f} ms):")
    for name, r in res["contenders"].items():
        if "error" in r:
            continue
        refusal = r.get("refused_p99_ms")
        print(f"    {name:30} goodput {r.get('goodput_of_capacity', float('nan')):.2f}x "
              f"capacity, p99 of 200s {r['p99_ms']:.0f} ms ({_ratio(r['p99_ms'], half)} the "
              f"0.5x p99), refused {r.get('refused', 0)} (p99 "
              f"{'—' if refusal is None else f'{refusal:.1f} ms'}, Retry-After on "
              f"{r.get('retry_after', 0)}), connection errors/timeouts "
              f"{r.get('connection_errors', 0)}, statuses {r['statuses']}")
