"""What a client asks of the cache and the queue, whatever the front: Cache-Control
directives and the priority lane. Pure.

Called by both fronts (`lb.rest.front` reads the `Cache-Control` and `X-Priority`
headers, `lb.grpc.front` the same metadata) to fill `lb.request.call.Call`; the
core honours the directives, the dispatcher the lane. Unknown tokens are ignored:
a directive this proxy does not know never refuses a request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(slots=True, frozen=True)
class Directives:
    """Request Cache-Control directives that the result cache honours."""

    lookup: bool = True     # False for no-cache / no-store
    store: bool = True      # False for no-store
    only_if_cached: bool = False


def parse_cache_control(value: str | None) -> Directives:
    if not value:
        return Directives()
    tokens = {t.strip().split("=", 1)[0].lower() for t in value.split(",")}
    no_store = "no-store" in tokens
    return Directives(lookup=not (no_store or "no-cache" in tokens), store=not no_store,
                      only_if_cached="only-if-cached" in tokens)


PRIORITIES: Final = {"critical": 0, "normal": 1, "sheddable": 2}


def parse_priority(value: str) -> int:
    """A request's `X-Priority` (REST header, gRPC metadata `x-priority`) as a lane of
    `lb.request.scheduler`: critical 0, normal 1, sheddable 2; anything else 0. The dispatcher
    takes the lower priority of this and the model's (`models.M.priority`), so a
    client may shed its own requests first, never jump the queue."""
    return PRIORITIES.get(value.strip().lower(), 0)
