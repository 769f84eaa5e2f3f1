"""Active health checks: each node's model status, probed concurrently.

Started by `lb.server` as one named task; `kick()` asks for a probe round
now (the composition root calls it when nodes are added; `learn` probes a
model that traffic names and the checks did not know). A node is healthy when
its probes answer and, for the models known, at least one version is
`AVAILABLE` (TF Serving answers 200 even while LOADING, so a 200 alone is not
healthy). What each node reports — versions AVAILABLE, and versions still
START or LOADING — goes to `NodePool.set_versions`, which wakes requests
waiting for a model to become available (`lb.request.core`, the proxy's queue). A probe
that is not answered changes nothing of what the node reported last: a busy
node whose probe timed out still serves, and whether a node is up is decided
by `unhealthy_after` failed probes in a row and by passive outlier detection.
A node that refuses a call (`NodePool.refused`) is probed again at once
(`recheck`: one probe at a time per node). Each probe runs under its own
timeout; one failing node never delays the others' verdicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import orjson

from lb.config import HealthConfig
from lb.errors import LbError
from lb.pool.nodes import Node, NodePool

log = logging.getLogger("lb.pool.health")

_MAX_MODELS = 256
_UNKNOWN_RETRY_S = 5.0
# Probed when no model is known yet: any HTTP answer shows the server is up.
_NO_MODEL_PROBE = "/v1/models/__tfslb_probe__"


_COMING = ("START", "LOADING")
RECHECK_GAP_S = 0.05        # refusals within this long of a recheck share it


class Reply(Protocol):
    status: int
    body: bytes


class StatusSource(Protocol):
    """How the checker reaches a node's TF Serving status paths: a GET that answers or
    raises `LbError`. The composition root wires the REST upstream
    (`lb.rest.upstream.RestUpstream`): the pool knows no protocol."""

    async def get(self, node: Node, path: str, timeout_s: float) -> Reply: ...


@dataclass(slots=True)
class _Verdict:
    answered: bool
    versions: dict[str, frozenset[int]]
    loading: dict[str, frozenset[int]]


def versions_in(raw: bytes, states: tuple[str, ...]) -> frozenset[int]:
    """Versions whose state is one of `states` in a TF Serving model status reply."""
    doc = orjson.loads(raw)
    return frozenset(int(v["version"]) for v in doc.get("model_version_status", [])
                     if v.get("state") in states)


def available_versions(raw: bytes) -> frozenset[int]:
    """Versions whose state is AVAILABLE in a TF Serving model status reply."""
    return versions_in(raw, ("AVAILABLE",))


class HealthChecker:
    def __init__(self, cfg: HealthConfig, pool: NodePool, upstream: StatusSource,
                 models: list[str]) -> None:
        self.cfg = cfg
        self.pool = pool
        self.upstream = upstream
        self.models: list[str] = list(models)
        self._fails: dict[str, int] = {}
        self._oks: dict[str, int] = {}
        self._kick = asyncio.Event()
        self._learning: dict[str, asyncio.Task[None]] = {}
        self._unknown: dict[str, float] = {}
        self._rechecks: dict[str, asyncio.Task[None]] = {}
        self.rounds = 0

    def recheck(self, node: Node) -> None:
        """Probe `node` now, outside the rounds (it refused a call: `NodePool.on_refusal`).
        Refusals while one recheck of the node runs, or within `RECHECK_GAP_S` after
        it, share it. Called on the event loop."""
        if node.name in self._rechecks:
            return
        task = asyncio.create_task(self._recheck(node), name=f"recheck:{node.name}")
        self._rechecks[node.name] = task
        task.add_done_callback(lambda _t: self._rechecks.pop(node.name, None))

    async def _recheck(self, node: Node) -> None:
        verdict = await self._probe(node)
        if self.pool.nodes.get(node.name) is node:       # still in the pool
            self._apply(node, verdict)
        await asyncio.sleep(RECHECK_GAP_S)

    async def close(self) -> None:
        """Cancel the rechecks still running (at shutdown)."""
        tasks = list(self._rechecks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def model_seen(self, model: str) -> None:
        """Traffic named `model`: probe it from now on (bounded), soon."""
        if model not in self.models and len(self.models) < _MAX_MODELS:
            self.models.append(model)
            self._kick.set()

    def kick(self) -> None:
        self._kick.set()

    def reconfigure(self, cfg: HealthConfig, models: list[str]) -> None:
        """A reload: new timings, the configured models probed from now on, a round now."""
        self.cfg = cfg
        for model in models:
            self.model_seen(model)
        self._kick.set()

    async def learn(self, model: str) -> None:
        """Probe `model` on every node now; called for a request naming a model
        whose versions are unknown. Concurrent calls share one probe round; a
        model no node serves is not probed again for a few seconds."""
        if model in self.models or time.monotonic() < self._unknown.get(model, 0.0):
            return
        task = self._learning.get(model)
        if task is None:
            task = asyncio.create_task(self._learn(model), name=f"learn:{model}")
            self._learning[model] = task
            task.add_done_callback(lambda _t: self._learning.pop(model, None))
        await asyncio.shield(task)

    async def _learn(self, model: str) -> None:
        nodes = list(self.pool)
        results = await asyncio.gather(*(self._get(n, f"/v1/models/{model}") for n in nodes))
        found = False
        for node, result in zip(nodes, results, strict=True):
            if result is not None and result[0] == 200:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    versions = available_versions(result[1])
                    loading = versions_in(result[1], _COMING)
                    if versions or loading:
                        self.pool.set_versions(node, {**node.versions, model: versions},
                                               {**node.loading, model: loading})
                        found = True
        if found:
            self.model_seen(model)
            return
        if len(self._unknown) > 10_000:
            self._unknown.clear()
        self._unknown[model] = time.monotonic() + _UNKNOWN_RETRY_S

    async def run(self) -> None:
        """Probe forever, every `interval_s` or when kicked; cancelled at shutdown."""
        while True:
            await self.probe_all()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.interval_s):
                    await self._kick.wait()
            self._kick.clear()

    async def probe_all(self) -> None:
        nodes = list(self.pool)
        verdicts = await asyncio.gather(*(self._probe(n) for n in nodes))
        for node, verdict in zip(nodes, verdicts, strict=True):
            self._apply(node, verdict)
        self.rounds += 1

    async def _probe(self, node: Node) -> _Verdict:
        models = list(self.models)
        paths = [f"/v1/models/{m}" for m in models] or [_NO_MODEL_PROBE]
        results = await asyncio.gather(*(self._get(node, p) for p in paths))
        if any(r is None for r in results):
            return _Verdict(False, {}, {})
        if not models:
            return _Verdict(True, {}, {})
        versions: dict[str, frozenset[int]] = {}
        loading: dict[str, frozenset[int]] = {}
        for model, (status, raw) in zip(models, results, strict=True):  # type: ignore[misc]
            if status == 200:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    versions[model] = available_versions(raw)
                    loading[model] = versions_in(raw, _COMING)
        return _Verdict(True, versions, loading)

    async def _get(self, node: Node, path: str) -> tuple[int, bytes] | None:
        try:
            reply = await self.upstream.get(node, path, self.cfg.timeout_s)
        except LbError as exc:
            log.debug("probe %s%s failed: %s", node.name, path, exc)
            return None
        return reply.status, reply.body

    def _apply(self, node: Node, verdict: _Verdict) -> None:
        if verdict.answered:
            self.pool.set_versions(node, verdict.versions, verdict.loading)
        serving = verdict.answered and (not self.models or any(verdict.versions.values()))
        if serving:
            self._fails[node.name] = 0
            self._oks[node.name] = self._oks.get(node.name, 0) + 1
            now = time.monotonic()
            if (not node.healthy and self._oks[node.name] >= self.cfg.healthy_after
                    and node.outlier.may_readmit(now)):
                log.warning("node %s is healthy again (slow start)", node.name)
                node.readmit(now)
                self.pool.changed()
        else:
            self._oks[node.name] = 0
            self._fails[node.name] = self._fails.get(node.name, 0) + 1
            if node.healthy and self._fails[node.name] >= self.cfg.unhealthy_after:
                log.warning("node %s is unhealthy", node.name)
                node.healthy = False
