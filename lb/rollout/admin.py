"""The rollout endpoints of the admin port (`lb.admin.app.make_admin_app` adds them).

    GET  /shadow/{model}                    the shadow's figures and the bounded sample
                                            of disagreeing inputs (hashes, row indices)
    GET  /rollout/{model}                   the rollout's state and its current step
    POST /rollout/{model}/{pause|resume|abort}   with the admin token when one is set

Called by operators and tools. Answers are JSON; errors are `{"error": ...}`:
404 for a model without a shadow or rollout, 409 for an action that does not
apply in the rollout's state (pausing a completed one), 400 for an unknown
action, 401 without the token (`authorized` is `lb.admin.app`'s check, handed in).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from lb.rollout.progress import Refused
from lb.rollout.service import ACTIONS, Rollouts

Authorized = Callable[[web.Request], bool]


def _json(status: int, doc: dict[str, Any], **headers: str) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(doc), headers=headers,
                        content_type="application/json")


def add_routes(app: web.Application, rollouts: Rollouts, authorized: Authorized) -> None:
    """Route the endpoints of the module docstring on `app`."""

    async def shadow(request: web.Request) -> web.Response:
        model = request.match_info["model"]
        doc = rollouts.shadow_doc(model)
        if doc is None:
            return _json(404, {"error": f"model {model!r} has no shadow"})
        return _json(200, doc, **{"Cache-Control": "no-store"})

    async def rollout(request: web.Request) -> web.Response:
        model = request.match_info["model"]
        m = rollouts.models.get(model)
        if m is None or m.progress is None:
            return _json(404, {"error": f"model {model!r} has no rollout"})
        return _json(200, m.progress.as_dict(time.monotonic(), time.time(), m.reading()))

    async def control(request: web.Request) -> web.Response:
        if not authorized(request):
            return _json(401, {"error": "missing or wrong bearer token"},
                         **{"WWW-Authenticate": 'Bearer realm="tfserving-lb admin"'})
        model, action = request.match_info["model"], request.match_info["action"]
        if action not in ACTIONS:
            return _json(400, {"error": f"unknown action {action!r}; expected one of "
                                        f"{', '.join(ACTIONS)}"})
        try:
            return _json(200, rollouts.control(model, action))
        except KeyError:
            return _json(404, {"error": f"model {model!r} has no rollout"})
        except Refused as exc:
            return _json(409, {"error": str(exc)})

    app.router.add_get("/shadow/{model}", shadow)
    app.router.add_get("/rollout/{model}", rollout)
    app.router.add_post("/rollout/{model}/{action}", control)
