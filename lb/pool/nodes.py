"""Runtime state of the node pool: counters, in-flight work, τ, load window, health.

Called by `lb.request.dispatch` around every attempt (`pick` → `Node.begin` →
`Node.end`), by `lb.pool.health` to set health and the model versions each node
reports (`set_versions`), by `lb.request.core` to wait for a model to become
AVAILABLE (`readiness`, `wait_available`), and by `lb.admin.app` for `/stats`.
Everything here runs on the event loop thread: no locks, no I/O; the only
awaitable is the bounded wait. The choice itself is delegated to the pure
functions of `lb.pool.policy`.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lb.config import NodeConfig, PolicyConfig
from lb.pool import policy
from lb.pool.concurrency import Limit
from lb.pool.outlier import OutlierPolicy, OutlierState
from lb.rollout.settings import DEFAULT_GROUP


@dataclass(slots=True)
class Waits:
    """Requests that waited for a node serving their model (/stats, /metrics): at
    resolution (`lb.request.core`) or held in the proxy's queue (`lb.request.scheduler`)."""

    waits: int = 0
    seconds: float = 0.0
    max_s: float = 0.0
    timeouts: int = 0

    def count(self, waited: float, timed_out: bool) -> None:
        self.waits += 1
        self.seconds += waited
        self.max_s = max(self.max_s, waited)
        if timed_out:
            self.timeouts += 1

    def as_dict(self) -> dict[str, float | int]:
        return {"waits": self.waits, "seconds": round(self.seconds, 6),
                "max_s": round(self.max_s, 6), "timeouts": self.timeouts}


class Flight:
    """One attempt in flight on a node (stall detection, slots): when it started, its
    units, and `until`: inf while open, 0 once closed, and for a ghost (a cancelled
    attempt the node likely still works on, see `Node.end`) when it lapses. Closed and
    lapsed entries leave the node's list lazily."""

    __slots__ = ("owner", "start", "units", "until")

    def __init__(self, start: float, units: float) -> None:
        self.start = start
        self.units = units
        self.until = math.inf
        self.owner: Any = None      # the scheduler's Run (rescues find a node's attempts)


TauKey = tuple[str, int]        # (model, row bucket): what a node's τ is kept per


def tau_key(model: str, rows: int) -> TauKey:
    """The key of a request's τ on a node: its model and its rows' power-of-two bucket
    (a batch of 64 costs less per row than 64 requests of one)."""
    return (model, rows.bit_length())


@dataclass(slots=True)
class Node:
    """One model server as the proxy sees it."""

    name: str
    rest: str
    grpc: str | None
    weight: float
    tau: policy.Tau
    window: policy.LoadWindow
    healthy: bool = True
    group: str = DEFAULT_GROUP      # lb.rollout: a call with a group goes to its nodes only
    inflight: int = 0
    inflight_units: float = 0.0
    requests: int = 0
    errors: int = 0
    # model -> versions the health checks saw AVAILABLE on this node
    versions: dict[str, frozenset[int]] = field(default_factory=dict)
    # model -> versions reported START or LOADING (they will be AVAILABLE soon)
    loading: dict[str, frozenset[int]] = field(default_factory=dict)
    latest: dict[str, int] = field(default_factory=dict)    # model -> max(versions[model])
    seen: bool = False              # a health probe has been answered since it joined
    fresh: bool = False             # added by a reload or DNS: slow start when it serves
    outlier: OutlierState = field(default_factory=OutlierState)
    # attempts in flight, oldest first (stall detection, slots)
    flights: deque[Flight] = field(default_factory=deque)
    ghosts: int = 0                 # ghost entries that may still be in `flights`
    ghost_slots: int = 0            # slots ghosts hold until they lapse or are laid
    limit: Limit = field(default_factory=lambda: Limit(1.0))     # learned concurrency
    # τ per (model, row bucket): seconds per unit, what the scheduler compares
    taus: dict[TauKey, policy.Tau] = field(default_factory=dict)
    answered_at: float = 0.0        # when an attempt last ended with a reply or an error
    view: policy.Candidate = field(default_factory=lambda: policy.Candidate(1.0, 0.0, 0, None),
                                   repr=False, compare=False)

    @classmethod
    def from_config(cls, cfg: NodeConfig, pcfg: PolicyConfig) -> Node:
        return cls(name=cfg.name, rest=cfg.rest, grpc=cfg.grpc, weight=cfg.weight,
                   tau=policy.Tau(pcfg.tau_relax_s), window=policy.LoadWindow(pcfg.window_s),
                   group=cfg.group)

    def begin(self, units: float, now: float) -> Flight:
        """A request of `units` was sent to this node at `now`; returns its flight
        entry, which the caller hands back to `end`."""
        self.inflight += 1
        self.inflight_units += units
        flight = Flight(now, units)
        self.flights.append(flight)
        return flight

    def occupied(self, now: float) -> int:
        """Slots in use: attempts in flight and ghosts that have not lapsed."""
        if self.ghost_slots:
            self._lapse_ghosts(now)
        return self.inflight + self.ghost_slots

    def _lapse_ghosts(self, now: float) -> None:
        live = 0
        for flight in self.flights:
            if flight.until != math.inf and flight.until > now:
                live += 1
        self.ghost_slots = live
        if not live:
            self.ghosts = 0

    def end(self, flight: Flight, elapsed_s: float, ok: bool, now: float,
            sample: bool = True, lower_bound: bool = False,
            hold_s: float | None = None) -> None:
        """The request that `begin` counted has finished.

        `ok` is False for failures (no response, or a 5xx): they count as
        errors. `sample` says whether `elapsed_s` measured real work (a 200):
        only those feed τ and the load window, so a node that fails fast or
        answers 404 quickly does not look fast and attract traffic.
        `lower_bound`: the attempt was cancelled (a hedge lost, the client
        left); the node took at least `elapsed_s`, which may raise τ, never lower it.
        Its flight entry stays as a ghost: the node is likely still working on it,
        so a stalled node whose requests were all rescued by hedges still counts as
        stalled. A ghost lapses once the node answers anything, or at twice the age
        it had when cancelled (after `hold_s` when given: a stalled attempt's).
        """
        units = flight.units
        if lower_bound:
            flight.until = now + (elapsed_s if hold_s is None else hold_s)
            self.ghosts += 1
            self.ghost_slots += 1
        else:
            flight.until = 0.0
            self.answered_at = now
            if self.ghosts:
                self._lay_ghosts()
        self.inflight -= 1
        self.inflight_units = max(self.inflight_units - units, 0.0)
        self.requests += 1
        if not ok:
            self.errors += 1
        if units <= 0:
            return
        if lower_bound:
            self.tau.raise_to(elapsed_s / units, now)
        elif ok and sample:
            self.window.add(now, units, elapsed_s)
            self.tau.update(elapsed_s / units, now)

    def _lay_ghosts(self) -> None:
        """The node answered: the work of cancelled attempts no longer counts as stuck."""
        for flight in self.flights:
            if flight.until != math.inf:
                flight.until = 0.0
        self.ghosts = 0
        self.ghost_slots = 0

    def oldest(self, now: float) -> Flight | None:
        """The flight entry of the oldest attempt still open (or a ghost), or None."""
        flights = self.flights
        while flights and flights[0].until <= now:
            flights.popleft()
        return flights[0] if flights else None

    def reconfigure(self, cfg: NodeConfig, pcfg: PolicyConfig) -> None:
        """Take a reloaded config for this name: weight, URLs, group and the policy's
        time constants change; counters, in-flight work, τ, the window and health stay."""
        self.weight, self.rest, self.grpc = cfg.weight, cfg.rest, cfg.grpc
        self.group = cfg.group
        self.tau.decay_s = pcfg.tau_relax_s
        self.window.window_s = pcfg.window_s

    def readmit(self, now: float) -> None:
        """Back in the pool after an outage: slow start, and τ from scratch (the
        old estimate is stale; without samples the pool median is used). Its
        concurrency limit starts again from one slot and doubles while its replies
        stay fast (`Limit.slow_start`), so a node that comes back takes no flood."""
        self.healthy = True
        self.outlier.admitted(now)
        self.tau.reset()
        self.taus = {}
        self.limit.slow_start()

    def latest_version(self, model: str) -> int | None:
        return self.latest.get(model)

    def set_versions(self, available: dict[str, frozenset[int]],
                     loading: dict[str, frozenset[int]]) -> None:
        """What a probe reported (called through `NodePool.set_versions`): the node
        answers, so the work of cancelled attempts no longer counts as stuck."""
        self.versions, self.loading, self.seen = available, loading, True
        if self.ghosts:
            self._lay_ghosts()
        self.latest = {m: max(v) for m, v in available.items() if v}

    def effective_weight(self, now: float, opolicy: OutlierPolicy) -> float:
        """The configured weight, scaled down while the node is in slow start."""
        return self.weight * self.outlier.ramp(now, opolicy)

    def available(self, now: float) -> bool:
        """Healthy by the probes and not ejected by passive outlier detection."""
        return self.healthy and not self.outlier.ejected(now)

    def state(self, now: float) -> str:
        if self.outlier.ejected(now):
            return "ejected"
        return "healthy" if self.healthy else "unhealthy"

    def serves(self, model: str, version: int) -> bool:
        known = self.versions.get(model)
        return known is not None and version in known

    def candidate(self, now: float, opolicy: OutlierPolicy) -> policy.Candidate:
        """What the policy sees of this node now (called for every pick: kept lean). The
        same object each time, refreshed: valid until the next call, which the policy's
        synchronous functions never outlive."""
        flights = self.flights
        while flights and flights[0].until <= now:
            flights.popleft()
        c = self.view                   # one per node, refreshed: no object per pick
        if flights:     # its age since the node last answered: its time in service
            c.oldest_age = now - max(flights[0].start, self.answered_at)
            c.oldest_units = flights[0].units
        else:
            c.oldest_age = c.oldest_units = 0.0
        c.weight = (self.weight if self.outlier.admitted_at is None
                    else self.weight * self.outlier.ramp(now, opolicy))
        c.inflight_units = self.inflight_units
        c.inflight = self.inflight
        tau = self.tau
        c.tau = tau.value
        c.tau_age = now - tau.stamp
        c.tau_n = tau.samples
        return c


class NodePool:
    """The configured nodes and the policy that chooses among them."""

    def __init__(self, nodes: Iterable[NodeConfig], pcfg: PolicyConfig,
                 clock: Callable[[], float] = time.monotonic, seed: int | None = None,
                 outlier: OutlierPolicy | None = None) -> None:
        self.policy_name = pcfg.name
        self._pcfg = pcfg
        self._clock = clock
        self._rng = random.Random(seed)
        self._rr = policy.SmoothRoundRobin()
        self.outlier = outlier or OutlierPolicy(slow_start_s=pcfg.slow_start_s)
        nodes = list(nodes)
        self.nodes: dict[str, Node] = {n.name: Node.from_config(n, pcfg) for n in nodes}
        self._seed_limits(nodes, pcfg)
        self._waiters: set[asyncio.Future[None]] = set()
        self.waits = Waits()
        # Called with a node that refused a call (`refused`): the health checks probe it
        # again at once (the composition root wires `HealthChecker.recheck`).
        self.on_refusal: Callable[[Node], None] | None = None
        # Called when a node may take calls it could not before (a probe says it serves,
        # a node is readmitted, a reload): the dispatcher wakes the tickets that wait.
        self.on_change: Callable[[], None] | None = None

    def __iter__(self) -> Any:
        return iter(self.nodes.values())

    def reconfigure(self, nodes: Iterable[NodeConfig], pcfg: PolicyConfig,
                    outlier: OutlierPolicy | None = None) -> None:
        """Swap in the nodes and policy settings of a reloaded config.

        Called by `lb.reload` on the event loop with an already validated
        config. Names that stay keep their `Node` (counters, in-flight work, τ,
        health) with weight and URLs updated; new names get fresh nodes; removed
        nodes leave the dict, and requests in flight on them finish normally on
        the reference they hold. No await: `pick` sees the old set or the new.
        New nodes slow-start, so an added node ramps up instead of taking a flood.
        """
        fresh: dict[str, Node] = {}
        added: list[Node] = []
        now = self._clock()
        nodes = list(nodes)
        for cfg in nodes:
            node = self.nodes.get(cfg.name)
            if node is None:
                node = Node.from_config(cfg, pcfg)
                node.outlier.admitted(now)
                node.fresh = True
                added.append(node)
            else:
                node.reconfigure(cfg, pcfg)
            fresh[cfg.name] = node
        self.policy_name = pcfg.name
        self._pcfg = pcfg
        self.outlier = outlier or OutlierPolicy(slow_start_s=pcfg.slow_start_s)
        self.nodes = fresh
        self._seed_limits(nodes, pcfg)
        for node in added:          # a node added to a running pool ramps up
            node.limit.slow_start()
        self.changed()

    def _seed_limits(self, nodes: list[NodeConfig], pcfg: PolicyConfig) -> None:
        """Each node's concurrency limit: `max_inflight` pins it; otherwise it starts at
        `policy.concurrency.initial` × its weight over the largest weight (the weight
        is the operator's statement of capacity) and learns from there."""
        conc = pcfg.concurrency
        top = max((n.weight for n in nodes), default=1.0)
        for cfg in nodes:
            node = self.nodes[cfg.name]
            pinned = cfg.max_inflight is not None or not conc.learn
            start = (cfg.max_inflight if cfg.max_inflight is not None
                     else math.ceil(conc.initial * cfg.weight / top))
            node.limit.retune(start, conc.min if cfg.max_inflight is None else 1,
                              conc.max if cfg.max_inflight is None else cfg.max_inflight,
                              pinned)

    def eligible(self, units: float, exclude: Sequence[Node] = (), model: str | None = None,
                 version: int | None = None, *, explicit: bool = False,
                 usable: Callable[[Node], bool] | None = None,
                 spare: int | None = None, group: str | None = None) -> list[Node]:
        """The nodes a request may go to now, before the policy chooses among them.

        Only nodes `usable` says can take the call (e.g. those with a gRPC address),
        and with `group` only the nodes of that group (`lb.rollout`).
        Prefers healthy nodes; when every node is unhealthy, tries them all rather
        than fail everything — except with `spare` (a hedge): then only available
        nodes with fewer than `spare` requests in flight. With `model` and
        `version`, only nodes serving that version: having it (`explicit`, the
        request names it) or having it as their latest (the version an unversioned
        request resolved to, so that a cached answer belongs to the version its key
        names). When none of them serves it but some node has it, loads it or has
        not answered a probe yet, the list is empty: the request is held
        (in the proxy's queue), never sent to a node that would refuse it. Only a model that no
        node knows goes to any node, which answers its 404.
        """
        now = self._clock()
        # One pass for the common case (this runs for every attempt): the healthy ones.
        pool = [n for n in self.nodes.values()
                if n.healthy and now >= n.outlier.ejected_until and n not in exclude
                and (usable is None or usable(n)) and (group is None or n.group == group)]
        if spare is not None:
            pool = [n for n in pool if n.inflight < spare]
        elif not pool:                          # none healthy: try them all
            pool = [n for n in self.nodes.values()
                    if n not in exclude and (usable is None or usable(n))
                    and (group is None or n.group == group)]
        if model is not None and version is not None and pool:
            serving = ([n for n in pool if n.serves(model, version)] if explicit
                       else [n for n in pool if n.latest.get(model) == version])
            if serving or self.knows(model, version, usable, group):
                return serving
        return pool

    def pick(self, units: float, exclude: Sequence[Node] = (), model: str | None = None,
             version: int | None = None, *, explicit: bool = False,
             usable: Callable[[Node], bool] | None = None,
             spare: int | None = None, group: str | None = None) -> Node | None:
        """The node the policy chooses among `eligible` ones, or None if none is left."""
        pool = self.eligible(units, exclude, model, version, explicit=explicit,
                             usable=usable, spare=spare, group=group)
        if not pool:
            return None
        return pool[self._choose(pool, units, self._clock())]

    def knows(self, model: str, version: int | None,
              usable: Callable[[Node], bool] | None = None, group: str | None = None) -> bool:
        """Whether some node (that `usable` accepts) has `model` (that version) AVAILABLE,
        is loading it, or has not answered a probe yet: then a request for it waits for
        a node that serves it rather than go to one that does not."""
        for n in self.nodes.values():
            if (usable is not None and not usable(n)) or (group is not None
                                                           and n.group != group):
                continue
            if not n.seen:
                return True
            have, coming = n.versions.get(model), n.loading.get(model)
            if version is None:
                if have or coming:
                    return True
            elif (have is not None and version in have) or (coming is not None
                                                            and version in coming):
                return True
        return False

    def _choose(self, pool: Sequence[Node], units: float, now: float) -> int:
        if len(pool) == 1:
            return 0
        if self.policy_name == "round_robin":
            return self._rr.pick([n.name for n in pool],
                                 [n.effective_weight(now, self.outlier) for n in pool])
        cands = [n.candidate(now, self.outlier) for n in pool]
        if self.policy_name == "least_conn":
            return policy.least_conn(cands, units, self._rng)
        return policy.least_load(cands, units, self._rng, self._pcfg.tau_relax_s,
                                 self._pcfg.stall_factor, self._pcfg.tie_band)

    def scores(self, units: float, *nodes: Node) -> list[float]:
        """The policy's score of each of `nodes` for a request of `units` (0: the
        request is already in flight there), against the whole pool's least τ."""
        now = self._clock()
        ref = policy.least_tau([n.candidate(now, self.outlier) for n in self.nodes.values()])
        pcfg = self._pcfg
        return [policy.score(n.candidate(now, self.outlier), units, ref, pcfg.tau_relax_s,
                             pcfg.stall_factor) for n in nodes]

    # -- versions: what the health checks report, and waiting for AVAILABLE -----

    def set_versions(self, node: Node, available: dict[str, frozenset[int]],
                     loading: dict[str, frozenset[int]]) -> None:
        """A probe answered: record what `node` serves and wake waiting requests."""
        node.set_versions(available, loading)
        serving = bool(node.latest)
        if node.fresh and serving:           # its slow start begins when it can serve
            node.fresh = False
            node.outlier.admitted(self._clock())
        if self._waiters and serving:
            waiters, self._waiters = self._waiters, set()
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        if serving:
            self.changed()

    def changed(self) -> None:
        """Some node may take calls it could not before: tell the dispatcher."""
        if self.on_change is not None:
            self.on_change()

    def refused(self, node: Node, model: str) -> None:
        """`node` refused a call for `model` (503, UNAVAILABLE: loading, restarting,
        unloading it): it leaves the model's set — its versions count as loading —
        until a probe says AVAILABLE again, and that probe is asked for now. Called
        by the dispatcher when an attempt settles."""
        have = node.versions.get(model)
        if have:
            node.versions = {**node.versions, model: frozenset()}
            node.loading = {**node.loading, model: node.loading.get(model, frozenset()) | have}
            node.latest = {m: max(v) for m, v in node.versions.items() if v}
        if self.on_refusal is not None:
            self.on_refusal(node)

    def readiness(self, model: str, version: int | None) -> str:
        """"ready": a healthy node has the model (that version) AVAILABLE; "wait": none
        has, but one is loading it or has not answered a probe yet; "absent": no node
        knows it (the request goes to a node, which answers 404)."""
        now = self._clock()
        nodes = self.nodes.values()
        for n in nodes:
            if n.available(now) and (n.serves(model, version) if version is not None
                                     else model in n.versions and bool(n.versions[model])):
                return "ready"
        for n in nodes:
            loading = n.loading.get(model)
            if loading and (version is None or version in loading):
                return "wait"
        return "wait" if any(not n.seen for n in nodes) else "absent"

    async def wait_available(self, timeout_s: float) -> None:
        """Return when a probe reports a newly available model (or after `timeout_s`)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        try:
            await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(fut)

    def latest_version(self, model: str, group: str | None = None) -> int | None:
        """Latest version AVAILABLE on any healthy node (of `group`, when given: the
        version that group answers with; the health checks fill this); when no node
        is healthy, on any node (as `eligible` then tries them all)."""
        best = None
        for n in self.nodes.values():
            if (n.healthy and (v := n.latest.get(model)) is not None
                    and (best is None or v > best) and (group is None or n.group == group)):
                best = v
        if best is None and not self.any_healthy():
            for n in self.nodes.values():
                if ((v := n.latest.get(model)) is not None and (best is None or v > best)
                        and (group is None or n.group == group)):
                    best = v
        return best

    def any_healthy(self) -> bool:
        return any(n.healthy for n in self.nodes.values())

    def stats(self) -> list[dict[str, Any]]:
        """Per-node entries of the /stats contract (docs/ARCHITECTURE.md). `load` is the
        seed's formula, Σ w_j · t_j over the window / W_i, with W_i the node's capacity:
        its concurrency limit (seeded by its weight, then learned, `lb.pool.concurrency`)."""
        now = self._clock()
        counts = {n.name: n.window.count(now) for n in self.nodes.values()}
        total = sum(counts.values())
        out = []
        for n in self.nodes.values():
            limit = n.limit
            out.append({
                "name": n.name, "weight": n.weight, "healthy": n.healthy,
                "inflight": n.inflight, "requests": n.requests, "errors": n.errors,
                "ewma_ms": round((n.tau.value or 0.0) * 1000.0, 3),
                "load": round(n.window.work(now) / max(limit.value, 1), 6),
                "share": round(counts[n.name] / total, 4) if total else 0.0,
                "state": n.state(now),
                "effective_weight": round(n.effective_weight(now, self.outlier), 4),
                "ejections": n.outlier.ejections, "group": n.group,
                "limit": limit.value,
                "limit_state": ("pinned" if limit.pinned else "measuring" if limit.measuring
                                else "starting" if limit.starting else "learned"),
            })
        return out

    def now(self) -> float:
        return self._clock()
