"""Every proxy error through both client-facing tables (lb.status), and the node-facing
verdicts: a new error class without a row here fails the first test."""

from __future__ import annotations

import inspect

import grpc
import orjson

from lb import errors
from lb.errors import LbError
from lb.grpc.front import status_code
from lb.status import (
    BUSY,
    CLIENT_ERROR,
    GOOD,
    NODE_ERROR,
    REFUSED,
    UNREACHED,
    error_body,
    grpc_verdict,
    http_status,
    rest_verdict,
)

C = grpc.StatusCode
# class: (REST status, Retry-After set, gRPC code), as TF Serving answers the same case
EXPECTED: dict[str, tuple[int, bool, grpc.StatusCode]] = {
    "LbError": (500, False, C.INTERNAL),
    "ConfigError": (500, False, C.INTERNAL),
    "BadRequest": (400, False, C.INVALID_ARGUMENT),
    "NotFound": (404, False, C.NOT_FOUND),
    "RequestTimeout": (408, False, C.DEADLINE_EXCEEDED),
    "PayloadTooLarge": (413, False, C.RESOURCE_EXHAUSTED),
    "Unauthenticated": (401, False, C.UNAUTHENTICATED),
    "Forbidden": (403, False, C.PERMISSION_DENIED),
    "RateLimited": (429, True, C.RESOURCE_EXHAUSTED),
    "Unavailable": (503, False, C.UNAVAILABLE),
    "NotReady": (503, True, C.UNAVAILABLE),
    "Overloaded": (503, True, C.UNAVAILABLE),
    "DeadlineExceeded": (504, False, C.DEADLINE_EXCEEDED),
    "NotCached": (504, False, C.DEADLINE_EXCEEDED),
    "UpstreamError": (502, False, C.UNAVAILABLE),
    "UpstreamConnectError": (503, False, C.UNAVAILABLE),
    "UpstreamRefused": (503, False, C.UNAVAILABLE),
    "UpstreamTimeout": (504, False, C.DEADLINE_EXCEEDED),
}


def _instance(cls: type[LbError]) -> LbError:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return cls("why")                           # Exception's own (message)
    return cls(*["n0", "why"][:len(params)])        # (), (message) or (node, message)


def test_every_error_class_has_one_answer_on_each_front() -> None:
    classes = {name: cls for name, cls in vars(errors).items()
               if inspect.isclass(cls) and issubclass(cls, LbError)}
    assert set(classes) == set(EXPECTED)
    for name, cls in classes.items():
        exc = _instance(cls)
        status, retry_after, code = EXPECTED[name]
        assert (exc.status, exc.retry_after is not None) == (status, retry_after), name
        assert set(orjson.loads(error_body(str(exc)))) == {"error"}
        assert status_code(exc) is code, name
        # What the gRPC code counts as in metrics: the status, or the one TF Serving
        # gives that code when several statuses share it.
        assert http_status(code.value[0]) in {status, 429, 503, 504, 500}, name


def test_node_answers_become_verdicts() -> None:
    assert [rest_verdict(s) for s in (200, 400, 404, 429, 500, 502, 503)] == [
        GOOD, CLIENT_ERROR, CLIENT_ERROR, BUSY, NODE_ERROR, NODE_ERROR, REFUSED]
    def code(c: grpc.StatusCode) -> int:
        return int(c.value[0])
    assert grpc_verdict(code(C.OK), False) is GOOD
    assert grpc_verdict(code(C.RESOURCE_EXHAUSTED), False) is BUSY
    assert grpc_verdict(code(C.DEADLINE_EXCEEDED), True) is UNREACHED
    assert grpc_verdict(code(C.DEADLINE_EXCEEDED), False) is CLIENT_ERROR
    assert grpc_verdict(code(C.INVALID_ARGUMENT), False) is CLIENT_ERROR
    assert grpc_verdict(code(C.INTERNAL), False) is NODE_ERROR


def test_the_code_numbers_are_grpcs() -> None:
    from lb import status
    for c in C:
        if hasattr(status, c.name):
            assert getattr(status, c.name) == c.value[0], c.name
