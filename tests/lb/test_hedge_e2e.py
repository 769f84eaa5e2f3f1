"""Hedged requests end to end, through the real proxy: a hedge goes out, wins, and
costs no more than its budget; the losing attempt is cancelled without a leak.

Three simulated nodes (harness/simnode.py); the fastest stops serving for STALL_MS
every PERIOD_S. Two proxies on them in turn, one hedging (p95 hedges and rescues) and one
without either (the control), each
warmed up and then given the same open-loop load. Proves, with figures that can fail:
* every request is answered 200, hedged or not;
* hedges are sent and won, and at most as many as the budget allows: lb.request.hedge's
  budget is a RetryBudget with no free minimum, so hedges sent ≤ max_ratio × the
  client calls the proxy has seen (warm-up included), whatever the timing;
* the hedge rescues the requests caught in a stall: the control's worst latency is
  close to the stall, the hedged run's a fraction of it;
* nothing leaks: the proxy's per-node and request in-flight counts and the nodes'
  own concurrency return to 0 once the load is over;
* backend requests per client request stay within 1 + max_ratio, and never exceed
  client requests + hedges + retries.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from harness import simnode
from harness.loadgen import OpenLoad, Sample
from tests.procs import Proc, ProxyProc, free_port, node, running, wait_until

MODEL = "mnist"
MEAN_MS, SLOTS = 20.0, 4
FAST_MS = 10.0                              # node 0's mean: the one the scheduler fills first
STALL_MS, PERIOD_S = 1000.0, 2.5           # node 0 stalls; any LOAD_S window holds 2 starts
# Requests/s (both > 32 answers per node to warm). Node 0 is the fastest, so the scheduler
# fills its slots first and a stall finds calls in flight on it (`met_stall` checks);
# later calls do not go to it (late binding): those in flight are what rescues are for.
RATE, WARM_S, LOAD_S = 300.0, 2.0, 5.0
MAX_RATIO, MIN_DELAY_MS = 0.1, 5.0


def body(i: int) -> bytes:
    return orjson.dumps({"instances": [[float(i % 10)] * 4]})


@pytest.fixture
def simnodes(logs_dir: Path) -> Iterator[list[int]]:
    """Ports of three simulated nodes; the first one, the fastest, stalls."""
    ports = [free_port() for _ in range(3)]
    procs = [Proc(f"simnode-{port}", simnode.command(
        port, FAST_MS if i == 0 else MEAN_MS, slots=SLOTS, seed=i, model=MODEL,
        stall_ms=STALL_MS if i == 0 else 0.0, stall_every_s=PERIOD_S if i == 0 else 0.0),
        logs_dir) for i, port in enumerate(ports)]
    with running(*procs):
        for proc, port in zip(procs, ports, strict=True):
            proc.wait_http(f"http://127.0.0.1:{port}/v1/models/{MODEL}", 15.0)
        yield ports


@dataclass
class Run:
    warm: list[Sample]
    load: list[Sample]
    stats: dict[str, Any]           # the proxy's /stats once idle after the load
    during: dict[str, Any]          # the proxy's /stats just before the load
    received: int                   # predicts the nodes received during the load
    at_end: str                     # attempts the proxy and the nodes hold as the load ends


def load(p: ProxyProc, seconds: float) -> list[Sample]:
    with OpenLoad(f"{p.url}/v1/models/{MODEL}:predict", body, RATE, max_s=seconds,
                  timeout_s=10.0) as run:
        time.sleep(seconds)
    return run.samples


def in_flight(p: ProxyProc, ports: list[int]) -> str:
    return (f"proxy attempts {[n['inflight'] for n in p.stats()['nodes']]}, nodes "
            f"{[x['concurrency'] for x in simnode.read_stats(ports)]}")


def settle(p: ProxyProc, ports: list[int]) -> None:
    """Wait until nothing is in flight anywhere: proxy requests, proxy attempts, nodes."""
    def idle() -> bool:
        s = p.stats()
        sims = simnode.read_stats(ports)
        return (s["inflight"] == 0 and all(n["inflight"] == 0 for n in s["nodes"])
                and all(x["concurrency"] == 0 for x in sims))
    wait_until(idle, STALL_MS / 1000 + 10.0, f"{p.proc.name} and its nodes idle", 0.25)


def measured_run(logs_dir: Path, ports: list[int], hedge: bool) -> Run:
    p = ProxyProc(logs_dir, [node(f"n{i}", f"http://127.0.0.1:{port}")
                             for i, port in enumerate(ports)],
                  name="hedged" if hedge else "control", cache={"backend": "none"},
                  health={"interval_s": 1.0, "timeout_s": 3.0},
                  hedge={"enabled": hedge, "rescue": hedge, "min_delay_ms": MIN_DELAY_MS,
                         "max_ratio": MAX_RATIO})
    with running(p.proc):
        wait_until(lambda: all(n["healthy"] for n in p.stats()["nodes"]), 10.0,
                   "every node healthy")
        warm = load(p, WARM_S)
        settle(p, ports)
        before, during = simnode.read_stats(ports), p.stats()
        samples = load(p, LOAD_S)
        at_end = in_flight(p, ports)
        settle(p, ports)
        after = simnode.read_stats(ports)
        received = sum(a["received"] - b["received"] for b, a in zip(before, after, strict=True))
        return Run(warm, samples, p.stats(), during, received, at_end)


def met_stall(logs_dir: Path, ports: list[int], hedge: bool, tries: int = 3) -> Run:
    """A measured run in which node 0 had calls in flight when it stalled: the stall
    came while they were in service (the control: one waited most of it; the hedged
    proxy: a rescue went out). Node 0 stalls 40 % of the time and the scheduler leaves
    a node out while its recent replies were slow, so a run may find it idle at both
    stalls (a new proxy that starts during a stall learns it slow); up to `tries` runs,
    and the last one whatever it met, for the assertions to judge."""
    for _ in range(tries - 1):
        run = measured_run(logs_dir, ports, hedge)
        if (run.stats["hedge"]["rescues"] > run.during["hedge"]["rescues"] if hedge else
                max(s.latency_ms for s in run.load) >= 0.6 * STALL_MS):
            return run
        print(f"\n{'hedged' if hedge else 'control'}: node 0 idle at its stalls; again")
    return measured_run(logs_dir, ports, hedge)


def report(runs: dict[str, Run]) -> None:
    for name, run in runs.items():
        top = sorted(run.load, key=lambda s: -s.latency_ms)[:4]
        print(f"\n{name}: hedge {run.stats['hedge']}, calls {len(run.warm) + len(run.load)}, "
              f"received {run.received} for {len(run.load)}, p99 {OpenLoad.p99(run.load):.0f} "
              f"ms, slowest (ms, node, s into the load) "
              f"{[(round(s.latency_ms), s.node, round(s.at - run.load[0].at, 2)) for s in top]}"
              f"; at the load's end {run.at_end}")


def test_hedges_rescue_stalls_within_budget_and_leak_nothing(
        logs_dir: Path, simnodes: list[int]) -> None:
    control = met_stall(logs_dir, simnodes, hedge=False)
    hedged = met_stall(logs_dir, simnodes, hedge=True)
    worst = {name: max(s.latency_ms for s in run.load)
             for name, run in (("control", control), ("hedged", hedged))}
    hedge, calls = hedged.stats["hedge"], len(hedged.warm) + len(hedged.load)
    hedges = hedge["sent"] - hedged.during["hedge"]["sent"]
    report({"control": control, "hedged": hedged})
    for run in (control, hedged):
        assert [s for s in run.warm + run.load if s.status != 200] == []
        assert run.stats["inflight"] == 0 and run.stats["retries"]["retries"] == 0
    assert control.stats["hedge"]["sent"] == 0 and control.received == len(control.load)
    assert hedge["sent"] > 0 and 0 < hedge["won"] <= hedge["sent"]
    # The budget grants a hedge while max_ratio × live deposits - live spends ≥ 1, and a
    # spend expires no earlier than the deposits it was granted on: over any timing,
    # sent ≤ max_ratio × every client call the proxy dispatched (lb.request.hedge,
    # lb.request.retry).
    assert hedge["sent"] <= int(MAX_RATIO * calls + 1e-9), (hedge, calls)
    # The control really met a stall; the hedged run met one too (a rescue went out
    # during the load) and did not wait it out.
    assert worst["control"] >= 0.6 * STALL_MS, worst
    assert hedge["rescues"] > hedged.during["hedge"]["rescues"], hedge
    # Hedged / control worst: 0.09-0.2 alone, 0.41 once inside the full suite on 2 busy
    # cores; 0.99 when hedges did not look again at the stall threshold (the bug).
    assert worst["hedged"] * 2 <= worst["control"], worst
    assert len(hedged.load) <= hedged.received <= len(hedged.load) + hedges
    assert hedged.received / len(hedged.load) <= 1 + MAX_RATIO + 0.02
