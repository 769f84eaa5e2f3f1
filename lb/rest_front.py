"""The REST front: TF Serving's HTTP API on one endpoint, a thin adapter over the core.

Called by `lb.http.server.HttpServer` for every complete client request
(`handle`). It parses the route and body once, builds a `Call` and hands it to
`lb.core.Core`; the answer goes back through `Exchange.respond`. This is the
one place where the proxy's `LbError`s become TF Serving's `{"error": "..."}`
replies with their status codes (`error_reply`); replies from nodes, including
their errors (404 unknown model, 400 bad input), pass through with their
status and body. Besides TF Serving's paths it answers `GET /healthz`
(liveness) and `GET /readyz` (200 while a node is healthy and the proxy is not
draining) for orchestrators.

Guarantees: one Task per request that is not answered synchronously, and none
for `/healthz` and `/readyz`; a client that leaves cancels its request (the
node attempt is cancelled and its connection dropped, counters return) and is
counted with code 499; every request is counted and, with `log.access`, logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import orjson

from lb.call import Call, Deadline, Outcome, XCache
from lb.config import Config
from lb.core import Core
from lb.errors import BadRequest, LbError, NotCached, NotFound
from lb.http.client import Response
from lb.http.server import Exchange
from lb.nodes import NodePool
from lb.observe import CLIENT_CLOSED, Recorder, model_of
from lb.rest_keys import RestKeys
from lb.rest_upstream import RestPayload, RestTransport
from lb.routes import Route, parse_body, parse_cache_control, parse_path

log = logging.getLogger("lb.error")

JSON = b"application/json"
_OK = b'{"status": "ok"}'


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


class RestFront:
    """The `App` of the REST front's `HttpServer`; see the module docstring."""

    def __init__(self, core: Core, transport: RestTransport, keys: RestKeys,
                 recorder: Recorder, cfg: Callable[[], Config], pool: NodePool) -> None:
        self.core = core
        self.transport = transport
        self.keys = keys
        self.recorder = recorder
        self._cfg = cfg
        self.pool = pool
        self.draining = False
        self._headers: dict[tuple[XCache, str | None], bytes] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- entry --------------------------------------------------------------------

    def handle(self, ex: Exchange) -> None:
        path = ex.request.path
        if not path.startswith("/v1/") and self._probe(ex, path):
            return
        try:
            self.core.admit()
        except LbError as exc:
            self._fail(ex, exc, time.perf_counter())
            return
        task = asyncio.get_running_loop().create_task(self._serve(ex))
        ex.on_abort = _canceller(task)          # the client left: cancel its request

        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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

    async def _serve(self, ex: Exchange) -> None:
        start = time.perf_counter()
        try:
            outcome = await self._outcome(ex)
        except LbError as exc:
            self._fail(ex, exc, start)
        except asyncio.CancelledError:
            self._finish(ex, CLIENT_CLOSED, "", "", 0, start)
            raise
        except Exception:
            log.exception("unhandled error on %s %s", ex.request.method, ex.request.path)
            self._fail(ex, LbError("internal error in the proxy"), start)
        else:
            self._reply(ex, outcome, start)
        finally:
            self.core.release()

    async def _outcome(self, ex: Exchange) -> Outcome[Response]:
        req = ex.request
        route = parse_path(req.path)
        cfg = self._cfg()
        deadline = Deadline.after(cfg.limits.request_timeout_s)
        if req.method == "GET":
            if route.verb is not None:
                raise BadRequest(f"{route.verb} requires POST")
            return await self.core.passthrough(
                self._call(route, RestPayload("GET", route.path()), 0.0, deadline),
                self.transport)
        if req.method != "POST":
            raise NotFound(f"Malformed request: {req.method} {req.path}")
        if route.verb is None:
            raise BadRequest("POST needs a :predict, :classify or :regress path")
        body = parse_body(req.body, route.verb)
        directives = parse_cache_control(_header(ex, b"cache-control"))
        payload = RestPayload("POST", route.path(), req.body, body, route.verb)
        call = self._call(route, payload, body.rows * cfg.model(route.model).cost, deadline)
        call.directives, call.rows = directives, body.rows
        return await self.core.serve(call, self.transport, self.keys.plan)

    @staticmethod
    def _call(route: Route, payload: RestPayload, units: float, deadline: Deadline) -> Call:
        return Call(route.model, route.version, route.label, route.version is not None,
                    units, deadline, payload)

    # -- replies ------------------------------------------------------------------

    def _reply(self, ex: Exchange, outcome: Outcome[Response], start: float) -> None:
        key = (outcome.x_cache, outcome.node)
        headers = self._headers.get(key)
        if headers is None:
            headers = b"X-Cache: " + outcome.x_cache.value.encode() + b"\r\n"
            if outcome.node is not None:
                headers += b"X-Node: " + outcome.node.encode() + b"\r\n"
            if len(self._headers) < 4096:
                self._headers[key] = headers
        reply = outcome.answer
        ctype = JSON if reply.content_type == "application/json" else reply.content_type.encode()
        ex.respond(reply.status, reply.body, ctype, headers)
        self._finish(ex, reply.status, outcome.node or "", outcome.x_cache.value,
                     len(reply.body), start)

    def _fail(self, ex: Exchange, exc: LbError, start: float) -> None:
        """The one place an LbError becomes a client reply."""
        headers = b""
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
        req = ex.request
        self.recorder.record(model_of(req.path), node, status, seconds)
        self.recorder.log(req.remote, req.method, req.path, status, node, cache, size, seconds)

    async def close(self) -> None:
        """Cancel requests still running (after the server's grace period)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _canceller(task: asyncio.Task[None]) -> Callable[[], None]:
    def cancel() -> None:
        task.cancel()
    return cancel


def _header(ex: Exchange, name: bytes) -> str | None:
    value = ex.request.header(name)
    return value.decode("latin-1") if value is not None else None
