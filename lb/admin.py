"""The admin port (loopback by default): `/stats` and `/healthz`.

Called by operators and tools. `/stats` is a contract (DESIGN.md): the keys
of each node entry and of `cache` are always present, whatever the backend.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from aiohttp import web

from lb.proxy import Proxy

ADMIN_PROXY = web.AppKey("admin_proxy", Proxy)


def stats_doc(proxy: Proxy) -> dict[str, Any]:
    """The /stats document."""
    cache: dict[str, Any]
    if proxy.cache is not None:
        cache = proxy.cache.stats()
    else:
        cache = {"backend": "none", "hits": 0, "misses": 0, "hit_rate": 0.0}
    cache["signatures"] = proxy.signatures.stats()
    return {"nodes": proxy.pool.stats(), "cache": cache, "policy": proxy.pool.policy_name,
            "pid": os.getpid()}


async def handle_stats(request: web.Request) -> web.Response:
    doc = stats_doc(request.app[ADMIN_PROXY])
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


async def handle_healthz(request: web.Request) -> web.Response:
    ok = request.app[ADMIN_PROXY].pool.any_healthy()
    return web.Response(status=200 if ok else 503, text="ok\n" if ok else "no healthy node\n")

    # "json": no signature metadata, keys fall back to canonical JSON (1 != 1.0)
    cache["key_modes"] = dict(proxy.key_modes)

def make_admin_app(proxy: Proxy) -> web.Application:
    app = web.Application()
    app[ADMIN_PROXY] = proxy
    app.router.add_get("/stats", handle_stats)
    app.router.add_get("/healthz", handle_healthz)
    return app
