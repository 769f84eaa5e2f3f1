"""The TensorFlow Serving REST surface of the worker, on aiohttp.

`worker` calls `build_app` once and serves the result. Routes, as TF Serving:

    GET  /v1/models/{m}[/versions/{n}|/labels/{l}]            model status
    GET  /v1/models/{m}[/versions/{n}|/labels/{l}]/metadata   signature metadata
    POST /v1/models/{m}[/versions/{n}|/labels/{l}]:predict|:classify|:regress
    GET  /_worker/stats, /_worker/healthz                     worker-only extras
    PUT  /_worker/delay, /_worker/fault                       (a slower, a failing node)

Guarantees: every error reply is `{"error": "..."}` with TF Serving's status
code (see `errors.http_status`); nothing a client sends crashes the worker
(unexpected exceptions are logged and answered 500); inference runs in the
given thread pool, never on the event loop, after the configured delay.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

import orjson
from aiohttp import web

from backends.errors import InvalidInput, WorkerError, http_status
from backends.faults import Fault, scramble_reply
from backends.registry import Registry, parse_version
from backends.stats import WorkerStats

logger = logging.getLogger("backends")

MAX_BODY_BYTES = 64 * 1024 * 1024

_GET_RE = re.compile(
    r"^/v1/models/(?P<model>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?(?P<metadata>/metadata)?$")
_POST_RE = re.compile(
    r"^/v1/models/(?P<model>[^/:]+)"
    r"(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?"
    r":(?P<verb>predict|classify|regress)$")

REGISTRY: web.AppKey[Registry] = web.AppKey("registry", Registry)
STATS: web.AppKey[WorkerStats] = web.AppKey("stats", WorkerStats)
EXECUTOR: web.AppKey[Executor] = web.AppKey("executor", Executor)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(body: Any, status: int = 200) -> web.Response:
    """A JSON reply; numpy arrays and scalars inside `body` are written natively."""
    data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return web.Response(body=data, status=status, content_type="application/json")


def error_response(exc: WorkerError) -> web.Response:
    return json_response({"error": exc.message}, http_status(exc))


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into `{"error": ...}`; unexpected ones are logged as bugs."""
    try:
        return await handler(request)
    except WorkerError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        return json_response({"error": exc.reason}, exc.status)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        logger.exception("unexpected error on %s %s", request.method, request.path)
        return json_response({"error": f"Internal error: {type(exc).__name__}: {exc}"}, 500)


def _version_of(match: re.Match[str]) -> int | None:
    text = match["version"]
    return parse_version(text) if text is not None else None


async def handle_get(request: web.Request) -> web.Response:
    """Model status or metadata for `/v1/models/...` GETs."""
    match = _GET_RE.match(request.path)
    if match is None:
        raise InvalidInput(f"Malformed request: GET {request.path}")
    registry = request.app[REGISTRY]
    model, version, label = match["model"], _version_of(match), match["label"]
    if not match["metadata"]:
        return json_response(registry.status(model, version, label))
    found = registry.resolve(model, version, label)
    return json_response({
        "model_spec": {"name": model, "signature_name": "", "version": str(found.number)},
        "metadata": {"signature_def": found.servable.metadata},
    })


async def _read_json(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"JSON Parse error: {exc}") from None


async def handle_post(request: web.Request) -> web.Response:
    """`:predict`, `:classify`, `:regress` on the resolved version, in the thread pool."""
    match = _POST_RE.match(request.path)
    if match is None:
        raise InvalidInput(f"Malformed request: POST {request.path}")
    app = request.app
    app[STATS].received()
    body = await _read_json(request)
    model, verb = match["model"], match["verb"]
    version = app[REGISTRY].resolve(model, _version_of(match), match["label"])
    app[STATS].reached_model(model, verb)
    if app[STATS].delay_s > 0:
        await asyncio.sleep(app[STATS].delay_s)
    fault = app[STATS].fault
    if fault.status:
        return json_response({"error": "injected fault (PUT /_worker/fault)"}, fault.status)
    call = getattr(version.servable, verb)
    loop = asyncio.get_running_loop()
    rows, reply = await loop.run_in_executor(app[EXECUTOR], call, body)
    app[STATS].succeeded(rows)
    return json_response(scramble_reply(reply) if fault.scramble and verb == "predict"
                         else reply)


async def handle_stats(request: web.Request) -> web.Response:
    return json_response(request.app[STATS].as_json())


async def handle_healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def handle_unknown(request: web.Request) -> web.Response:
    return json_response({"error": f"Not found: {request.method} {request.path}"}, 404)


async def handle_delay(request: web.Request) -> web.Response:
    """`PUT /_worker/delay {"delay_ms": D}`: change the deliberate slowdown live."""
    try:
        delay_ms = float((await request.json())["delay_ms"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f'expected {{"delay_ms": number}}: {exc}') from None
    if not 0.0 <= delay_ms <= 60_000.0:
        raise InvalidInput("delay_ms must be within [0, 60000]")
    request.app[STATS].delay_s = delay_ms / 1000.0
    logger.info("delay set to %.1f ms", delay_ms)
    return json_response({"delay_ms": delay_ms})


async def handle_fault(request: web.Request) -> web.Response:
    """`PUT /_worker/fault {"status": 500}` or `{"scramble": true}` or `{}` (test-only)."""
    try:
        doc = await request.json()
    except ValueError as exc:
        raise InvalidInput(f"expected a JSON object: {exc}") from None
    fault = request.app[STATS].fault = Fault.parse(doc)
    logger.warning("fault set: %s", fault.as_json())
    return json_response(fault.as_json())


def build_app(registry: Registry, stats: WorkerStats, executor: Executor,
              delay_s: float = 0.0) -> web.Application:
    """The aiohttp application; the caller owns `executor` and shuts it down."""
    app = web.Application(middlewares=[errors_middleware], client_max_size=MAX_BODY_BYTES)
    app[REGISTRY] = registry
    app[STATS] = stats
    app[EXECUTOR] = executor
    stats.delay_s = delay_s
    app.router.add_get("/_worker/stats", handle_stats)
    app.router.add_put("/_worker/delay", handle_delay)
    app.router.add_put("/_worker/fault", handle_fault)
    app.router.add_get("/_worker/healthz", handle_healthz)
    app.router.add_get("/v1/{tail:.*}", handle_get)
    app.router.add_post("/v1/{tail:.*}", handle_post)
    app.router.add_route("*", "/{tail:.*}", handle_unknown)
    return app
