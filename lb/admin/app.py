"""The admin port (loopback by default) and the metrics port: what operators and scrapers read.

Called by `lb.server.start` (`serve_admin_side`) and, under `serve --workers N`,
by the supervisor (`lb.supervisor`, with `lb.fleet.view.FleetView`). Routes:
`/stats`, `/healthz`, `/metrics`, `/history`, `/dashboard` and `POST /reload` on
`listen.admin`, and, for one process, the rollout endpoints of
`lb.rollout.admin` (`/shadow/M`, `/rollout/M[/ACTION]`: with `--workers N` each
worker runs its own rollout and these are not served); `/metrics` alone on
`listen.metrics` (read-only, no token).

Every handler reads an `AdminView`: the process itself (`LocalView`) or the
supervisor's view of all its workers (`FleetView`); both answer for the whole
proxy in the same shape (`lb.fleet.rules` says how figures add up).

`/stats` is a contract (docs/ARCHITECTURE.md): the keys of each node entry and of
`cache` are always present, whatever the backend; `processes` has each process's
own figures. Mutating endpoints (`POST /reload`) answer 401 unless the request
carries `Authorization: Bearer <admin.token>` when a token is configured (read
from the live config, so a reload can set or rotate it).

Under a supervisor, a worker serves none of this: `serve_admin_side` gives it
its control socket (`lb.fleet.control`) instead.
"""

from __future__ import annotations

import hmac
import logging
import os
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from aiohttp import web

from lb import native
from lb.admin.dashboard import handle_dashboard, history_handler
from lb.admin.history import History
from lb.admin.metrics import CONTENT_TYPE
from lb.admin.source import ProxySource, ReloadHook
from lb.config import split_hostport
from lb.fleet.merge import merge
from lb.fleet.procinfo import cache_memory, figures
from lb.fleet.prom import MetricMerger, fleet_metrics, render
from lb.fleet.rules import STATS, own_figures
from lb.rollout.admin import add_routes as add_rollout_routes

if TYPE_CHECKING:                 # the supervisor imports this module, never the proxy
    from lb.request.observe import Recorder

log = logging.getLogger("lb.admin.app")

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _client_requests(recorder: Recorder) -> dict[str, Any]:
    by_code: dict[str, int] = {}
    for (_model, _node, code), count in list(recorder.requests.items()):
        by_code[str(code)] = by_code.get(str(code), 0) + count
    return {"total": sum(by_code.values()),
            "errors": sum(n for code, n in by_code.items() if int(code) >= 500),
            "by_code": by_code}


def _nodes(proxy: ProxySource) -> list[dict[str, Any]]:
    """pool.stats() plus each node's completions in the load window (for `share`)."""
    now, nodes = proxy.pool.now(), {n.name: n for n in proxy.pool}
    entries = proxy.pool.stats()
    for entry in entries:
        node = nodes.get(entry["name"])
        entry["window_requests"] = node.window.count(now) if node is not None else 0
    return entries


def stats_doc(proxy: ProxySource) -> dict[str, Any]:
    """The /stats document of this one process (the admin port merges the processes')."""
    cache: dict[str, Any]
    if proxy.cache is not None:
        cache = proxy.cache.stats()
    else:
        cache = {"backend": "none", "hits": 0, "misses": 0, "hit_rate": 0.0}
    cache["signatures"] = proxy.signatures.stats()
    # "json": no signature metadata, keys fall back to canonical JSON (1 != 1.0)
    cache["key_modes"] = dict(proxy.keys.key_modes)
    cache["coalescing"] = proxy.core.flights.stats()
    flow = proxy.dispatcher.stats()
    own = figures()
    return {"nodes": _nodes(proxy), "cache": cache, "policy": proxy.pool.policy_name,
            "pid": os.getpid(), "data_path": native.kind(), "config": proxy.status.as_dict(),
            "retries": {"retries": flow["retries"],
                        "budget_rejections": flow["budget_rejections"]},
            "hedge": flow["hedge"], "queue": flow["queue"],
            "waits": proxy.core.waits.as_dict(),
            "inflight": proxy.core.inflight, "shed": proxy.core.shed,
            "batching": proxy.dispatcher.batches.as_dict(),
            "upstream": {"rest": proxy.rest_upstream.stats(),
                         "grpc_channels": proxy.grpc_upstream.channels},
            "discovery": proxy.discovery.status.as_dict() if proxy.discovery else None,
            "routing": proxy.rollouts.stats(),
            "security": proxy.edge.stats(),
            "requests": _client_requests(proxy.recorder),
            "memory": {"rss_bytes": own["rss_bytes"], **cache_memory(cache.get("store"))},
            "process": {"cpu_seconds": own["cpu_seconds"], "open_fds": own["open_fds"],
                        "started_at": own["started_at"]}}


class AdminView(Protocol):
    """What the admin and metrics ports read (the whole proxy, at any process count)."""

    history: History

    def token(self) -> str | None: ...
    async def stats(self) -> dict[str, Any]: ...
    async def metrics(self) -> bytes: ...
    async def healthy(self) -> bool: ...
    async def reload(self, reason: str) -> tuple[bool, dict[str, Any]]: ...


class LocalView:
    """One proxy process answering for itself (`serve` without `--workers`)."""

    def __init__(self, proxy: ProxySource, reloader: ReloadHook | None) -> None:
        self.proxy = proxy
        self.reloader = reloader
        self.history = proxy.history
        self._metrics = MetricMerger()

    def token(self) -> str | None:
        return self.proxy.cfg.admin.token

    async def stats(self) -> dict[str, Any]:
        doc = stats_doc(self.proxy)
        out = merge(STATS, [doc])
        out["workers"] = 1
        out["processes"] = [own_figures(doc, 0, "up")]
        return out

    async def metrics(self) -> bytes:
        merged = self._metrics.merge({os.getpid(): self.proxy.metrics.families()})
        return render(merged + fleet_metrics(1, 0))

    async def healthy(self) -> bool:
        return self.proxy.pool.any_healthy()

    async def reload(self, reason: str) -> tuple[bool, dict[str, Any]]:
        if self.reloader is None:
            return False, {"reloaded": False, "error": "no config file to reload"}
        ok, message = await self.reloader.reload(reason)
        doc: dict[str, Any] = {"reloaded": ok, "config": self.reloader.status.as_dict()}
        doc["changes" if ok else "error"] = message
        return ok, doc


ADMIN_VIEW = web.AppKey("admin_view", AdminView)


def _json(status: int, doc: dict[str, Any], **headers: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), headers=headers,
                        content_type="application/json")


async def handle_stats(request: web.Request) -> web.Response:
    return _json(200, await request.app[ADMIN_VIEW].stats())


async def handle_healthz(request: web.Request) -> web.Response:
    ok = await request.app[ADMIN_VIEW].healthy()
    return web.Response(status=200 if ok else 503, text="ok\n" if ok else "no healthy node\n")


async def handle_metrics(request: web.Request) -> web.Response:
    body = await request.app[ADMIN_VIEW].metrics()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def authorized(request: web.Request) -> bool:
    """True when no admin token is configured or the request carries it as Bearer."""
    token = request.app[ADMIN_VIEW].token()
    if token is None:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              token.encode())


async def handle_reload(request: web.Request) -> web.Response:
    """Reload the config file now: 200 applied, 400 rejected (old config kept)."""
    if not authorized(request):
        return _json(401, {"error": "missing or wrong bearer token"},
                     **{"WWW-Authenticate": 'Bearer realm="tfserving-lb admin"'})
    ok, doc = await request.app[ADMIN_VIEW].reload("POST /reload")
    return _json(200 if ok else 400, doc)


def warn_if_exposed(admin: str, token: str | None) -> None:
    host, _ = split_hostport(admin)
    if host not in _LOOPBACK and token is None:
        log.warning("admin port %s is not on loopback and no admin.token is set: "
                    "anyone who reaches it can reload the config", admin)


def make_admin_app(view: AdminView) -> web.Application:
    """The admin aiohttp application over `view`."""
    app = web.Application()
    app[ADMIN_VIEW] = view
    app.router.add_get("/stats", handle_stats)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/dashboard", handle_dashboard)
    app.router.add_get("/history", history_handler(view.history))
    app.router.add_post("/reload", handle_reload)
    if isinstance(view, LocalView):       # /shadow/M, /rollout/M[/action]: one process
        add_rollout_routes(app, view.proxy.rollouts, authorized)
    return app


def make_metrics_app(view: AdminView) -> web.Application:
    """`listen.metrics`: GET /metrics and nothing else (no token: it changes nothing)."""
    app = web.Application()
    app[ADMIN_VIEW] = view
    app.router.add_get("/metrics", handle_metrics)
    return app
