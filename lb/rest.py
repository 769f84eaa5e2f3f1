"""The REST front: TF Serving's HTTP API on one endpoint.

Called by aiohttp for every client request. `error_middleware` is the one
place where `LbError`s (and anything unexpected) become TF Serving's
`{"error": "..."}` replies with its status codes; the handlers only parse
the request and hand it to `lb.proxy.Proxy`. Replies from nodes, including
their errors (404 unknown model, 400 bad input), pass through with their
status and body.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from lb import observe
from lb.errors import BadRequest, LbError, NotFound, PayloadTooLarge, RequestTimeout
from lb.proxy import Outcome, Proxy
from lb.routes import parse_body, parse_cache_control, parse_path

log = logging.getLogger("lb.error")
access = logging.getLogger("lb.access")

PROXY_KEY = web.AppKey("proxy", Proxy)
LIMIT_KEY = web.AppKey("limit", object)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_reply(status: int, message: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps({"error": message}),
                        content_type="application/json")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except LbError as exc:
        return error_reply(exc.status, str(exc))
    except web.HTTPRequestEntityTooLarge as exc:
        return error_reply(413, f"request body too large: {exc.text}")
    except web.HTTPException as exc:
        return error_reply(exc.status, exc.reason)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_reply(500, "internal error in the proxy")


class InflightLimit:
    """Admission control: past `limit` requests in progress, answer 503 at once.

    Queueing inside the proxy would hide overload from clients and from the
    least-load counters; a fast 503 with Retry-After lets clients back off."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.inflight = 0
        self.rejected = 0

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.inflight >= self.limit:
            self.rejected += 1
            reply = error_reply(503, "too many requests in progress; retry later")
            reply.headers["Retry-After"] = "1"
            return reply
        self.inflight += 1
        try:
            return await handler(request)
        finally:
            self.inflight -= 1


def _reply(outcome: Outcome) -> web.Response:
    headers = {"X-Cache": outcome.x_cache}
    if outcome.node is not None:
        headers["X-Node"] = outcome.node
    return web.Response(status=outcome.reply.status, body=outcome.reply.body,
                        headers=headers, content_type=outcome.reply.content_type)


async def handle_get(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    route = parse_path(request.path)
    if route.verb is not None:
        raise BadRequest(f"{route.verb} requires POST")
    deadline = time.monotonic() + proxy.cfg.limits.request_timeout_s
    return _reply(await proxy.get(route, deadline))


async def handle_post(request: web.Request) -> web.Response:
    proxy = request.app[PROXY_KEY]
    route = parse_path(request.path)
    if route.verb is None:
        raise BadRequest("POST needs a :predict, :classify or :regress path")
    try:
        async with asyncio.timeout(proxy.cfg.limits.body_timeout_s):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(f"request body larger than {exc.text}") from None
    except TimeoutError:
        raise RequestTimeout("the request body did not arrive in time") from None
    body = parse_body(raw, route.verb)
    directives = parse_cache_control(request.headers.get("Cache-Control"))
    deadline = time.monotonic() + proxy.cfg.limits.request_timeout_s
    return _reply(await proxy.infer(route, body, raw, directives, deadline))


async def handle_other(request: web.Request) -> web.Response:
    raise NotFound(f"Malformed request: {request.method} {request.path}")


def make_app(proxy: Proxy) -> web.Application:
    """The client-facing aiohttp application."""
    max_body = int(proxy.cfg.limits.max_body_mb * 1024 * 1024)
    limit = InflightLimit(proxy.cfg.limits.max_inflight)
    app = web.Application(
        middlewares=[observe.middleware(proxy), limit.middleware, error_middleware],
        client_max_size=max_body)
    app[LIMIT_KEY] = limit
    app[PROXY_KEY] = proxy
    app.router.add_get("/v1/models/{tail:.*}", handle_get)
    app.router.add_post("/v1/models/{tail:.*}", handle_post)
    app.router.add_route("*", "/{tail:.*}", handle_other)
    return app
