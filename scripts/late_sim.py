"""The proxy's own scheduler (`lb.request.scheduler`) against simulated nodes, event by event.

Called by `scripts/tail_bound.py` (the late-binding rows of its tables) and by
its tests. It runs the real `Scheduler`, `NodePool` and learned `Limit` of the
proxy — the code that runs in production, with a simulated clock — against
the node model of `harness/simnode.py` (each node serves at most `slots`
requests at once and queues the rest FIFO, lognormal work with the node's mean
and sigma 0.5, no progress and no reply during its stall windows). No
sockets, no processes, no proxy overhead: what it measures is the policy.

A request's latency runs from its arrival to its reply, or to its refusal
(a 503 of the proxy's queue, counted apart).

`hop_s` (0 by default) is the time from the proxy to a node and back again, each
way: a request reaches its node `hop_s` after the proxy sends it, and the proxy
hears of a reply `hop_s` after the node sends it (the wire, the event loops, the
proxy's own turn). Under late binding a slot then stands idle for 2 × hop_s
between two requests; a dispatcher that sends at once to the node's own queue
(nginx) pays the hops in latency only.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lb.config import parse_config
from lb.errors import LbError
from lb.pool.concurrency import Limit
from lb.pool.nodes import NodePool
from lb.request import dispatch
from lb.request.scheduler import Run, Scheduler, Settings, Ticket

SIGMA = 0.5


def draw(rng: random.Random, mean_s: float) -> float:
    mu = math.log(mean_s) - SIGMA * SIGMA / 2          # lognormal with this mean
    return rng.lognormvariate(mu, SIGMA)


def finish_time(start: float, work: float, every_s: float, stall_s: float) -> float:
    """When `work` seconds of service starting at `start` end on a node that makes no
    progress during its stall windows [k·every_s, k·every_s + stall_s) (every_s 0:
    none). Shared with tail_bound's nodes."""
    if every_s <= 0:
        return start + work
    t = start
    while True:
        k = math.floor(t / every_s)
        stall_end = k * every_s + stall_s
        if t < stall_end:                   # inside a stall: wait it out
            t = stall_end
        next_stall = (k + 1) * every_s
        if t + work <= next_stall:
            return t + work
        work -= next_stall - t
        t = next_stall


@dataclass
class SimNode:
    """One node: `slots` in service, a FIFO queue, stall windows."""

    mean_s: float
    slots: int = 2
    stall_s: float = 0.0
    every_s: float = 0.0
    busy: int = 0
    queue: list[tuple[Run, float]] = field(default_factory=list)

    def advance(self, start: float, work: float) -> float:
        """When `work` seconds of service starting at `start` end, stalls skipped."""
        return finish_time(start, work, self.every_s, self.stall_s)


@dataclass
class Outcome:
    latencies_ms: list[float] = field(default_factory=list)   # answered requests
    refused_ms: list[float] = field(default_factory=list)     # refused by the queue
    limits: dict[str, list[float]] = field(default_factory=dict)   # sampled each second
    started: int = 0

    def learned(self) -> dict[str, float]:
        return {name: sum(v) / len(v) for name, v in self.limits.items() if v}


class Sim:
    """The event loop of one run; the first `warmup` seconds learn τ and are not counted
    (as bench_policy warms each contender up)."""

    def __init__(self, nodes: list[SimNode], weights: list[float], *, learn: bool,
                 seed: int, settings: Settings | None = None,
                 concurrency: dict[str, Any] | None = None, hop_s: float = 0.0) -> None:
        self.now = 0.0
        self.hop_s = hop_s
        self.sim = nodes
        cfg = parse_config({
            "listen": {"grpc": None},
            "nodes": [{"name": f"n{i}", "rest": f"http://127.0.0.1:{9000 + i}", "weight": w}
                      for i, w in enumerate(weights)],
            "policy": {"concurrency": concurrency or {}},
        })
        self.pool = NodePool(cfg.nodes, cfg.policy, clock=lambda: self.now, seed=seed)
        self.names = {node.name: i for i, node in enumerate(self.pool.nodes.values())}
        if not learn:
            for node, sim in zip(self.pool.nodes.values(), nodes, strict=True):
                node.limit = Limit(sim.slots, pinned=True)
        # the proxy's own settings from the default config, unless a test names others
        self.sched = Scheduler(self.pool, settings or dispatch.settings(cfg), seed=seed)
        self.events: list[tuple[float, int, int, Any]] = []
        self.seq = 0
        self.timer_at = math.inf
        self.works = random.Random(seed + 1)
        self.out = Outcome()
        self.born: dict[int, float] = {}
        self.warmup = 2.0           # requests that arrive before are not counted

    def push(self, at: float, kind: int, payload: Any) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, kind, payload))

    # -- what the dispatcher would do ------------------------------------------------

    def on_start(self, run: Run) -> None:
        if self.hop_s > 0:
            self.push(self.now + self.hop_s, 4, run)    # on its way to the node
        else:
            self.reach(run)

    def reach(self, run: Run) -> None:
        """`run`'s request reaches its node: a free slot serves it, else it queues."""
        sim = self.sim[self.names[run.node.name]]
        work = draw(self.works, sim.mean_s) * run.units
        if sim.busy < sim.slots:
            sim.busy += 1
            self.push(sim.advance(self.now, work), 1, run)
        else:
            sim.queue.append((run, work))

    def on_refuse(self, ticket: Ticket, _error: LbError) -> None:
        born = self.born.pop(id(ticket))
        if born >= self.warmup:
            self.out.refused_ms.append(1000.0 * (self.now - born))

    def served(self, run: Run) -> None:
        """The node sent `run`'s reply: its slot serves the next one it holds."""
        sim = self.sim[self.names[run.node.name]]
        if sim.queue:
            nxt, work = sim.queue.pop(0)
            self.push(sim.advance(self.now, work), 1, nxt)
        else:
            sim.busy -= 1
        if self.hop_s > 0:
            self.push(self.now + self.hop_s, 5, run)    # the reply on its way back
        else:
            self.complete(run)

    def complete(self, run: Run) -> None:
        """The proxy has `run`'s reply."""
        self.sched.finished(run, self.now, self.now - run.started, ok=True, sample=True)
        for ticket in run.tickets:
            born = self.born.pop(id(ticket))
            if born >= self.warmup:
                self.out.latencies_ms.append(1000.0 * (self.now - born))

    # -- the run -----------------------------------------------------------------------

    def run(self, rate: float, seconds: float, seed: int) -> Outcome:
        arrivals = random.Random(seed)
        self.push(arrivals.expovariate(rate), 0, None)
        self.push(1.0, 3, None)
        while self.events:
            at, _, kind, payload = heapq.heappop(self.events)
            self.now = at
            if kind == 0:
                if at < seconds:
                    self.arrive()
                    self.push(at + arrivals.expovariate(rate), 0, None)
            elif kind == 1:
                self.served(payload)
            elif kind == 4:
                self.reach(payload)
            elif kind == 5:
                self.complete(payload)
            elif kind == 2:
                self.timer_at = math.inf
            elif kind == 3:
                for node in self.pool.nodes.values():
                    self.out.limits.setdefault(node.name, []).append(node.limit.allowed())
                if at < seconds:
                    self.push(at + 1.0, 3, None)
            due = self.sched.expire(self.now)
            if due is not None and due < self.timer_at:
                self.timer_at = max(due, self.now + 1e-4)
                self.push(self.timer_at, 2, None)
        return self.out

    def arrive(self) -> None:
        ticket = Ticket("m", None, 1.0, 1, self.now + 60.0, self.on_start, self.on_refuse)
        self.born[id(ticket)] = self.now
        self.sched.submit(ticket, self.now)


def simulate(nodes: Callable[[], list[SimNode]], weights: list[float], rate: float,
             seconds: float, seed: int, *, learn: bool,
             settings: Settings | None = None, hop_s: float = 0.0) -> Outcome:
    return Sim(nodes(), weights, learn=learn, seed=seed, settings=settings,
               hop_s=hop_s).run(rate, seconds, seed)
