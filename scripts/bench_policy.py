"""Policies side by side: tfserving-lb vs nginx in front of the same nodes.

    .venv/bin/python scripts/bench_policy.py [--quick] [--seconds 20] [--rate 200]
                                             [--scenarios real,slow331,slow111,stall,herding]

Scenarios (each runs its contenders one after the other against the SAME
node processes, with the same seeded open-loop Poisson schedule):

* `real`: three half_plus_two TensorFlow workers (tests/data/models), 10/10/40
  ms, then 10/10/10 ms, at `--rate` req/s, evenly spaced: nginx least_conn and
  round robin, tfserving-lb least_load / least_conn / round_robin. The slow
  node's share of requests comes from X-Node.
* `slow331`, `slow111`, `stall`, `herding`: simulated nodes (harness/simnode.py:
  2 service slots each, lognormal service times with sigma 0.5, queueing
  inside the node) at 70 % of the pool's capacity (Σ slots / mean service
  time): 20/20/60 ms with weights 3:3:1, the same with 1:1:1, three 20 ms
  nodes one of which stalls 200 ms every 2 s, and three equal 20 ms nodes for
  herding. Contenders: nginx round robin, weighted round robin, least_conn,
  weighted least_conn (one worker process, upstream keep-alive), then
  tfserving-lb least_load without and with hedging. `herding` instead runs
  nginx round robin and least_conn, tfserving-lb with one process, and
  `serve --workers 4` without and with hedging, over 64 client connections
  (SO_REUSEPORT spreads connections, not requests), and reports each node's
  share of the in-flight work (time-weighted concurrency from /_sim/stats)
  and the largest share over the fair share (target ≤ 1.3×).

Latency is measured from each request's scheduled start (harness/loadgen.py);
the table gives p50, p99, p99.9 with ratios to nginx least_conn (and to
weighted least_conn for 3:3:1), backend requests per client request (what
hedging costs), the proxy's hedge counters when /stats has them, and the
generator's own rate and lag (it shares the cores; a late generator is
flagged). Writes bench-out/bench_policy.json and one latency-CDF PNG per
scenario. 127.0.0.1 only; bounded in requests and time. Installs nginx-light
with apt-get when missing. The tables are printed by scripts/policy_report.py.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import simnode
from harness.loadgen import Result, open_loop, run
from harness.procs import free_port, wait_http
from scripts.benchenv import OUT, Bench, http_get, proxy_report
from scripts.charts import NOISE_NOTE, cdf_chart
from scripts.policy_report import report_generator, report_real, report_sim

MODEL = "half_plus_two"
SIM_MODEL = "mnist"
TEST_MODELS = Path(__file__).resolve().parent.parent / "tests" / "data" / "models"
SIM_BODY = orjson.dumps({"instances": [[0.5] * 8]})

BALANCER = """
    upstream tf {{
        {method}
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://tf;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 60s;
            add_header X-Node $upstream_addr always;
        }}
    }}
"""


def start_nginx(bench: Bench, name: str, ports: list[int], method: str, *,
                weights: list[float] | None = None, model: str = MODEL) -> str:
    """nginx (one worker process) balancing over `ports`; returns its URL."""
    port = free_port()
    ws = weights or [1] * len(ports)
    servers = "\n".join(f"        server 127.0.0.1:{p} weight={round(w)};"
                        for p, w in zip(ports, ws, strict=True))
    bench.start_nginx(f"policy-{name.replace(' ', '_')}",
                      BALANCER.format(method=method, servers=servers, port=port),
                      f"http://127.0.0.1:{port}/v1/models/{model}")
    return f"http://127.0.0.1:{port}"


# -- the real-worker scenario ------------------------------------------------------


def body(i: int) -> bytes:
    return orjson.dumps({"instances": [float(i)]})


def measure(url: str, rate: float, seconds: float, slow: set[str]) -> dict[str, Any]:
    run(open_loop(f"{url}/v1/models/{MODEL}:predict", body, rate=rate,
                  count=int(rate * 2)))                       # warm-up
    res = run(open_loop(f"{url}/v1/models/{MODEL}:predict", body, rate=rate,
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
        before = set(bench.others)
        url = start_nginx(bench, name, ports, method)
        results[name] = measure(url, rate, seconds, slow)
        stop_new(bench, before)
    for policy in ("least_load", "least_conn", "round_robin"):
        url, _admin, proc = bench.start_proxy(f"policy-{policy}", nodes,
                                              policy={"name": policy},
                                              cache={"backend": "none"})
        results[f"tfserving-lb {policy}"] = measure(url, rate, seconds, slow)
        bench.stop(proc)
    for proc in procs:
        proc.terminate()
    return results


def stop_new(bench: Bench, before: set[subprocess.Popen[bytes]]) -> None:
    for proc in [p for p in bench.others if p not in before]:
        bench.stop(proc)


# -- simulated-node scenarios ------------------------------------------------------


@dataclass
class Scenario:
    key: str
    title: str
    means_ms: list[float]
    weights: list[float]
    stalls: dict[int, tuple[float, float]] = field(default_factory=dict)  # i -> (ms, every s)
    herding: bool = False
    slots: int = 2
    load: float = 0.7               # of capacity
    overload: bool = False          # report goodput and refusals, and a 0.5× baseline

    @property
    def capacity_rps(self) -> float:
        return sum(self.slots / (m / 1000.0) for m in self.means_ms)

    @property
    def rate(self) -> float:
        return round(self.load * self.capacity_rps, 1)

    @property
    def weighted(self) -> bool:
        return len(set(self.weights)) > 1


SCENARIOS = {
    "slow331": Scenario("slow331", "slow node, weights 3:3:1 (20/20/60 ms)",
                        [20, 20, 60], [3, 3, 1]),
    "slow111": Scenario("slow111", "slow node, equal weights (20/20/60 ms)",
                        [20, 20, 60], [1, 1, 1]),
    "stall": Scenario("stall", "stalling node (3 x 20 ms, n2 stalls 200 ms every 2 s)",
                      [20, 20, 20], [1, 1, 1], stalls={2: (200.0, 2.0)}),
    "herding": Scenario("herding", "herding (3 x 20 ms, equal weights)",
                        [20, 20, 20], [1, 1, 1], herding=True),
    "overload": Scenario("overload", "overload: 1.7x capacity (20/20/60 ms, 2 slots each)",
                         [20, 20, 60], [1, 1, 1], load=1.7, overload=True),
    "slots8": Scenario("slots8", "8-slot nodes (3 x 60 ms) at 0.85x capacity",
                       [60, 60, 60], [1, 1, 1], slots=8, load=0.85),
}


def start_simnodes(bench: Bench, sc: Scenario) -> list[int]:
    ports = [free_port() for _ in sc.means_ms]
    for i, (port, mean) in enumerate(zip(ports, sc.means_ms, strict=True)):
        stall_ms, every_s = sc.stalls.get(i, (0.0, 0.0))
        cmd = simnode.command(port, mean, slots=sc.slots, seed=100 + i, model=SIM_MODEL,
                              stall_ms=stall_ms, stall_every_s=every_s)
        log = open(bench.logs / f"simnode-{sc.key}-{i}.log", "wb")  # noqa: SIM115
        bench.others.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        log.close()
    for port in ports:
        wait_http(f"http://127.0.0.1:{port}/v1/models/{SIM_MODEL}", 15.0)
    return ports


def sim_contenders(sc: Scenario) -> list[tuple[str, dict[str, Any]]]:
    """(name, how to start it) in the order they run. "tfserving-lb" is the default
    config (the proxy's queue, learned limits, rescues on, p95 hedges off)."""
    lb = {"policy": {"name": "least_load", "stall_factor": 3}}
    off, on = {"enabled": False}, {"enabled": True, "max_ratio": 0.05}
    if sc.overload or sc.slots != 2:
        return [("nginx least_conn", {"nginx": "least_conn;"}),
                ("tfserving-lb", {**lb, "hedge": off})]
    if sc.herding:
        return [("nginx round robin", {"nginx": ""}),
                ("nginx least_conn", {"nginx": "least_conn;"}),
                ("tfserving-lb 1 process", {**lb, "hedge": off, "workers": 1}),
                ("tfserving-lb --workers 4", {**lb, "hedge": off, "workers": 4}),
                ("tfserving-lb --workers 4 +hedge", {**lb, "hedge": on, "workers": 4})]
    return [("nginx round robin", {"nginx": ""}),
            ("nginx weighted round robin", {"nginx": "", "weighted": True}),
            ("nginx least_conn", {"nginx": "least_conn;"}),
            ("nginx weighted least_conn", {"nginx": "least_conn;", "weighted": True}),
            ("tfserving-lb", {**lb, "hedge": off}),
            ("tfserving-lb +p95 hedges", {**lb, "hedge": on})]


def start_contender(bench: Bench, sc: Scenario, ports: list[int], name: str,
                    how: dict[str, Any]) -> tuple[str, str | None, int]:
    """Start one contender; (url, admin url or None, processes)."""
    if "nginx" in how:
        weights = sc.weights if how.get("weighted") else None
        return start_nginx(bench, name, ports, how["nginx"], weights=weights,
                           model=SIM_MODEL), None, 1
    nodes = [{"name": f"n{i}", "rest": f"http://127.0.0.1:{p}", "weight": w}
             for i, (p, w) in enumerate(zip(ports, sc.weights, strict=True))]
    workers = how.get("workers", 1)
    url, admin, _proc = bench.start_proxy(
        f"policy-{sc.key}-{name.replace(' ', '_')}", nodes, workers=workers,
        cache={"backend": "none"}, policy=how["policy"], hedge=how["hedge"])
    return url, admin, workers


class LimitSampler:
    """Every second of a run, each node's learned limit from the proxy's /stats (one
    process: its own limits); the averages and the last, per node."""

    def __init__(self, admin: str | None) -> None:
        self.admin = admin
        self.samples: dict[str, list[int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LimitSampler:
        if self.admin is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                doc = orjson.loads(http_get(f"{self.admin}/stats", timeout=2.0)[2])
            except (OSError, ValueError):
                continue
            for n in doc.get("nodes", []):
                if "limit" in n:
                    self.samples.setdefault(n["name"], []).append(int(n["limit"]))

    def report(self) -> dict[str, Any]:
        return {name: {"avg": round(sum(v) / len(v), 2), "last": v[-1]}
                for name, v in self.samples.items() if v}


def run_contender(url: str, ports: list[int], rate: float, args: argparse.Namespace,
                  connections: int, admin: str | None = None, timeout_s: float = 10.0
                  ) -> tuple[Result, dict[str, Any], dict[str, Any]]:
    """Warm up, then the measured run; (client result, node deltas over that run, the
    learned limits sampled during it)."""
    target = f"{url}/v1/models/{SIM_MODEL}:predict"
    run(open_loop(target, lambda _i: SIM_BODY, rate=rate, count=int(rate * args.warm),
                  arrivals="poisson", seed=args.seed + 1, connections=connections,
                  timeout_s=timeout_s))
    for p in ports:
        http_get(f"http://127.0.0.1:{p}/_sim/reset", method="POST", body=b"")
    before = simnode.read_stats(ports)
    with LimitSampler(admin) as limits:
        res = run(open_loop(target, lambda _i: SIM_BODY, rate=rate,
                            count=int(rate * args.seconds),
                            max_duration_s=args.seconds * 1.5 + 5, arrivals="poisson",
                            seed=args.seed, connections=connections, timeout_s=timeout_s))
    time.sleep(0.3)      # hedge losers may still sit in a node's queue: count them too
    return res, simnode.deltas(before, simnode.read_stats(ports)), limits.report()


def overload_row(res: Result, sc: Scenario) -> dict[str, Any]:
    """What the overload targets read: goodput (200s within 1 s) over capacity, the
    p99 of the 200s, and how refusals came back."""
    return {"goodput_rps": round(res.goodput(1000.0), 1),
            "goodput_of_capacity": round(res.goodput(1000.0) / sc.capacity_rps, 3),
            "connection_errors": res.statuses.get(0, 0)}


def run_scenario(bench: Bench, sc: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    rate = sc.rate
    connections = 64 if sc.herding else 1
    out: dict[str, Any] = {"title": sc.title, "rate": rate, "capacity_rps": sc.capacity_rps,
                           "connections": connections, "weighted": sc.weighted,
                           "herding": sc.herding, "contenders": {}}
    latencies: dict[str, list[float]] = {}
    before_all = set(bench.others)
    try:
        ports = start_simnodes(bench, sc)
        for name, how in sim_contenders(sc):
            before = set(bench.others)
            row: dict[str, Any]
            try:
                url, admin, procs = start_contender(bench, sc, ports, name, how)
                if sc.overload and admin is not None:       # its own p99 at 0.5× first
                    half, _, _ = run_contender(url, ports, round(0.5 * sc.capacity_rps, 1),
                                               args, connections, admin)
                    out["half_load_p99_ms"] = round(half.pct(99), 3)
                res, nodes, limits = run_contender(url, ports, rate, args, connections,
                                                   admin, timeout_s=30.0 if sc.overload
                                                   else 10.0)
                row = {**res.summary(), "backend": nodes, **proxy_report(admin, procs),
                       "limits": limits, "load1": os.getloadavg()[0]}
                if sc.overload:
                    row.update(overload_row(res, sc))
                latencies[name] = res.latencies_ms
            except (RuntimeError, TimeoutError, OSError) as exc:
                row = {"error": str(exc)}
            finally:
                stop_new(bench, before)
            out["contenders"][name] = row
            done = row.get("error") or f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms"
            print(f"  {sc.key} / {name}: {done}", flush=True)
    finally:
        stop_new(bench, before_all)
    out["chart"] = str(cdf_chart(OUT / f"bench_policy_{sc.key}.png",
                                 f"{sc.title}, Poisson {rate:.0f} req/s "
                                 f"({100 * sc.load:.0f} % of capacity)", latencies))
    return out


def generator_check(bench: Bench, rates: list[float], args: argparse.Namespace
                    ) -> list[dict[str, Any]]:
    """The generator alone at these rates against a node that answers at once
    (0.2 ms, 64 slots): how closely it keeps its schedule with nothing in between."""
    sc = Scenario("gencheck", "generator check", [0.2], [1], slots=64)
    before = set(bench.others)
    out = []
    try:
        port = start_simnodes(bench, sc)[0]
        target = f"http://127.0.0.1:{port}/v1/models/{SIM_MODEL}:predict"
        for rate in rates:
            for conns in (1, 64):
                run(open_loop(target, lambda _i: SIM_BODY, rate=rate, count=int(rate * args.warm),
                              arrivals="poisson", seed=args.seed + 1, connections=conns))
                res = run(open_loop(target, lambda _i: SIM_BODY, rate=rate,
                                    count=int(rate * min(args.seconds, 5.0)),
                                    arrivals="poisson", seed=args.seed, connections=conns))
                out.append({"rate": rate, "connections": conns, **res.summary(),
                            "load1": os.getloadavg()[0]})
    finally:
        stop_new(bench, before)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="the real-worker scenario")
    parser.add_argument("--seconds", type=float, default=20.0, help="per contender")
    parser.add_argument("--quick", action="store_true", help="3 s per contender: a smoke run")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--scenarios", default="real," + ",".join(SCENARIOS))
    args = parser.parse_args()
    args.warm = 2.0
    if args.quick:
        args.seconds, args.warm = 3.0, 1.0
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(chosen) - {"real", *SCENARIOS}
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    t0 = time.monotonic()
    bench = Bench()
    results: dict[str, Any] = {}
    try:
        if "real" in chosen:
            results["mixed"] = run_pass(bench, [10.0, 10.0, 40.0], args.rate, args.seconds)
            results["equal"] = run_pass(bench, [10.0, 10.0, 10.0], args.rate, args.seconds)
        sims = [SCENARIOS[k] for k in chosen if k in SCENARIOS]
        if sims:
            top = max(sc.rate for sc in sims)
            results["generator"] = generator_check(bench, [round(top), round(2 * top)], args)
        for sc in sims:
            results[sc.key] = run_scenario(bench, sc, args)
    finally:
        bench.close()
    results["wall_s"] = round(time.monotonic() - t0, 1)
    (OUT / "bench_policy.json").write_text(json.dumps(results, indent=1))
    print(f"\nNOTE: {NOISE_NOTE}")
    if "real" in chosen:
        report_real(f"real workers, one node 4x slower (10/10/40 ms), open loop "
                    f"{args.rate:.0f} req/s", results["mixed"])
        report_real(f"real workers, equal (10 ms), open loop {args.rate:.0f} req/s",
                    results["equal"])
    if "generator" in results:
        report_generator(results["generator"])
    for key in chosen:
        if key in SCENARIOS:
            report_sim(results[key])
    print(f"\n{results['wall_s']} s wall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
