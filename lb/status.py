"""Statuses at the proxy's boundaries: one table per boundary, all of them here.

* **Client-facing REST.** An `lb.errors.LbError` answers its class's `status` (the
  tree in `lb.errors` is that table) with `error_body`: TF Serving's
  `{"error": "..."}`. Used by `lb.rest.front` and by the HTTP server's own refusals
  (`lb.http.pipeline`: malformed requests, limits).
* **Client-facing gRPC.** `GRPC_OF_STATUS`: the gRPC code a proxy error's status
  becomes (`lb.grpc.front`); `STATUS_OF_GRPC`: the HTTP status a gRPC code counts as
  (TF Serving's mapping), for the `code` label of request metrics and for shadow
  comparisons (`lb.rollout.shadow`). Codes are numbers (`grpc.StatusCode.X.value[0]`)
  so that this module needs no gRPC import.
* **Node-facing.** `Verdict`: how one attempt on a node went, as the dispatcher and
  the node's counters read it; `rest_verdict` maps a node's HTTP status and
  `grpc_verdict` a node's gRPC code to one (`lb.rest.upstream`, `lb.grpc.upstream`).

Pure and compiled (lb.native): the data path reads verdicts per attempt.
tests/lb/test_status.py walks every error class through both client-facing tables.
"""

from __future__ import annotations

from typing import Final

import orjson

# -- client-facing REST ----------------------------------------------------------------


def error_body(message: str) -> bytes:
    """TF Serving's error shape."""
    return orjson.dumps({"error": message})


# -- client-facing gRPC (code numbers: grpc.StatusCode.X.value[0]) ---------------------

OK: Final = 0
CANCELLED: Final = 1
UNKNOWN: Final = 2
INVALID_ARGUMENT: Final = 3
DEADLINE_EXCEEDED: Final = 4
NOT_FOUND: Final = 5
ALREADY_EXISTS: Final = 6
PERMISSION_DENIED: Final = 7
RESOURCE_EXHAUSTED: Final = 8
FAILED_PRECONDITION: Final = 9
OUT_OF_RANGE: Final = 11
UNIMPLEMENTED: Final = 12
INTERNAL: Final = 13
UNAVAILABLE: Final = 14
DATA_LOSS: Final = 15
UNAUTHENTICATED: Final = 16

# A proxy error's HTTP status -> its gRPC code (anything else: INTERNAL).
GRPC_OF_STATUS: Final[dict[int, int]] = {
    400: INVALID_ARGUMENT, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: NOT_FOUND,
    408: DEADLINE_EXCEEDED, 413: RESOURCE_EXHAUSTED, 429: RESOURCE_EXHAUSTED,
    502: UNAVAILABLE, 503: UNAVAILABLE, 504: DEADLINE_EXCEEDED,
}

# A gRPC code -> the HTTP status TF Serving maps it to (anything else: 500).
STATUS_OF_GRPC: Final[dict[int, int]] = {
    OK: 200, CANCELLED: 499, INVALID_ARGUMENT: 400, DEADLINE_EXCEEDED: 504, NOT_FOUND: 404,
    ALREADY_EXISTS: 409, PERMISSION_DENIED: 403, RESOURCE_EXHAUSTED: 429,
    FAILED_PRECONDITION: 400, OUT_OF_RANGE: 400, UNIMPLEMENTED: 501, UNAVAILABLE: 503,
    UNAUTHENTICATED: 401,
}


def grpc_code(status: int) -> int:
    """The gRPC code of a proxy error's HTTP status."""
    return GRPC_OF_STATUS.get(status, INTERNAL)


def http_status(code: int) -> int:
    """The HTTP status a gRPC code counts as."""
    return STATUS_OF_GRPC.get(code, 500)


# -- node-facing ----------------------------------------------------------------------


class Verdict:
    """How one attempt went, as the dispatcher and the node's counters see it."""

    __slots__ = ("good", "node_ok", "refused", "retry")

    def __init__(self, *, node_ok: bool, retry: bool, good: bool,
                 refused: bool = False) -> None:
        self.node_ok = node_ok      # the node did its job (else: an error for outlier detection)
        self.retry = retry          # worth another node (busy, or cut by the per-try timeout)
        self.good = good            # a good answer: a τ sample, storable in the cache
        self.refused = refused      # the node does not serve the model now (loading, restarting)


GOOD: Final = Verdict(node_ok=True, retry=False, good=True)
CLIENT_ERROR: Final = Verdict(node_ok=True, retry=False, good=False)    # the request's fault
BUSY: Final = Verdict(node_ok=True, retry=True, good=False)             # a full batch queue
UNREACHED: Final = Verdict(node_ok=False, retry=True, good=False)       # a per-try timeout
REFUSED: Final = Verdict(node_ok=False, retry=True, good=False, refused=True)   # loading
NODE_ERROR: Final = Verdict(node_ok=False, retry=False, good=False)     # the node failed

# A node's HTTP status -> its verdict. TF Serving answers 429 when its batch queue is
# full: another node may not be. A 503 (a model still loading, a server starting or
# stopping) is a refusal: the node leaves the model's set until a probe says
# AVAILABLE (`NodePool.refused`). Other 5xx: the node's failure; 4xx: the request's.
REST_VERDICTS: Final[dict[int, Verdict]] = {200: GOOD, 429: BUSY, 503: REFUSED}

# gRPC codes that count as the node's failure (like an HTTP 5xx). UNAVAILABLE never
# reaches `grpc_verdict`: the upstream raises it as a refusal (no answer).
NODE_FAILURES: Final = frozenset({UNKNOWN, INTERNAL, UNIMPLEMENTED, UNAVAILABLE, DATA_LOSS})


def rest_verdict(status: int) -> Verdict:
    verdict = REST_VERDICTS.get(status)
    if verdict is not None:
        return verdict
    return NODE_ERROR if status >= 500 else CLIENT_ERROR


def grpc_verdict(code: int, cut_by_try_timeout: bool) -> Verdict:
    """A node's gRPC code. DEADLINE_EXCEEDED depends on whose deadline it was: a
    per-try timeout is the node's slowness (retried elsewhere); otherwise it was the
    client's own deadline, which the node cannot be blamed for (no error, no ejection).
    The channel may report it a moment before the front cancels the call at it."""
    if code == OK:
        return GOOD
    if code == RESOURCE_EXHAUSTED:      # a full batch queue
        return BUSY
    if code == DEADLINE_EXCEEDED:
        return UNREACHED if cut_by_try_timeout else CLIENT_ERROR
    return NODE_ERROR if code in NODE_FAILURES else CLIENT_ERROR
