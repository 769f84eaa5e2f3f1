"""Per-request observation on the REST front: metrics and the access log.

`middleware(proxy)` is registered first (outermost) by `lb.rest.make_app`, so
it sees the final status of every client request, including the error
replies `error_middleware` builds. For each request it increments
`tfslb_requests_total{model,node,code}`, observes
`tfslb_request_duration_seconds{model,node}` (`lb.metrics`) and, when
`log.access` is on, writes one line to the `lb.access` logger: plain text or
one JSON object per line (`log.format`), both read from the live config, so
a reload switches them. A client that goes away before the reply is counted
with code 499. Other fronts (gRPC) call `Observer.record` directly.

The model label comes from the path, the node from the reply's `X-Node`
header and the cache outcome from `X-Cache`, so nothing in the request flow
has to know about metrics. Model labels are bounded: at most `MAX_MODELS`
names, and a name is only admitted by a reply below 400 (a scan of made-up
model names cannot grow the label set); the rest are counted as "(other)".
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.metrics import Counter, Histogram

from lb.config import LogConfig
from lb.history import History, history_for
from lb.metrics import Metrics, metrics_for
from lb.proxy import Proxy

access = logging.getLogger("lb.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_MODELS = 256
OTHER = "(other)"
CLIENT_CLOSED = 499          # nginx's code for a client that left before the reply
_MODELS_PREFIX = "/v1/models/"
_json_handler: logging.Handler | None = None


def configure_access_log(cfg: LogConfig) -> None:
    """Route `lb.access` for the chosen format; called at start-up and on reload.

    JSON lines go to stderr bare (one object per line, no logging prefix) and
    do not propagate; text lines propagate to the root handler.
    """
    global _json_handler
    if _json_handler is not None:
        access.removeHandler(_json_handler)
        _json_handler = None
    access.propagate = cfg.format != "json"
    if cfg.format == "json":
        _json_handler = logging.StreamHandler(sys.stderr)
        _json_handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(_json_handler)
    access.setLevel(logging.INFO)


def model_of(path: str) -> str:
    """The model a TF Serving path names ('' for other paths)."""
    if not path.startswith(_MODELS_PREFIX):
        return ""
    tail = path[len(_MODELS_PREFIX):]
    return tail.split("/", 1)[0].split(":", 1)[0]


class Observer:
    """Records one client request at a time; holds label children so that the hot
    path is two dict lookups and two increments."""

    def __init__(self, proxy: Proxy, metrics: Metrics, history: History) -> None:
        self._proxy = proxy
        self._metrics = metrics
        self._history = history
        self._models: set[str] = set()
        self._counters: dict[tuple[str, str, int], Counter] = {}
        self._histograms: dict[tuple[str, str], Histogram] = {}

    def _model_label(self, model: str, status: int) -> str:
        if model in self._models or not model:
            return model
        if status < 400 and len(self._models) < MAX_MODELS:
            self._models.add(model)
            return model
        return OTHER

    def record(self, model: str, node: str, status: int, seconds: float) -> None:
        """Count one finished client request (any front)."""
        model = self._model_label(model, status)
        counter = self._counters.get((model, node, status))
        if counter is None:
            counter = self._metrics.requests.labels(model, node, str(status))
            self._counters[(model, node, status)] = counter
        counter.inc()
        hist = self._histograms.get((model, node))
        if hist is None:
            hist = self._histograms[(model, node)] = self._metrics.latency.labels(model, node)
        hist.observe(seconds)
        self._history.observe(node, seconds, status)

    def _log(self, request: web.Request, status: int, node: str, cache: str, size: int,
             seconds: float) -> None:
        cfg = self._proxy.cfg.log
        if not cfg.access or not access.isEnabledFor(logging.INFO):
            return
        if cfg.format == "json":
            line = orjson.dumps({
                "ts": round(time.time(), 3), "remote": request.remote, "method": request.method,
                "path": request.path, "status": status, "bytes": size,
                "ms": round(seconds * 1000.0, 3), "model": model_of(request.path) or None,
                "node": node or None, "cache": cache or None}).decode()
            access.info("%s", line)
            return
        access.info('%s "%s %s" %d %dB %.1fms node=%s cache=%s', request.remote,
                    request.method, request.path, status, size, seconds * 1000.0,
                    node or "-", cache or "-")

    def finish(self, request: web.Request, resp: web.StreamResponse | None, status: int,
               start: float) -> None:
        seconds = time.perf_counter() - start
        node = cache = ""
        size = 0
        if resp is not None:
            node = resp.headers.get("X-Node", "")
            cache = resp.headers.get("X-Cache", "")
            size = resp.content_length or 0
        self.record(model_of(request.path), node, status, seconds)
        self._log(request, status, node, cache, size, seconds)

    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        try:
            resp = await handler(request)
        except asyncio.CancelledError:
            self.finish(request, None, CLIENT_CLOSED, start)
            raise
        except web.HTTPException as exc:
            self.finish(request, None, exc.status, start)
            raise
        except Exception:
            self.finish(request, None, 500, start)
            raise
        self.finish(request, resp, resp.status, start)
        return resp


def middleware(proxy: Proxy) -> Middleware:
    """The aiohttp middleware observing `proxy`'s REST front (see module docstring)."""
    observer = Observer(proxy, metrics_for(proxy), history_for(proxy))

    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await observer.middleware(request, handler)

    return observe
