"""The request core: version → cache lookup → coalesce → dispatch → fill, for both fronts.

Called by the fronts (`lb.rest.front`, `lb.grpc.front`) once per client
request with a `Call` and the front's `Transport`. The core decides; the
transports do the I/O. It never looks inside a payload.

Flow of `serve`:
1. `resolve`: the version a request addresses is the one it names, or the
   latest AVAILABLE on a healthy node (of its group, `Call.group`, when it
   has one: the version that group answers with). When no node has it AVAILABLE yet but
   one is loading it or has not answered a probe since it joined (a cold
   start, a rollout), the request waits for it, at most
   `limits.queue_timeout_s` and never past its deadline; then `NotReady`
   (503 + Retry-After). Waits are counted.
2. The cache, when the call is cacheable: Cache-Control `no-store` skips it
   (BYPASS), `no-cache` skips the lookup but fills; the adaptive controller
   may bypass a model whose requests do not repeat (BYPASS); otherwise the
   key is made (`plan`), looked up (HIT), and a miss is coalesced with an
   identical one in flight (COALESCED) or forwarded (MISS) and the good answer
   stored. Row-level caching is a plan with one key per row (`lb.rest.rowcache`).
3. `forward`: the dispatcher (`lb.request.dispatch`) queues the call for a free slot on
   a node that serves its model (`lb.request.scheduler`), attempts, hedges, retries;
   batching models leave the queue in batches (`lb.request.batching`).

`direct` lets a front skip the Task when a call needs no await before its
first attempt (version resolved, no cache work, no batching): it makes the
same decisions as `serve`, once, and the front then drives the dispatcher.

Guarantees: an `Outcome` or an `LbError` by the call's deadline; a cache
problem is a miss; hits + misses + bypasses = cacheable calls; admission
(`admit`/`release`) sheds load past `limits.max_inflight` with `Overloaded`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from cache.adaptive import Decision
from cache.result_cache import ResultCache
from lb.config import Config
from lb.errors import DeadlineExceeded, NotCached, NotReady, Overloaded
from lb.pool.nodes import Node, NodePool
from lb.request.call import Call, Outcome, Transport, XCache
from lb.request.dispatch import Dispatcher
from lb.request.flights import Flights

log = logging.getLogger("lb.request.core")
A = TypeVar("A")


class Probes(Protocol):
    """What the core asks of the health checks (`lb.pool.health.HealthChecker`)."""

    async def learn(self, model: str) -> None: ...

    def model_seen(self, model: str) -> None: ...


@dataclass(slots=True, init=False)
class Plan:
    """What the cache may do with a call: its whole-request key, or one key per row."""

    key: str | None = None
    rows: list[str] | None = None

    def __init__(self, key: str | None = None, rows: list[str] | None = None) -> None:
        self.key = key      # written out: compiled (lb.request.call.Call says why)
        self.rows = rows


PlanFn = Callable[[Call], Awaitable[Plan | None]]


class Rows(Protocol):
    """Row-level caching (`lb.rest.rowcache.RowCache`), attached by the composition root."""

    async def serve(self, call: Call, transport: Transport[Any],
                    keys: list[str]) -> Outcome[Any]: ...


def _batching(cfg: Config) -> frozenset[str]:
    """The models that batch (`models.M.batching`); the others never wait in a group."""
    return frozenset(name for name, m in cfg.models.items() if m.batching is not None)


class Core:
    """See the module docstring; one per proxy process, shared by both fronts."""

    def __init__(self, cfg: Config, pool: NodePool, dispatcher: Dispatcher,
                 cache: ResultCache | None, probes: Probes | None = None) -> None:
        self.cfg = cfg
        self.pool = pool
        self.dispatcher = dispatcher
        self.cache = cache
        self.flights = Flights()
        self.waits = pool.waits
        self.inflight = 0
        self.shed = 0
        self._probes = probes
        self.rows: Rows | None = None
        self._batching = _batching(cfg)

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        self._batching = _batching(cfg)

    def forward(self, call: Call, transport: Transport[A]) -> Awaitable[tuple[A, Node]]:
        """To a node, through the proxy's queue (`lb.request.dispatch`; batching models leave it
        in batches). (A plain function that returns the awaitable: one coroutine frame
        less on every request.)"""
        return self.dispatcher.send(call, transport)

    # -- admission ----------------------------------------------------------------

    def admit(self) -> None:
        """Count a client request in; Overloaded past limits.max_inflight."""
        if self.inflight >= self.cfg.limits.max_inflight:
            self.shed += 1
            raise Overloaded("too many requests in progress; retry later")
        self.inflight += 1

    def release(self) -> None:
        self.inflight -= 1

    # -- the flow -----------------------------------------------------------------

    def direct(self, call: Call, cacheable: bool) -> XCache | None:
        """For a front that forwards without a Task: the X-Cache of a call that can go
        straight to the dispatcher — its version resolved without a wait, no cache work
        (cache none, Cache-Control no-store, or the model bypassed), no batching.
        None: run `serve`. It makes the same decisions `serve` would, once."""
        if call.label is None and not self._resolved(call):
            return None                         # named (`serve` checks it), or not ready
        if call.model in self._batching:
            return None
        return self._plain(call, cacheable)

    async def serve(self, call: Call, transport: Transport[A],
                    plan: PlanFn | None = None) -> Outcome[A]:
        """The answer to a client call (see the module docstring)."""
        if call.label is None and not self._resolved(call):
            await self.resolve(call)
        x_cache = self._plain(call, plan is not None)
        if x_cache is not None:
            return await self._forward(call, transport, x_cache)
        cache = self.cache
        assert cache is not None and plan is not None
        if call.decision is Decision.SAMPLE:      # a bypassed model's sampled request
            await self._sample(cache, call, plan)
            return await self._forward(call, transport, XCache.BYPASS)
        made = await plan(call)
        if made is None or (made.key is None and made.rows is None):
            if call.directives.only_if_cached:
                raise NotCached
            return await self._forward(call, transport, XCache.MISS)
        if made.rows is not None and self.rows is not None:
            return await self.rows.serve(call, transport, made.rows)
        assert made.key is not None
        return await self._whole(cache, call, transport, made.key)

    def _plain(self, call: Call, cacheable: bool) -> XCache | None:
        """What `serve` decides without an await, once the version is resolved: the
        X-Cache of a call that goes to the nodes with no cache work, or None for the
        cache path. Counts the bypasses it decides (Cache-Control no-store here; the
        adaptive controller counts its own, and its decision is kept on the call so
        that it is made once)."""
        cache = self.cache
        d = call.directives
        if cache is None or not cacheable or call.version is None:
            if d.only_if_cached:
                raise NotCached
            return XCache.MISS
        if not d.store and not d.only_if_cached:             # no-store: not at all
            cache.bypass(call.model)
            return XCache.BYPASS
        if d.lookup and not d.only_if_cached:
            if call.decision is None:
                call.decision = cache.decide(call.model)     # counts its own bypasses
            if call.decision is Decision.BYPASS:             # nothing repeats: no cache
                return XCache.BYPASS
        return None

    @staticmethod
    async def _sample(cache: ResultCache, call: Call, plan: PlanFn) -> None:
        """A bypassed model's sampled request: its key feeds the controller's sketch."""
        made = await plan(call)
        if made is not None and made.key is not None:
            cache.sampled(call.model, made.key)
        elif made is not None and made.rows is not None:
            cache.sampled_rows(call.model, made.rows)

    async def _whole(self, cache: ResultCache, call: Call, transport: Transport[A],
                     key: str) -> Outcome[A]:
        d = call.directives
        if d.lookup:
            hit = await cache.lookup(key, call.model)
            cached = transport.from_cache(call, hit) if hit is not None else None
            if cached is not None:
                return Outcome(cached, XCache.HIT)
        else:
            cache.bypass(call.model)
        if d.only_if_cached:
            raise NotCached

        async def fetch() -> tuple[A, Node]:
            answer, node = await self.forward(call, transport)
            if d.store and transport.verdict(answer, False).good:
                await cache.fill(key, call.model, transport.body(answer))
            return answer, node

        if not d.lookup:                         # no-cache: its own call, then fill
            answer, node = await fetch()
            return Outcome(answer, XCache.BYPASS, node.name)
        (answer, node), joined = await self.flights.run(key, fetch, call.deadline)
        if joined:
            cache.coalesced(call.model)
        return Outcome(answer, XCache.COALESCED if joined else XCache.MISS, node.name)

    async def _forward(self, call: Call, transport: Transport[A],
                       x_cache: XCache) -> Outcome[A]:
        answer, node = await self.forward(call, transport)
        return Outcome(answer, x_cache, node.name)

    def passthrough(self, call: Call, transport: Transport[A]) -> Awaitable[Outcome[A]]:
        """Status, metadata and other uncached calls: balanced, never cached."""
        return self._forward(call, transport, XCache.BYPASS)

    # -- versions -----------------------------------------------------------------

    def _resolved(self, call: Call) -> bool:
        """The common case without an await: an unversioned call gets the latest
        version a healthy node has AVAILABLE."""
        if call.version is None:
            call.version = self.pool.latest_version(call.model, call.group)
            return call.version is not None
        return False

    async def resolve(self, call: Call) -> None:
        """Set `call.version` (see the module docstring, step 1). Requests by label
        are not resolved: the nodes resolve labels themselves."""
        if call.label is not None:
            return
        if call.version is None:                   # the common case: no await, one pass
            call.version = self.pool.latest_version(call.model, call.group)
            if call.version is not None:
                return
        pool = self.pool
        state = pool.readiness(call.model, call.version)
        if state != "ready" and self._probes is not None:
            await self._learn(call)                # a model the checks did not know
            state = pool.readiness(call.model, call.version)
        if state == "wait":
            if self._probes is not None:
                self._probes.model_seen(call.model)    # probed every round from now on
            await self._wait(call)
        if call.version is None:
            call.version = pool.latest_version(call.model, call.group)

    async def _learn(self, call: Call) -> None:
        """Probe the nodes for `call.model` (shared with concurrent calls), within the
        call's deadline: a probe that outlasts it ends the call with 504."""
        assert self._probes is not None
        left = call.deadline.at - time.monotonic()
        try:
            await asyncio.wait_for(self._probes.learn(call.model), max(left, 0.0))
        except TimeoutError:
            raise DeadlineExceeded("Deadline exceeded") from None

    async def _wait(self, call: Call) -> None:
        start = time.monotonic()
        until = min(call.deadline.at, start + self.cfg.limits.queue_timeout_s)
        state = "wait"
        while state == "wait" and time.monotonic() < until:
            await self.pool.wait_available(until - time.monotonic())
            state = self.pool.readiness(call.model, call.version)
        waited = time.monotonic() - start
        self.waits.count(waited, state == "wait")
        if state == "wait" and time.monotonic() >= call.deadline.at:
            raise DeadlineExceeded("Deadline exceeded")   # the client's time ran out first
        if state == "wait":
            log.warning("no node has %s AVAILABLE after %.1f s", call.model, waited)
            raise NotReady(f"Model {call.model} is not available yet on any node; "
                           f"retry later")
