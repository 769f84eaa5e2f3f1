"""The REST front: TF Serving's HTTP API on one endpoint, a thin adapter over the core.

Called by `lb.http.server.HttpServer` for every complete client request
(`handle`). It parses the route and body once, builds a `Call` and hands it to
`lb.request.core.Core`; the answer goes back through `Exchange.respond`. This is the
one place where the proxy's `LbError`s become TF Serving's `{"error": "..."}`
replies with their status codes (`_fail`, with `lb.status.error_body`); replies
from nodes, including their errors (404 unknown model, 400 bad input), pass
through with their status and body. Besides TF Serving's paths it answers `GET /healthz`
(liveness) and `GET /readyz` (200 while a node is healthy and the proxy is not
draining) for orchestrators.

A POST that goes straight to a node (no cache work, no batching) is not
parsed: its rows, for w_j, are estimated from its size (`lb.rest.routes.RowSizes`),
and the node checks it. A request whose body repeats one the cache answered
before is answered synchronously from the in-process tier (`_hit`): no Task,
no JSON parse, no key (`lb.rest.keys` remembers which key those bytes made).

Calls of models routed by node group (`lb.rollout`) get their group before
the core sees them (`Rollouts.route_rest`); their inference calls get a
`Ticket` (which may start a shadow copy) that learns the client's answer once
it is sent.
With `auth` configured, the edge's gate (`lb.edge.gate`) checks every request first
(`handle`): a refused one is answered here (`refuse`) and reaches nothing else.

Guarantees: one Task per request that is not answered synchronously, and none
for cache hits from the in-process tier, `/healthz` and `/readyz`; a client
that leaves cancels its request (the node attempt is cancelled and its
connection dropped, counters return) and is counted with code 499; every
request is counted and, with `log.access`, logged.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Coroutine
from typing import Any, Protocol

from lb.errors import BadRequest, LbError, NotCached, NotFound
from lb.http.client import Response
from lb.http.server import Exchange
from lb.pool.nodes import NodePool
from lb.request.call import Call, Deadline, Outcome, XCache
from lb.request.core import Core
from lb.request.directives import parse_cache_control, parse_priority
from lb.request.dispatch import Job
from lb.request.observe import CLIENT_CLOSED, Recorder, model_of
from lb.rest.formats import adapt
from lb.rest.keys import RestKeys
from lb.rest.routes import Route, RowSizes, parse_body, parse_path
from lb.rest.upstream import RestPayload, RestTransport
from lb.rollout.service import Rollouts, Ticket
from lb.status import error_body

log = logging.getLogger("lb.error")

JSON = b"application/json"
MAX_ROUTES = 4096
_OK = b'{"status": "ok"}'


class Gate(Protocol):
    """The edge's check (`lb.edge.gate.Edge`): True to go on; False when it answered
    the request, or will call `serve_exchange` itself once it knows."""

    def rest(self, ex: Exchange) -> bool: ...


class RestFront:
    """The `App` of the REST front's `HttpServer`; see the module docstring."""

    def __init__(self, core: Core, transport: RestTransport, keys: RestKeys,
                 recorder: Recorder, pool: NodePool, rollouts: Rollouts | None = None) -> None:
        self.core = core                # its `cfg` is the running config
        self.transport = transport
        self.keys = keys
        self.recorder = recorder
        self.pool = pool
        self.draining = False
        self._headers: dict[tuple[XCache, str | None], bytes] = {}
        self._routes: dict[str, tuple[Route, str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.sizes = RowSizes()
        self.rollouts = rollouts        # node groups and shadows (lb.rollout)
        self._tickets: dict[Exchange, Ticket] = {}     # calls of routed models, in progress
        self.gate: Gate | None = None   # set by lb.server while `auth` is configured

    # -- entry --------------------------------------------------------------------

    def handle(self, ex: Exchange) -> None:
        gate = self.gate                # lb.edge: keys and budgets, before anything else
        if gate is not None and not gate.rest(ex):
            return
        self.serve_exchange(ex)

    def refuse(self, ex: Exchange, exc: LbError) -> None:
        """Answer a request the gate refused (401, 403, 429), counted like any other."""
        self._fail(ex, exc, time.perf_counter())

    def serve_exchange(self, ex: Exchange) -> None:
        """A request the gate let through (or any, without a gate)."""
        req = ex.request
        if req.method == "POST" and self.keys.memo and self._hit(ex):
            return
        path = req.path
        if not path.startswith("/v1/") and self._probe(ex, path):
            return
        start = time.perf_counter()
        try:
            self.core.admit()
        except LbError as exc:
            self._fail(ex, exc, start)
            return
        try:
            call, x_cache = self._triage(ex)
        except LbError as exc:
            self.core.release()
            self._fail(ex, exc, start)
            return
        if call.group is not None and self.rollouts is not None:
            p: RestPayload = call.payload
            ticket = self.rollouts.open(call, self.transport, "rest", p.verb, p.body)
            if ticket is not None:
                self._tickets[ex] = ticket
        if x_cache is not None:
            self._direct(ex, call, x_cache, start)
        else:
            self._spawn(ex, self._serve(ex, call, start))

    def _spawn(self, ex: Exchange, coro: Coroutine[Any, Any, None]) -> None:
        task = self.core.dispatcher.running_loop().create_task(coro)
        ex.on_abort = task.cancel               # the client left: cancel its request
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _triage(self, ex: Exchange) -> tuple[Call, XCache | None]:
        """Parse the request once into a `Call`; with an X-Cache when it can go straight
        to a node (see `_direct`), None when it needs the core's awaits."""
        req = ex.request
        route, forward_path = self._route(req.path)
        cfg = self.core.cfg
        deadline = Deadline(time.monotonic() + cfg.limits.request_timeout_s)
        if req.method == "GET":
            if route.verb is not None:
                raise BadRequest(f"{route.verb} requires POST")
            call = Call(model=route.model, version=route.version, label=route.label,
                        pinned=route.version is not None, units=0.0, deadline=deadline,
                        payload=RestPayload("GET", forward_path))
            if self.rollouts is not None:
                self.rollouts.route_rest(call, req)     # the group of a routed model
            return call, XCache.BYPASS                  # status and metadata: never cached
        if req.method != "POST":
            raise NotFound(f"Malformed request: {req.method} {req.path}")
        if route.verb is None:
            raise BadRequest("POST needs a :predict, :classify or :regress path")
        payload = RestPayload("POST", forward_path, req.body, None, route.verb)
        call = Call(model=route.model, version=route.version, label=route.label,
                    pinned=route.version is not None, units=0.0, deadline=deadline,
                    payload=payload)
        if (cc := req.header(b"cache-control")) is not None:
            call.directives = parse_cache_control(cc.decode("latin-1"))
        if (pr := req.header(b"x-priority")) is not None:
            call.priority = parse_priority(pr.decode("latin-1"))
        if self.rollouts is not None:
            self.rollouts.route_rest(call, req)         # before the version and the cache
        x_cache = self.core.direct(call, cacheable=True)
        # Straight to a node, the body is parsed only to count its rows: estimated from
        # its size instead, except for the bodies that keep the estimate true.
        rows = None if x_cache is None else self.sizes.rows(route.model, route.verb,
                                                            len(req.body))
        if rows is None:
            payload.parsed = body = parse_body(req.body, route.verb)
            rows = body.rows
            self.sizes.learn(route.model, route.verb, len(req.body), rows)
        call.rows = rows
        call.units = rows * cfg.model(route.model).cost
        return call, x_cache

    # -- the direct path: no Task ----------------------------------------------------------

    def _direct(self, ex: Exchange, call: Call, x_cache: XCache, start: float) -> None:
        """Hand the call to the dispatcher with a continuation (`_done`), which runs from
        the node connection's I/O callback that ends it — retries and waits in the
        queue included: no Task, no copy of the dispatcher's flow."""
        job = self.core.dispatcher.dispatch(call, self.transport,
                                            functools.partial(self._done, ex, x_cache, start))
        if not job.done:
            ex.on_abort = job.cancel           # the client left: cancel its request

    def _done(self, ex: Exchange, x_cache: XCache, start: float, job: Job) -> None:
        self.core.release()
        if job.cancelled:
            self._finish(ex, CLIENT_CLOSED, "", "", 0, start)
            return
        try:
            answer, node = job.outcome()
        except LbError as exc:
            self._fail(ex, exc, start)
            return
        self._answer(ex, answer, x_cache, node.name, start)

    def _hit(self, ex: Exchange) -> bool:
        """Answer a repeated body from the in-process cache tier, or return False (the
        request then takes the full path, which counts its lookup)."""
        cache = self.core.cache
        req = ex.request
        known = self._routes.get(req.path)
        if cache is None or known is None:
            return False
        route, forward_path = known
        if not cache.using(route.model):          # bypassed: no key, not even the memo's
            return False                          # hash of the body (it is cache none's path)
        found = self.keys.memo.get((forward_path, req.body))
        if found is None or req.header(b"cache-control") is not None:
            return False
        if route.version is None and self.pool.latest_version(found.model) != found.version:
            return False                          # a new version: new keys, full path
        if self.rollouts is not None and found.model in self.rollouts.models:
            return False                          # routed by group since (a reload)
        start = time.perf_counter()
        body = cache.peek(found.key, found.model)
        if body is not None and route.verb == "predict":
            body = adapt(body, found.columnar)
        if body is None:
            return False
        ex.respond(200, body, JSON, b"X-Cache: HIT\r\n")
        self._finish(ex, 200, "", "HIT", len(body), start)
        return True

    def _probe(self, ex: Exchange, path: str) -> bool:
        """GET /healthz and /readyz, answered synchronously; False for other paths."""
        if ex.request.method != "GET" or path not in ("/healthz", "/readyz"):
            return False
        if path == "/readyz" and (self.draining or not self.pool.any_healthy()):
            reason = "draining" if self.draining else "no healthy node"
            ex.respond(503, error_body(reason))
        else:
            ex.respond(200, _OK)
        return True

    async def _serve(self, ex: Exchange, call: Call, start: float) -> None:
        await self._serve_outcome(ex, self.core.serve(call, self.transport, self.keys.plan),
                                  start)

    async def _serve_outcome(self, ex: Exchange, outcome: Awaitable[Outcome[Response]],
                             start: float) -> None:
        """Await the core's answer and reply; the one place a Task's errors are mapped."""
        try:
            done = await outcome
        except LbError as exc:
            self._fail(ex, exc, start)
        except asyncio.CancelledError:
            self._finish(ex, CLIENT_CLOSED, "", "", 0, start)
            raise
        except Exception:
            log.exception("unhandled error on %s %s", ex.request.method, ex.request.path)
            self._fail(ex, LbError("internal error in the proxy"), start)
        else:
            self._reply(ex, done, start)
        finally:
            self.core.release()

    def _route(self, path: str) -> tuple[Route, str]:
        """The parsed route and the path forwarded to nodes (cached per raw path)."""
        known = self._routes.get(path)
        if known is None:
            route = parse_path(path)
            known = (route, route.path())
            if len(self._routes) < MAX_ROUTES:
                self._routes[path] = known
        return known

    # -- replies ------------------------------------------------------------------

    def _reply(self, ex: Exchange, outcome: Outcome[Response], start: float) -> None:
        self._answer(ex, outcome.answer, outcome.x_cache, outcome.node, start)

    def _answer(self, ex: Exchange, reply: Response, x_cache: XCache, node: str | None,
                start: float) -> None:
        key = (x_cache, node)
        headers = self._headers.get(key)
        if headers is None:
            headers = b"X-Cache: " + x_cache.value.encode() + b"\r\n"
            if node is not None:
                headers += b"X-Node: " + node.encode() + b"\r\n"
            if len(self._headers) < 4096:
                self._headers[key] = headers
        ctype = JSON if reply.content_type == "application/json" else reply.content_type.encode()
        ex.respond(reply.status, reply.body, ctype, headers)
        if self._tickets and (ticket := self._tickets.pop(ex, None)) is not None:
            ticket.answered(reply.status, reply.body, x_cache is XCache.HIT)
        self._finish(ex, reply.status, node or "", x_cache, len(reply.body), start)  # a str

    def _fail(self, ex: Exchange, exc: LbError, start: float) -> None:
        """The one place an LbError becomes a client reply."""
        headers = exc.headers
        if exc.retry_after is not None:
            headers += b"Retry-After: %d\r\n" % exc.retry_after
        if isinstance(exc, NotCached):
            headers += b"X-Cache: MISS\r\n"
        body = error_body(str(exc))
        ex.respond(exc.status, body, JSON, headers)
        self._finish(ex, exc.status, "", "MISS" if isinstance(exc, NotCached) else "",
                     len(body), start)

    def _finish(self, ex: Exchange, status: int, node: str, cache: str, size: int,
                start: float) -> None:
        seconds = time.perf_counter() - start
        if self._tickets and (ticket := self._tickets.pop(ex, None)) is not None:
            ticket.answered(status, None, False)       # an error, or the client left
        req = ex.request
        known = self._routes.get(req.path)
        model = known[0].model if known is not None else model_of(req.path)
        recorder = self.recorder
        recorder.record(model, node, status, seconds)
        if recorder.access:
            recorder.log(req.remote, req.method, req.path, status, node, cache, size, seconds)

    async def close(self) -> None:
        """Cancel requests still running (after the server's grace period)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

