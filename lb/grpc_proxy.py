"""The gRPC request flow: version, cache lookup, node choice, forward, fill.

Called by `lb.grpc_front` once per client call, with the raw request bytes.
It is the gRPC twin of `lb.proxy.Proxy.infer`/`forward` and shares their
state: the same `NodePool` (policy, per-node counters: every attempt is
bracketed by `Node.begin`/`Node.end` exactly as `Proxy._attempt` does), the
same `ResultCache` and `Coalescer` (gRPC keys carry their own tag, so they
never meet REST keys) and the same version resolution.

Guarantees: a `GrpcReply` or an `LbError` before the call's deadline; a call
a node did not answer (UNAVAILABLE), answered RESOURCE_EXHAUSTED (a full batch
queue) or that hit the per-try timeout is retried on another node while
`upstream.retries`, the shared retry budget (`lb.retry`) and the deadline
allow; attempts feed passive outlier detection; only OK Predict replies
are stored; a cache problem is a miss; nodes without a `grpc` address are
never chosen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc

from lb.errors import DeadlineExceeded
from lb.grpc_messages import Request, predict_key
from lb.grpc_upstream import NODE_FAILURES, OK, GrpcReply, GrpcUpstream
from lb.nodes import Node
from lb.proxy import Proxy
from lb.routes import Directives, Route

log = logging.getLogger("lb.grpc")
# Worth another node: a full batch queue, or a per-try timeout within the deadline.
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED
NOT_CACHED = "not in cache (only-if-cached)"


@dataclass(slots=True, frozen=True)
class GrpcOutcome:
    reply: GrpcReply
    x_cache: str            # HIT | MISS | BYPASS | COALESCED
    node: str | None        # the node that answered, None for a hit


class GrpcProxy:
    """Balances, counts and caches raw gRPC calls for the front."""

    def __init__(self, proxy: Proxy, upstream: GrpcUpstream) -> None:
        self.proxy = proxy
        self.upstream = upstream

    async def predict(self, path: str, raw: bytes, req: Request, directives: Directives,
                      deadline: float) -> GrpcOutcome:
        """Predict through the result cache (when the version resolves and a cache exists)."""
        spec = req.spec
        units = self._units(req)
        version = await self.proxy.resolve_version(
            Route(spec.name, spec.version, spec.label, "predict", False))
        cache = self.proxy.cache
        if cache is None or version is None:
            if directives.only_if_cached:
                raise DeadlineExceeded(NOT_CACHED)
            return await self.call(path, raw, req, deadline, version=version)
        key = predict_key(req, version)
        if directives.lookup:
            hit = await cache.lookup(key, spec.name)
            if hit is not None:
                return GrpcOutcome(GrpcReply(OK, hit), "HIT", None)
        else:
            cache.bypass(spec.name)
        if directives.only_if_cached:
            raise DeadlineExceeded(NOT_CACHED)

        async def forward_and_fill() -> GrpcOutcome:
            out = await self._forward(path, raw, units, deadline, spec.name, version)
            if out.reply.code == OK and directives.store:
                await cache.fill(key, spec.name, out.reply.body)
            return out

        if not directives.lookup:
            out = await forward_and_fill()
            return GrpcOutcome(out.reply, "BYPASS", out.node)
        try:
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                out, joined = await self.proxy.coalescer.run(key, forward_and_fill)
        except TimeoutError:
            raise DeadlineExceeded("Deadline exceeded") from None
        if joined:
            cache.coalesced(spec.name)
        return GrpcOutcome(out.reply, "COALESCED" if joined else "MISS", out.node)

    async def call(self, path: str, raw: bytes, req: Request, deadline: float,
                   version: int | None = None) -> GrpcOutcome:
        """Any other method (and uncacheable predicts): balanced, counted, not cached."""
        return await self._forward(path, raw, self._units(req), deadline, req.spec.name,
                                   version)

    def _units(self, req: Request) -> float:
        return req.rows * self.proxy.cfg.model(req.spec.name).cost

    async def _forward(self, path: str, raw: bytes, units: float, deadline: float,
                       model: str, version: int | None) -> GrpcOutcome:
        """A call to the policy's choice among nodes with a gRPC address, under
        `Proxy.with_retries`; a full batch queue or a per-try timeout is worth
        another node."""
        def retry(reply: GrpcReply, cut_by_try_timeout: bool) -> bool:
            return reply.code == RESOURCE_EXHAUSTED or (reply.code == DEADLINE
                                                        and cut_by_try_timeout)

        async def attempt(node: Node, try_s: float) -> GrpcReply:
            return await self._attempt(node, path, raw, units, try_s)

        reply, node = await self.proxy.with_retries(
            units, deadline, attempt, retry, model=model, version=version,
            exclude=[n for n in self.proxy.pool if not n.grpc])
        return GrpcOutcome(reply, "MISS", node.name)

    async def _attempt(self, node: Node, path: str, raw: bytes, units: float,
                       timeout_s: float) -> GrpcReply:
        """One node call, counted like `Proxy._attempt`: an error unless the node
        answered with a non-failure code, a τ sample only for OK."""
        assert node.grpc is not None
        start = time.monotonic()
        node.begin(units)
        code = None
        try:
            reply = await self.upstream.call(node.name, node.grpc, path, raw, timeout_s)
            code = reply.code
            return reply
        finally:
            self.proxy.finish_attempt(node, units, start,
                                      ok=code is not None and code not in NODE_FAILURES,
                                      sample=code == OK)
