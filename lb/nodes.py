"""Runtime state of the node pool: counters, in-flight work, τ, load window, health.

Called by the fronts (`lb.rest`) around every forwarded request
(`pick` → `Node.begin` → `Node.end`), by `lb.health` to set health and known
model versions, and by `lb.admin` for `/stats`. Everything here runs on the
event loop thread: no locks, no awaits, no I/O. The choice itself is delegated
to the pure functions of `lb.policy`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lb import policy
from lb.config import NodeConfig, PolicyConfig
from lb.outlier import OutlierPolicy, OutlierState


@dataclass(slots=True)
class Node:
    """One model server as the proxy sees it."""

    name: str
    rest: str
    grpc: str | None
    weight: float
    tau: policy.PeakEwma
    window: policy.LoadWindow
    healthy: bool = True
    inflight: int = 0
    inflight_units: float = 0.0
    requests: int = 0
    errors: int = 0
    # model -> versions the health checks saw AVAILABLE on this node
    versions: dict[str, frozenset[int]] = field(default_factory=dict)
    outlier: OutlierState = field(default_factory=OutlierState)

    @classmethod
    def from_config(cls, cfg: NodeConfig, pcfg: PolicyConfig) -> Node:
        return cls(name=cfg.name, rest=cfg.rest, grpc=cfg.grpc, weight=cfg.weight,
                   tau=policy.PeakEwma(pcfg.ewma_decay_s), window=policy.LoadWindow(pcfg.window_s))

    def begin(self, units: float) -> None:
        """A request of `units` was sent to this node."""
        self.inflight += 1
        self.inflight_units += units

    def end(self, units: float, elapsed_s: float, ok: bool, now: float,
            sample: bool = True) -> None:
        """The request that `begin` counted has finished.

        `ok` is False for failures (no response, or a 5xx): they count as
        errors. `sample` says whether `elapsed_s` measured real work (a 200):
        only those feed τ and the load window, so a node that fails fast or
        answers 404 quickly does not look fast and attract traffic.
        """
        self.inflight -= 1
        self.inflight_units = max(self.inflight_units - units, 0.0)
        self.requests += 1
        if not ok:
            self.errors += 1
        if not (ok and sample) or units <= 0:
            return
        self.window.add(now, units, elapsed_s)
        self.tau.update(elapsed_s / units, now)

    def reconfigure(self, cfg: NodeConfig, pcfg: PolicyConfig) -> None:
        """Take a reloaded config for this name: weight, URLs and the policy's time
        constants change; counters, in-flight work, τ, the window and health stay."""
        self.weight, self.rest, self.grpc = cfg.weight, cfg.rest, cfg.grpc
        self.tau.decay_s = pcfg.ewma_decay_s
        self.window.window_s = pcfg.window_s

    def readmit(self, now: float) -> None:
        """Back in the pool after an outage: slow start, and τ from scratch (the
        old estimate is stale; without samples the pool median is used)."""
        self.healthy = True
        self.outlier.admitted(now)
        self.tau.value = None

    def latest_version(self, model: str) -> int | None:
        known = self.versions.get(model)
        return max(known) if known else None

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

    def candidate(self, now: float, opolicy: OutlierPolicy) -> policy.Candidate:
        return policy.Candidate(weight=self.effective_weight(now, opolicy),
                                inflight_units=self.inflight_units,
                                inflight=self.inflight, tau=self.tau.value,
                                tau_age=now - self.tau.stamp)


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
        self.nodes: dict[str, Node] = {n.name: Node.from_config(n, pcfg) for n in nodes}

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
        now = self._clock()
        for cfg in nodes:
            node = self.nodes.get(cfg.name)
            if node is None:
                node = Node.from_config(cfg, pcfg)
                node.outlier.admitted(now)
            else:
                node.reconfigure(cfg, pcfg)
            fresh[cfg.name] = node
        self.policy_name = pcfg.name
        self._pcfg = pcfg
        self.outlier = outlier or OutlierPolicy(slow_start_s=pcfg.slow_start_s)
        self.nodes = fresh

    def pick(self, units: float, exclude: Sequence[Node] = (),
             model: str | None = None, version: int | None = None) -> Node | None:
        """The node the policy chooses for a request of `units`, or None if none is left.

        Prefers healthy nodes; when every node is unhealthy, tries them all
        rather than fail everything. With `model` and `version`, prefers nodes
        known to serve that version (so a cached unversioned answer belongs to
        the version its key names).
        """
        pool = [n for n in self.nodes.values() if n not in exclude]
        if not pool:
            return None
        now = self._clock()
        healthy = [n for n in pool if n.available(now)]
        pool = healthy or pool
        if model is not None and version is not None:
            serving = [n for n in pool if n.latest_version(model) == version]
            pool = serving or pool
        return pool[self._choose(pool, units, now)]

    def _choose(self, pool: Sequence[Node], units: float, now: float) -> int:
        if self.policy_name == "round_robin":
            return self._rr.pick([n.name for n in pool],
                                 [n.effective_weight(now, self.outlier) for n in pool])
        cands = [n.candidate(now, self.outlier) for n in pool]
        if self.policy_name == "least_conn":
            return policy.least_conn(cands, units, self._rng)
        return policy.least_load(cands, units, self._rng, self._pcfg.ewma_decay_s)

    def latest_version(self, model: str) -> int | None:
        """Latest version AVAILABLE on any healthy node (health checks fill this)."""
        versions = [v for n in self.nodes.values() if n.healthy
                    if (v := n.latest_version(model)) is not None]
        return max(versions) if versions else None

    def any_healthy(self) -> bool:
        return any(n.healthy for n in self.nodes.values())

    def stats(self) -> list[dict[str, Any]]:
        """Per-node entries of the /stats contract (docs/ARCHITECTURE.md)."""
        now = self._clock()
        counts = {n.name: n.window.count(now) for n in self.nodes.values()}
        total = sum(counts.values())
        out = []
        for n in self.nodes.values():
            out.append({
                "name": n.name, "weight": n.weight, "healthy": n.healthy,
                "inflight": n.inflight, "requests": n.requests, "errors": n.errors,
                "ewma_ms": round((n.tau.value or 0.0) * 1000.0, 3),
                "load": round(n.window.work(now) / n.weight, 6),
                "share": round(counts[n.name] / total, 4) if total else 0.0,
                "state": n.state(now),
                "effective_weight": round(n.effective_weight(now, self.outlier), 4),
                "ejections": n.outlier.ejections,
            })
        return out

    def now(self) -> float:
        return self._clock()
