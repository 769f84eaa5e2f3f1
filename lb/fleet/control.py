"""A worker's side of `serve --workers N`: its state for the supervisor, over a Unix socket.

Called by `lb.server.serve_main` (`supervised`, `worker_config`) and
`lb.admin.app.serve_admin_side` (`make_control_app`, `die_with_supervisor`) in a
process that `lb.supervisor` started; the supervisor's `lb.fleet.view.FleetView`
is the only client. Such a worker binds no admin or metrics port: the
supervisor serves them for all workers.

The supervisor passes, in the environment, the socket path (`CONTROL_ENV`) and
its pid (`SUPERVISOR_ENV`), and on stdin the config text it validated, so that
every worker, a replaced one included, runs the version the supervisor holds,
even if the file changed or broke since.

Routes (JSON):

* `GET /snapshot`: {"stats": this process's /stats document (`lb.admin.app.stats_doc`),
  "families": its Prometheus families (`lb.fleet.prom.families_of`)}, read
  together so that both carry the same counts;
* `POST /tick`: the same, and the open second of its history (`History.drain`),
  which it hands over: the supervisor keeps the only ring;
* `GET /healthz`: {"healthy": any node healthy};
* `POST /reload`: the body is the config text to apply (`Reloader.reload`), the
  `X-Reason` header says why; answers {"reloaded", "config", "changes" | "error"}.

Guarantees: the worker exits (SIGTERM, so it drains) when the supervisor dies,
rather than holding the ports as an orphan (Linux: PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from lb.config import Config, parse_text

if TYPE_CHECKING:
    from lb.admin.source import ProxySource, ReloadHook

log = logging.getLogger("lb.server")

CONTROL_ENV = "TFSERVING_LB_CONTROL"
SUPERVISOR_ENV = "TFSERVING_LB_SUPERVISOR"
_PR_SET_PDEATHSIG = 1

PROXY: web.AppKey[ProxySource] = web.AppKey("control_proxy")
RELOADER: web.AppKey[ReloadHook] = web.AppKey("control_reloader")


def supervised() -> str | None:
    """The control socket's path when a supervisor started this process, else None."""
    return os.environ.get(CONTROL_ENV) or None


def worker_config(path: str) -> Config:
    """The config text the supervisor wrote on stdin, validated (named after `path`)."""
    return parse_text(sys.stdin.read(), path)


def die_with_supervisor() -> None:
    """Get SIGTERM when the supervisor dies; exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):          # not Linux: orphans stay possible
        log.warning("cannot ask to be stopped with the supervisor (no prctl)")
    parent = os.environ.get(SUPERVISOR_ENV)
    if parent and os.getppid() != int(parent):
        os.kill(os.getpid(), signal.SIGTERM)


def _json(doc: Any) -> web.Response:
    return web.Response(body=orjson.dumps(doc), content_type="application/json")


def _snapshot(proxy: ProxySource) -> dict[str, Any]:
    from lb.admin.app import stats_doc

    return {"stats": stats_doc(proxy), "families": proxy.metrics.families()}


async def _read(request: web.Request) -> web.Response:
    return _json(_snapshot(request.app[PROXY]))


async def _tick(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    total, by_node = proxy.history.drain()
    return _json({**_snapshot(proxy),
                  "second": {"total": total.as_list(),
                             "nodes": {name: acc.as_list() for name, acc in by_node.items()}}})


async def _healthz(request: web.Request) -> web.Response:
    return _json({"healthy": request.app[PROXY].pool.any_healthy()})


async def _reload(request: web.Request) -> web.Response:
    reloader = request.app[RELOADER]
    text = await request.text()
    ok, message = await reloader.reload(request.headers.get("X-Reason", "supervisor"), text)
    doc: dict[str, Any] = {"reloaded": ok, "config": reloader.status.as_dict()}
    doc["changes" if ok else "error"] = message
    return _json(doc)


def make_control_app(proxy: ProxySource, reloader: ReloadHook) -> web.Application:
    """The worker's control application (served on the socket `supervised()` names)."""
    app = web.Application(client_max_size=16 * 2**20)
    app[PROXY] = proxy
    app[RELOADER] = reloader
    app.router.add_get("/snapshot", _read)
    app.router.add_post("/tick", _tick)
    app.router.add_get("/healthz", _healthz)
    app.router.add_post("/reload", _reload)
    return app
