"""The request flow shared by the fronts: cache lookup, node choice, forward, fill.

Called by `lb.rest` (and later the gRPC front) once per client request. It
guarantees: a reply or an `LbError` within the request's deadline; every node
attempt is bracketed by `Node.begin`/`Node.end` (so in-flight counts never
leak); a request that failed before any response is retried once on another
node; only 200 replies are stored in the cache; a cache problem is a miss.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from cache.coalesce import Coalescer
from cache.keys import key_mode, request_key, row_keys
from cache.result_cache import ResultCache
from lb.config import Config
from lb.errors import DeadlineExceeded, LbError, Unavailable, UpstreamError
from lb.formats import adapt
from lb.nodes import Node, NodePool
from lb.retry import RetryBudget
from lb.routes import Body, Directives, Route
from lb.rowcache import RowCache
from lb.signatures import Signatures
from lb.upstream import Reply, Upstream

log = logging.getLogger("lb.proxy")

# TF Serving answers these when its batch queue is full: another node may not be.
_RETRY_STATUSES = frozenset({429, 503})
R = TypeVar("R")


def _loop_deadline(deadline: float) -> float:
    """A time.monotonic() deadline on the running loop's clock."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())

JSON = "application/json"


@dataclass(slots=True, frozen=True)
class Outcome:
    reply: Reply
    x_cache: str            # HIT | MISS | BYPASS
    node: str | None        # the node that answered, None for a hit


class Proxy:
    def __init__(self, cfg: Config, pool: NodePool, upstream: Upstream,
                 cache: ResultCache | None,
                 learn: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.cfg = cfg
        self.pool = pool
        self.upstream = upstream
        self.cache = cache
        self.signatures = Signatures(self._fetch_metadata)
        self.coalescer = Coalescer()
        up = cfg.upstream
        self.budget = RetryBudget(ratio=up.retry_budget_ratio, min_per_s=up.retry_min_per_s)
        # model -> "tensor" | "json": how its keys were last made (shown in /stats)
        self.key_modes: dict[str, str] = {}
        self.rows = RowCache(cache, self._forward_rows) if cache is not None else None
        self._learn = learn

    @property
    def retries(self) -> int:
        """Attempts sent to a second node (for /metrics and /stats)."""
        return self.budget.retries

    @property
    def retry_budget_rejections(self) -> int:
        return self.budget.rejected

    # -- the verbs -------------------------------------------------------------

    async def infer(self, route: Route, body: Body, raw: bytes, directives: Directives,
                    deadline: float) -> Outcome:
        """:predict / :classify / :regress through the cache."""
        version = await self._resolve_version(route)
        units = body.rows * self.cfg.model(route.model).cost
        if self.cache is not None and version is not None:
            if self.rows is not None and self._row_cached(route, body):
                outcome = await self._serve_rows(route, body, version, directives, deadline)
                if outcome is not None:
                    return outcome
            key = await self._key(route, version, body)
            if key is not None:
                return await self._cached(route, body, raw, key, units, version, directives,
                                          deadline)
        if directives.only_if_cached:                  # not cacheable
            return self._not_cached()
        reply, node = await self.forward("POST", route.path(), raw, units, deadline,
                                         model=route.model, version=version)
        return Outcome(reply, "MISS", node.name)

    async def _cached(self, route: Route, body: Body, raw: bytes, key: str, units: float,
                      version: int, directives: Directives, deadline: float) -> Outcome:
        """The whole-request cache path: lookup, then a (coalesced) miss."""
        assert self.cache is not None
        if directives.lookup:
            hit = await self.cache.lookup(key, route.model)
            if hit is not None and route.verb == "predict":
                hit = adapt(hit, body.columnar)     # row and columnar requests share entries
            if hit is not None:
                return Outcome(Reply(200, hit, JSON), "HIT", None)
        else:
            self.cache.bypass(route.model)
        if directives.only_if_cached:
            return self._not_cached()
        return await self._miss(route, key, raw, units, version, directives, deadline)

    def _row_cached(self, route: Route, body: Body) -> bool:
        return (route.verb == "predict" and not body.columnar
                and self.cfg.model(route.model).row_cache)

    async def _serve_rows(self, route: Route, body: Body, version: int | None,
                          directives: Directives, deadline: float) -> Outcome | None:
        """The row-level path; None when the body has no row keys (whole-request path)."""
        assert self.rows is not None and version is not None
        dtypes = await self.signatures.dtypes(route.model, version, body.signature_name)
        keys = row_keys(route.model, str(version), body.signature_name, body.doc, dtypes)
        if not keys:
            return None
        out = await self.rows.serve(route, body, keys, version, directives, deadline)
        if out is None:
            return self._not_cached()
        return Outcome(out.reply, out.x_cache, out.node)

    async def _forward_rows(self, route: Route, raw: bytes, rows: int, version: int,
                            deadline: float) -> tuple[Reply, Node]:
        units = rows * self.cfg.model(route.model).cost
        return await self.forward("POST", route.path(), raw, units, deadline,
                                  model=route.model, version=version)

    async def _miss(self, route: Route, key: str, raw: bytes, units: float, version: int,
                    directives: Directives, deadline: float) -> Outcome:
        """Forward a cacheable request; identical concurrent misses share one call."""
        cache = self.cache
        assert cache is not None

        async def call() -> tuple[Reply, Node]:
            reply, node = await self.forward("POST", route.path(), raw, units, deadline,
                                             model=route.model, version=version)
            if reply.status == 200 and directives.store:
                await cache.fill(key, route.model, reply.body)
            return reply, node

        if not directives.lookup:                      # no-cache / no-store: its own call
            reply, node = await call()
            return Outcome(reply, "BYPASS", node.name)
        try:
            async with asyncio.timeout_at(_loop_deadline(deadline)):
                (reply, node), joined = await self.coalescer.run(key, call)
        except TimeoutError:
            raise DeadlineExceeded("Deadline exceeded") from None
        if joined:
            cache.coalesced(route.model)
        return Outcome(reply, "COALESCED" if joined else "MISS", node.name)

    async def get(self, route: Route, deadline: float) -> Outcome:
        """Model status and metadata: forwarded to one node, never cached."""
        reply, node = await self.forward("GET", route.path(), None, 0.0, deadline)
        return Outcome(reply, "BYPASS", node.name)

    @staticmethod
    def _not_cached() -> Outcome:
        return Outcome(Reply(504, b'{"error": "not in cache (only-if-cached)"}', JSON),
                       "MISS", None)

    async def resolve_version(self, route: Route) -> int | None:
        """`_resolve_version` for the gRPC front (lb.grpc_proxy)."""
        return await self._resolve_version(route)

    async def _resolve_version(self, route: Route) -> int | None:
        """The version a request addresses: explicit, or the latest AVAILABLE one the
        health checks see (learned now if the model is new). None for labels, and
        for models no node serves: such requests are not cached."""
        if route.version is not None or route.label is not None:
            return route.version
        version = self.pool.latest_version(route.model)
        if version is None and self._learn is not None:
            await self._learn(route.model)
            version = self.pool.latest_version(route.model)
        return version

    async def _key(self, route: Route, version: int, body: Body) -> str | None:
        assert route.verb is not None
        dtypes = await self.signatures.dtypes(route.model, version, body.signature_name)
        if len(self.key_modes) < 256 or route.model in self.key_modes:
            self.key_modes[route.model] = key_mode(dtypes)
        try:
            return request_key(route.model, str(version), route.verb, body.doc, dtypes,
                               body.signature_name)
        except Exception:     # a body the key cannot read is simply not cached
            log.debug("no cache key for %s", route.model, exc_info=True)
            return None

    # -- forwarding --------------------------------------------------------------

    async def forward(self, method: str, path: str, body: bytes | None, units: float,
                      deadline: float, *, model: str | None = None,
                      version: int | None = None) -> tuple[Reply, Node]:
        """A REST call to the policy's choice, under `with_retries`; 503 and 429 (TF
        Serving's full batch queue) are worth another node."""
        headers = {"Content-Type": JSON} if body is not None else None

        async def attempt(node: Node, try_s: float) -> Reply:
            return await self._attempt(node, method, path, body, headers, units, try_s)

        return await self.with_retries(
            units, deadline, attempt, lambda reply, _cut: reply.status in _RETRY_STATUSES,
            model=model, version=version)

    async def with_retries(self, units: float, deadline: float,
                           attempt: Callable[[Node, float], Awaitable[R]],
                           retry: Callable[[R, bool], bool], *, model: str | None = None,
                           version: int | None = None,
                           exclude: Sequence[Node] = ()) -> tuple[R, Node]:
        """The one retry policy of both fronts.

        `attempt(node, try_s)` makes one call (raising UpstreamError when no answer
        came); `retry(answer, cut_by_try_timeout)` says whether an answer is worth
        another node. A retry needs another node, a token of the retry budget and
        time before `deadline`. When no attempt succeeds, the last answer is
        returned if there was one; otherwise Unavailable, or DeadlineExceeded.
        """
        tried = list(exclude)
        error: LbError | None = None
        answered: tuple[R, Node] | None = None
        self.budget.deposit(time.monotonic())
        for n in range(1 + self.cfg.upstream.retries):
            now = time.monotonic()
            if deadline - now <= 0 or (n and not self.budget.try_spend(now)):
                break
            node = self.pool.pick(units, exclude=tried, model=model, version=version)
            if node is None:
                break
            tried.append(node)
            try_s = min(deadline - now, self.cfg.upstream.try_timeout_s or math.inf)
            try:
                answer = await attempt(node, try_s)
            except UpstreamError as exc:
                log.warning("attempt on %s failed: %s", node.name, exc)
                error = exc
                continue
            answered = (answer, node)
            if not retry(answer, try_s < deadline - now):
                return answered
        if answered is not None:
            return answered
        if deadline - time.monotonic() <= 0:
            raise DeadlineExceeded("Deadline exceeded") from error
        if error is None:
            raise Unavailable("no node available")
        raise Unavailable(str(error)) from error

    async def _attempt(self, node: Node, method: str, path: str, body: bytes | None,
                       headers: dict[str, str] | None, units: float, timeout_s: float) -> Reply:
        """One try on one node, bracketed by begin/end; feeds outlier detection."""
        start = time.monotonic()
        node.begin(units)
        status = 0
        try:
            reply = await self.upstream.request(node.name, node.rest, method, path, body,
                                                headers, timeout_s)
            status = reply.status
            return reply
        finally:
            self.finish_attempt(node, units, start, ok=0 < status < 500, sample=status == 200)

    def finish_attempt(self, node: Node, units: float, start: float, *, ok: bool,
                       sample: bool) -> None:
        """Close an attempt opened with `node.begin(units)` at `start` (REST and gRPC):
        counters, τ (`sample`: a real answer's time), and passive outlier detection."""
        now = time.monotonic()
        node.end(units, now - start, ok=ok, now=now, sample=sample)
        if node.outlier.record(ok, now, self.pool.outlier):
            node.healthy = False        # back only after the back-off and a good probe
            log.warning("node %s ejected until +%.1fs after %d consecutive failures",
                        node.name, node.outlier.ejected_until - now,
                        self.pool.outlier.consecutive_errors)

    async def _fetch_metadata(self, model: str, version: int) -> bytes | None:
        path = f"/v1/models/{model}/versions/{version}/metadata"
        deadline = time.monotonic() + self.cfg.health.timeout_s * 2
        try:
            reply, _ = await self.forward("GET", path, None, 0.0, deadline,
                                          model=model, version=version)
        except LbError:
            return None
        return reply.body if reply.status == 200 else None

    async def close(self) -> None:
        await self.coalescer.close()
        if self.rows is not None:
            await self.rows.close()
        if self.cache is not None:
            await self.cache.close()
        await self.upstream.close()
        await asyncio.sleep(0)
