"""What bench_batching prints and draws: the sustained rates, the low-rate latencies,
the checks, the closed-loop rates, and the latency-vs-throughput chart.

Called by scripts/bench_batching.py: `step_line` for each step as it runs,
`report` and `chart` once the run is over, with the results it also writes to
bench-out/bench_batching.json. It also holds the contenders' names and the bars
their steps are held to (`P99_MS`, `MIN_ACHIEVED`, `LOW_SHARE`), which the run
imports from here. Guarantees: nothing is measured or started here; the report
only reads the results (a missing section is skipped or says why), every
figure against nginx is a ratio from the same run, and `chart` writes
bench-out/bench_batching.png and returns its path.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from scripts.batching_check import TOLERANCE
from scripts.benchenv import OUT
from scripts.charts import latency_chart

# The bars a step is held to and the contenders' names (bench_batching imports them).
P99_MS = 50.0
MIN_ACHIEVED = 0.95
LOW_SHARE = 0.2
BATCHING = {"max_rows": 64}
NGINX, LB, LB_BATCH = "nginx least_conn", "tfserving-lb", "tfserving-lb +batching"
# The same proxy without its concurrency limiter: 64 slots a node, pinned (no queue
# in front of the nodes, as before the proxy held one): what the limiter costs.
LB_FREE = "tfserving-lb, no limiter"


def step_line(s: dict[str, Any]) -> str:
    verdict = "ok" if s["good"] else "FAIL " + ", ".join(s["why"])
    return (f"achieved {s['achieved_rps']:7.1f}/s  p50 {s['p50_ms']:6.2f}  "
            f"p99 {s['p99_ms']:7.2f} ms"
            f"  fail {s['failed']}  rows/call {s['rows_per_call']}  on-sched "
            f"{s['on_schedule']:.3f}  lag99 {s['send_lag_p99_ms']:.1f} ms"
            f"{'  GEN-LATE' if s['gen_late'] else ''}  load {s['load1']:.1f}  {verdict}")


def _ms(x: float) -> str:
    return f"{x:+.2f} ms" if x == x else "—"


def report_sustained(res: dict[str, Any], args: argparse.Namespace) -> None:
    rows = res["contenders"]
    base = rows[NGINX]["good"]["achieved_rps"] if rows[NGINX]["good"] else float("nan")
    print(f"\n1. highest rate with p99 <= {P99_MS:.0f} ms, no errors, achieved >= "
          f"{MIN_ACHIEVED:.0%} (Poisson, {args.seconds:g} s per step, x{args.factor:g} from "
          f"{args.start_rate:g}/s, one refining step; a failed step "
          f"{'is run again' if args.confirm else 'is not repeated'}), predictions/s:")
    print(f"   {'contender':24} {'sustained':>9} {'/nginx':>7} {'offered':>7} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'rows/call':>9}  stopped by")
    for name, row in rows.items():
        fails = [", ".join(s["why"]) for s in row["steps"] if s["offered_rps"] == row["stop_rps"]]
        stop = ("--max-rate reached" if row["capped"]
                else f"{row['stop_rps']:.0f}/s: {'; '.join(fails)}")
        g = row["good"]
        if g is None:
            print(f"   {name:24} {'—':>9} {'—':>7}  no good step  stopped by {stop}")
            continue
        print(f"   {name:24} {g['achieved_rps']:9.1f} {g['achieved_rps'] / base:7.3f} "
              f"{g['offered_rps']:7.0f} {g['p50_ms']:7.2f} {g['p99_ms']:7.2f} "
              f"{g['rows_per_call']:9}  {stop}")
    late = sorted({f"{n} at {s['offered_rps']:.0f}/s" for n, r in rows.items()
                   for s in r["steps"] if s["gen_late"]})
    if late:
        print(f"   GEN-LATE (the generator fell behind its schedule; those latencies include "
              f"its own lag): {'; '.join(late)}")


def report_low(res: dict[str, Any]) -> None:
    low = res.get("low")
    if not low:
        print("\n2. skipped: nginx sustained no step")
        return
    base = low[NGINX]["p50_ms"]
    print(f"\n2. at {LOW_SHARE:.0%} of nginx's sustained rate ({res['low_rate']:.0f}/s, Poisson):")
    print(f"   {'contender':24} {'p50 ms':>7} {'p99 ms':>7} {'p50-nginx':>10} {'rows/call':>9} "
          f"{'fail':>4}")
    for name, s in low.items():
        print(f"   {name:24} {s['p50_ms']:7.2f} {s['p99_ms']:7.2f} "
              f"{_ms(s['p50_ms'] - base):>10} {s['rows_per_call']:9} {s['failed']:4d}"
              f"{'  GEN-LATE' if s['gen_late'] else ''}")
    if LB in low and LB_BATCH in low:
        added = low[LB_BATCH]["p50_ms"] - low[LB]["p50_ms"]
        print(f"   batching adds {_ms(added)} to tfserving-lb's p50 "
              f"({'within' if added <= 1.0 else 'OVER'} the 1 ms target); "
              f"{_ms(low[LB_BATCH]['p50_ms'] - base)} over nginx's")


def report_checks(res: dict[str, Any]) -> None:
    c = res.get("correctness")
    if c:
        print(f"\n3. correctness, {c['sent']} single-row requests at once through "
              f"{LB_BATCH} vs direct calls to one worker: {c['rows_compared']} row-format "
              f"predictions, max abs diff {c['max_abs_diff']:.3g}; {c['columnar_compared']} "
              f"columnar -> {{\"outputs\"}}, max abs diff {c['columnar_max_abs_diff']:.3g}; "
              f"bad status {c['bad_status']}, missing/misshapen {c['missing']}; rows per "
              f"backend call {c['rows_per_call']}: {'OK' if c['ok'] else 'FAILED'} "
              f"(tolerance {TOLERANCE:g})")
    print(f"\n4. /stats \"batching\" of {LB_BATCH} (cumulative):")
    for phase in ("after_search", "after_low", "after_correctness"):
        key = f"batching_{phase}"
        if key in res:
            print(f"   {phase.replace('_', ' ')}: {json.dumps(res[key])}")
    if all(res.get(f"batching_{p}") is None for p in ("after_search", "after_low")):
        print("   (none: this proxy has no \"batching\" section, so it does not batch yet and "
              "the two tfserving-lb rows run the same code, differing by noise only)")
    g = res.get("generator")
    if g:
        print(f"\ngenerator alone at {g['rate']:.0f}/s (0.2 ms simulated node, no proxy): "
              f"achieved {g['achieved_rps']:.0f}/s, on-sched {g['on_schedule']:.3f}, lag99 "
              f"{g['send_lag_p99_ms']:.1f} ms, p50 {g['p50_ms']:.2f} ms, p99 {g['p99_ms']:.2f} "
              f"ms, failed {g['failed']}{'  LATE' if g['gen_late'] else ''}")


def report(res: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\n3 MNIST workers (1 inference thread each), one 784-float row per request, "
          f"{args.connections} client sessions; contenders: {NGINX} (keep-alive), {LB}, "
          f"{LB_FREE} and {LB_BATCH} ({BATCHING}), cache none, hedging off")
    print("NOTE: the load generator, the proxy and the workers share the 2 cores of a "
          "shared, noisy box: only ratios from one run compare, not absolute figures")
    print("load average (1/5/15 min) at start: "
          + " ".join(f"{x:.2f}" for x in res["load1_start"])
          + ", at end: " + " ".join(f"{x:.2f}" for x in res.get("load1_end", [])))
    for name, problems in res["problems"].items():
        if problems:
            print(f"FLAGGED {name}: {'; '.join(problems)}")
    if "contenders" in res:
        report_sustained(res, args)
        report_low(res)
    if "closed" in res:
        report_closed(res["closed"], args)
    report_checks(res)


def report_closed(closed: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\n5. closed loop, wrk -t1 -c{{{','.join(map(str, args.closed_connections))}}} "
          f"-d{args.closed_seconds:g}s (predictions/s; best: p99 <= {P99_MS:g} ms, no errors):")
    nginx = closed.get(NGINX, {})
    base_best = (nginx.get("best") or {}).get("rps", float("nan"))
    base_peak = max((r["rps"] for r in nginx.get("runs", [])), default=float("nan"))
    print(f"   {'contender':24} {'best':>8} {'/nginx':>7} {'at c':>5} {'peak':>8} {'/nginx':>7}")
    for name, row in closed.items():
        best = row["best"] or {"rps": float("nan"), "connections": "—"}
        peak = max((r["rps"] for r in row["runs"]), default=float("nan"))
        print(f"   {name:24} {best['rps']:8.0f} {best['rps'] / base_best:7.2f} "
              f"{best['connections']:>5} {peak:8.0f} {peak / base_peak:7.2f}")
    if LB in closed and LB_FREE in closed:
        peak = {n: max((r["rps"] for r in closed[n]["runs"]), default=float("nan"))
                for n in (LB, LB_FREE)}
        print(f"   the limiter's cost: {LB} peak / {LB_FREE} peak = "
              f"{peak[LB] / peak[LB_FREE]:.2f}")


def chart(res: dict[str, Any]) -> Path:
    curves = {}
    for name, row in res.get("contenders", {}).items():
        steps = row["steps"] + ([res["low"][name]] if name in res.get("low", {}) else [])
        curves[name] = [(s["achieved_rps"], s["p50_ms"], s["p99_ms"]) for s in steps]
    return latency_chart(OUT / "bench_batching.png",
                         "3 MNIST workers, one row per request, Poisson", curves, P99_MS,
                         xlabel="predictions/s achieved (open loop)")
