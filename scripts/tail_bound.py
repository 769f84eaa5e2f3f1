"""What the best dispatcher could reach in bench_policy's simulated scenarios: a bound.

    python scripts/tail_bound.py [--seconds 600] [--seed 7] [--hop-ms 1]

Called by hand (no processes, no sockets, one core for about a minute); the
figures it prints are quoted in the closing notes of the tail-latency work.

It replays the nodes of `harness/simnode.py` in a discrete-event model, exactly:
each node serves at most `slots` requests at once, queues the rest FIFO, draws
each request's work from a lognormal with the node's mean and sigma 0.5, and
makes no progress (and sends no reply) during its stall windows. Open-loop
Poisson arrivals at 70 % of capacity, as bench_policy sends them, and no proxy
overhead at all. The dispatchers:

* `least_conn` / `weighted least_conn`: nginx's, least in flight (/ weight);
* `least_load (exact tau)`: tfserving-lb's formula with every node's true mean
  time as τ and no stall detection — the policy with perfect learning;
* `oracle (queues)`: knows each node's queue and the remaining work of every
  request on it, and sends a request where it is expected to finish first
  (the request's own work is known only by its mean) — the best any
  non-clairvoyant policy can do without hedging, greedily;
* `oracle (clairvoyant)`: knows also what this request's work will be on every
  node and where the stalls fall — a lower bound for hedging policies too:
  a hedge only exists to discover what this oracle already knows;
* `late binding (true L)` / `late binding (learned L)`: tfserving-lb's own
  scheduler (`lb.request.scheduler`, run against the same nodes event by event by
  `scripts/late_sim.py`): the proxy holds the queue and a node gets a request
  only into a free slot, with each node's limit pinned to its true slots, or
  learned from its replies (`lb.pool.concurrency`, from the default start), as the
  proxy runs it. So the bound and the design are checked together.

`--hop-ms` adds the time from the proxy to a node and back, each way, to least_conn
and to late binding (the oracles stay without it): a request reaches its node that
much after it is sent, and its reply the dispatcher that much after it leaves the
node. Late binding then leaves each slot idle for the round trip between two
requests unless a node holds one more (`policy.concurrency.prefetch`); about 1 ms
reproduces bench_policy's ratios on a shared 2-core box.

Every ratio is to `least_conn` in the same run (weighted least_conn for the
3:3:1 weights), as bench_policy reports them. Two more scenarios run the
scheduler alone: overload (1.7× capacity: goodput, p99 of the answers, how
fast refusals come back) and 8-slot nodes at 0.85× (the learned limits).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scripts import late_sim

SIGMA = 0.5


@dataclass
class Node:
    mean_s: float
    weight: float = 1.0
    stall_s: float = 0.0          # stall length
    every_s: float = 0.0          # stall period (0: never)
    slots: int = 2
    free: list[float] = field(default_factory=list)      # when each slot is next free
    finishes: list[float] = field(default_factory=list)  # replies not sent yet

    def __post_init__(self) -> None:
        self.free = [0.0] * self.slots

    def advance(self, start: float, work: float) -> float:
        """When `work` seconds of service starting at `start` end, stalls skipped."""
        return late_sim.finish_time(start, work, self.every_s, self.stall_s)

    def finish_if_sent(self, now: float, work: float) -> float:
        return self.advance(max(now, min(self.free)), work)

    def send(self, now: float, work: float) -> float:
        i = self.free.index(min(self.free))
        done = self.advance(max(now, self.free[i]), work)
        self.free[i] = done
        self.finishes.append(done)
        return done - now

    def inflight(self, now: float) -> int:
        self.finishes = [f for f in self.finishes if f > now]
        return len(self.finishes)


def draw(rng: random.Random, mean_s: float) -> float:
    mu = math.log(mean_s) - SIGMA * SIGMA / 2          # lognormal with this mean
    return rng.lognormvariate(mu, SIGMA)


Policy = Callable[[list[Node], float, list[float], random.Random], int]


def least_conn(weighted: bool) -> Policy:
    def pick(nodes: list[Node], now: float, _work: list[float], rng: random.Random) -> int:
        scores = [n.inflight(now) / (n.weight if weighted else 1.0) for n in nodes]
        best = min(scores)
        return rng.choice([i for i, s in enumerate(scores) if s == best])
    return pick


def least_load(nodes: list[Node], now: float, _work: list[float], rng: random.Random) -> int:
    scores = [(n.inflight(now) + 1) * n.mean_s / n.weight for n in nodes]
    best = min(scores)
    return rng.choice([i for i, s in enumerate(scores) if s <= best * (1 + 1e-9)])


def oracle_queues(nodes: list[Node], now: float, _work: list[float], _rng: random.Random) -> int:
    ends = [n.finish_if_sent(now, n.mean_s) for n in nodes]
    return ends.index(min(ends))


def oracle_clairvoyant(nodes: list[Node], now: float, work: list[float],
                       _rng: random.Random) -> int:
    ends = [n.finish_if_sent(now, w) for n, w in zip(nodes, work, strict=True)]
    return ends.index(min(ends))


@dataclass
class Scenario:
    title: str
    means_ms: list[float]
    weights: list[float]
    stall: tuple[int, float, float] | None = None        # node, ms, every s

    def nodes(self) -> list[Node]:
        out = [Node(m / 1000.0, w) for m, w in zip(self.means_ms, self.weights, strict=True)]
        if self.stall is not None:
            i, ms, every = self.stall
            out[i].stall_s, out[i].every_s = ms / 1000.0, every
        return out

    @property
    def rate(self) -> float:
        return 0.7 * sum(2 / (m / 1000.0) for m in self.means_ms)


SCENARIOS = {
    "slow331": Scenario("one node 3x slower, weights 3:3:1", [20, 20, 60], [3, 3, 1]),
    "slow111": Scenario("one node 3x slower, equal weights", [20, 20, 60], [1, 1, 1]),
    "stall": Scenario("one node stalls 200 ms every 2 s", [20, 20, 20], [1, 1, 1],
                      stall=(2, 200.0, 2.0)),
}


def simulate(sc: Scenario, policy: Policy, seconds: float, seed: int,
             hedge_after_ms: float | None = None, hop_s: float = 0.0) -> list[float]:
    """Latencies (ms) of every request of a `seconds`-long Poisson run.

    With `hedge_after_ms`, a request not answered by then also goes to the other
    node where it would finish first (a fresh draw of its work there), and the
    first answer counts. Optimistic on purpose: the copy takes no capacity from
    anyone, and it sees the queues as they were when the request arrived.

    With `hop_s`, a request reaches its node `hop_s` after it is sent and its reply
    the dispatcher `hop_s` after the node sends it (late_sim's hop): the policy counts
    as in flight what it has not heard back from."""
    arrivals, works = random.Random(seed), random.Random(seed + 1)
    rng, hedges = random.Random(seed + 2), random.Random(seed + 3)
    nodes = sc.nodes()
    now, out = 0.0, []
    while now < seconds:
        now += arrivals.expovariate(sc.rate)
        work = [draw(works, n.mean_s) for n in nodes]
        i = policy(nodes, now - hop_s, work, rng)
        ms = 1000.0 * (nodes[i].send(now + hop_s, work[i]) + 2 * hop_s)
        if hedge_after_ms is not None and ms > hedge_after_ms:
            at = now + hedge_after_ms / 1000.0
            copy = min(n.finish_if_sent(at, draw(hedges, n.mean_s))
                       for j, n in enumerate(nodes) if j != i)
            ms = min(ms, 1000.0 * (copy - now))
        out.append(ms)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


POLICIES: list[tuple[str, Policy]] = [
    ("least_conn", least_conn(False)),
    ("weighted least_conn", least_conn(True)),
    ("least_load (exact tau)", least_load),
    ("oracle (queues)", oracle_queues),          # rows[3]: the hedged row builds on it
    ("oracle (clairvoyant)", oracle_clairvoyant),
]


def late(sc: Scenario, seconds: float, seed: int, learn: bool,
         hop_s: float = 0.0) -> late_sim.Outcome:
    """The proxy's scheduler on this scenario's nodes (scripts/late_sim.py)."""
    def nodes() -> list[late_sim.SimNode]:
        out = [late_sim.SimNode(m / 1000.0) for m in sc.means_ms]
        if sc.stall is not None:
            i, ms, every = sc.stall
            out[i].stall_s, out[i].every_s = ms / 1000.0, every
        return out
    return late_sim.simulate(nodes, sc.weights, sc.rate, seconds, seed, learn=learn,
                             hop_s=hop_s)


def overload(seconds: float, seed: int) -> None:
    """1.7× capacity on 20/20/60 ms nodes, learned limits: goodput (answers within 1 s)
    over capacity, the p99 of the answers against the proxy's own at 0.5×, refusals."""
    def nodes() -> list[late_sim.SimNode]:
        return [late_sim.SimNode(0.02), late_sim.SimNode(0.02), late_sim.SimNode(0.06)]
    cap = 2 / 0.02 + 2 / 0.02 + 2 / 0.06
    half = late_sim.simulate(nodes, [1, 1, 1], 0.5 * cap, seconds, seed, learn=True)
    hot = late_sim.simulate(nodes, [1, 1, 1], 1.7 * cap, seconds, seed, learn=True)
    span = seconds - 2.0
    good = sum(1 for ms in hot.latencies_ms if ms <= 1000) / span
    p99, base = pct(hot.latencies_ms, 0.99), pct(half.latencies_ms, 0.99)
    refusal = pct(hot.refused_ms, 0.99) if hot.refused_ms else float("nan")
    print(f"\noverload: 1.7x capacity ({1.7 * cap:.0f} req/s), learned limits: goodput "
          f"{good / cap:.2f}x capacity, p99 of the answers {p99:.0f} ms = {p99 / base:.2f}x "
          f"its own p99 at 0.5x ({base:.0f} ms), {len(hot.refused_ms)} refused (p99 "
          f"{refusal:.1f} ms); limits {_limits(hot)}")


def slots8(seconds: float, seed: int) -> None:
    """Three 60 ms nodes with 8 slots at 0.85× capacity: the learned limits, goodput and
    p99 against least_conn."""
    def nodes() -> list[late_sim.SimNode]:
        return [late_sim.SimNode(0.06, slots=8) for _ in range(3)]
    rate = 0.85 * 3 * 8 / 0.06
    arrivals, works, rng = random.Random(seed), random.Random(seed + 1), random.Random(seed + 2)
    lc_nodes = [Node(0.06, slots=8) for _ in range(3)]
    now, lc = 0.0, []
    while now < seconds:
        now += arrivals.expovariate(rate)
        work = [draw(works, n.mean_s) for n in lc_nodes]
        i = least_conn(False)(lc_nodes, now, work, rng)
        lc.append(1000.0 * lc_nodes[i].send(now, work[i]))
    out = late_sim.simulate(nodes, [1, 1, 1], rate, seconds, seed, learn=True)
    good = len(out.latencies_ms) / ((seconds - 2.0) * rate)
    print(f"\n8-slot nodes (3 x 60 ms) at 0.85x: learned limits {_limits(out)}; goodput "
          f"{good:.3f}, p99 {pct(out.latencies_ms, 0.99):.0f} ms = "
          f"{pct(out.latencies_ms, 0.99) / pct(lc, 0.99):.2f}x least_conn, p50 "
          f"{pct(out.latencies_ms, 0.5) - pct(lc, 0.5):+.1f} ms")


def _limits(out: late_sim.Outcome) -> str:
    return ", ".join(f"{n} {v:.2f}" for n, v in out.learned().items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="simulated, per policy")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--hop-ms", type=float, default=0.0,
                        help="proxy-to-node time each way, for nginx and late binding "
                             "(bench_policy's figures reproduce at about 1)")
    args = parser.parse_args()
    hop = args.hop_ms / 1000.0
    for key, sc in SCENARIOS.items():
        print(f"\n{key}: {sc.title}, Poisson {sc.rate:.0f} req/s, {args.seconds:g} s simulated"
              f", hop {args.hop_ms:g} ms (least_conn and late binding)")
        print(f"{'dispatcher':26} {'p50':>7} {'p99':>7} {'p99.9':>7} {'p99/base':>8} "
              f"{'p99.9/base':>10}")
        rows = [(name, simulate(sc, policy, args.seconds, args.seed,
                                hop_s=hop if name.endswith("least_conn") else 0.0))
                for name, policy in POLICIES]
        p95 = pct(rows[3][1], 0.95)           # of oracle (queues): 5 % of requests hedge
        rows.append((f"{rows[3][0]} + hedges", simulate(sc, oracle_queues, args.seconds,
                                                      args.seed, hedge_after_ms=p95)))
        limits = []
        for learn in (False, True):
            out = late(sc, args.seconds, args.seed, learn, hop_s=hop)
            rows.append((f"late binding ({'learned' if learn else 'true'} L)",
                         out.latencies_ms))
            if learn:
                limits.append(_limits(out))
        weighted = len(set(sc.weights)) > 1
        base_rows = rows[1][1] if weighted else rows[0][1]      # weighted lc for 3:3:1
        base = pct(base_rows, 0.99), pct(base_rows, 0.999)
        for name, lat in rows:
            p50, p99, p999 = pct(lat, 0.5), pct(lat, 0.99), pct(lat, 0.999)
            print(f"{name:26} {p50:7.1f} {p99:7.1f} {p999:7.1f} {p99 / base[0]:7.2f}x "
                  f"{p999 / base[1]:9.2f}x")
        print(f"  base: {'weighted ' if weighted else ''}least_conn; learned limits "
              f"(average over the run): {limits[0]}")
    overload(min(args.seconds, 60.0), args.seed)
    slots8(min(args.seconds, 60.0), args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
