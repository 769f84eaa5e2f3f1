"""The admin port (loopback by default): `/stats`, `/healthz`, `/metrics`, `POST /reload`.

Called by operators and tools. `/stats` is a contract (docs/ARCHITECTURE.md): the keys
of each node entry and of `cache` are always present, whatever the backend.
`/metrics` is Prometheus' text format (`lb.metrics`). Mutating endpoints
(`POST /reload`) answer 401 unless the request carries
`Authorization: Bearer <admin.token>` when a token is configured (read from
the live config, so a reload can set or rotate it).
"""

from __future__ import annotations

import hmac
import logging
import os
from typing import Any

import orjson
from aiohttp import web

from lb import native
from lb.config import split_hostport
from lb.dashboard import handle_dashboard, history_handler
from lb.metrics import CONTENT_TYPE
from lb.reload import Reloader
from lb.server import Proxy

log = logging.getLogger("lb.admin")

ADMIN_PROXY = web.AppKey("admin_proxy", Proxy)
ADMIN_RELOADER = web.AppKey("admin_reloader", Reloader)
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def stats_doc(proxy: Proxy) -> dict[str, Any]:
    """The /stats document."""
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
    return {"nodes": proxy.pool.stats(), "cache": cache, "policy": proxy.pool.policy_name,
            "pid": os.getpid(), "data_path": native.kind(), "config": proxy.status.as_dict(),
            "retries": {"retries": flow["retries"],
                        "budget_rejections": flow["budget_rejections"]},
            "hedge": flow["hedge"], "waits": proxy.core.waits.as_dict(),
            "inflight": proxy.core.inflight, "shed": proxy.core.shed,
            "batching": proxy.core.batcher.as_dict(),
            "upstream": {"rest": proxy.rest_upstream.stats(),
                         "grpc_channels": proxy.grpc_upstream.channels},
            "discovery": proxy.discovery.status.as_dict() if proxy.discovery else None,
            "security": proxy.edge.stats()}


async def handle_stats(request: web.Request) -> web.Response:
    doc = stats_doc(request.app[ADMIN_PROXY])
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


async def handle_healthz(request: web.Request) -> web.Response:
    ok = request.app[ADMIN_PROXY].pool.any_healthy()
    return web.Response(status=200 if ok else 503, text="ok\n" if ok else "no healthy node\n")


async def handle_metrics(request: web.Request) -> web.Response:
    body = request.app[ADMIN_PROXY].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def authorized(request: web.Request) -> bool:
    """True when no admin token is configured or the request carries it as Bearer."""
    token = request.app[ADMIN_PROXY].cfg.admin.token
    if token is None:
        return True
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(),
                                                              token.encode())


def _json(status: int, doc: dict[str, Any], **headers: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), headers=headers,
                        content_type="application/json")


async def handle_reload(request: web.Request) -> web.Response:
    """Reload the config file now: 200 applied, 400 rejected (old config kept)."""
    if not authorized(request):
        return _json(401, {"error": "missing or wrong bearer token"},
                     **{"WWW-Authenticate": 'Bearer realm="tfserving-lb admin"'})
    reloader = request.app[ADMIN_RELOADER]
    ok, message = await reloader.reload("POST /reload")
    doc: dict[str, Any] = {"reloaded": ok, "config": reloader.status.as_dict()}
    doc["changes" if ok else "error"] = message
    return _json(200 if ok else 400, doc)


def _warn_if_exposed(proxy: Proxy) -> None:
    host, _ = split_hostport(proxy.cfg.listen.admin)
    if host not in _LOOPBACK and proxy.cfg.admin.token is None:
        log.warning("admin port %s is not on loopback and no admin.token is set: "
                    "anyone who reaches it can reload the config", proxy.cfg.listen.admin)


def make_admin_app(proxy: Proxy, reloader: Reloader | None = None) -> web.Application:
    """The admin aiohttp application; POST /reload exists when `reloader` is given."""
    _warn_if_exposed(proxy)
    app = web.Application()
    app[ADMIN_PROXY] = proxy
    app.router.add_get("/stats", handle_stats)
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/dashboard", handle_dashboard)
    app.router.add_get("/history", history_handler(proxy.history))
    if reloader is not None:
        app[ADMIN_RELOADER] = reloader
        app.router.add_post("/reload", handle_reload)
    return app
