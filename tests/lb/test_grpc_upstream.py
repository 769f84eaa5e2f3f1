"""lb.grpc.upstream: which node answers count against the node (pure verdicts)."""

from __future__ import annotations

import grpc

from lb.config import GrpcConfig
from lb.grpc.upstream import GrpcReply, GrpcTransport, GrpcUpstream
from lb.status import BUSY, CLIENT_ERROR, GOOD, NODE_ERROR, UNREACHED

Code = grpc.StatusCode


def _verdict(code: grpc.StatusCode, cut: bool = False) -> object:
    return GrpcTransport(GrpcUpstream(GrpcConfig())).verdict(GrpcReply(code), cut)


def test_deadline_exceeded_blames_the_node_only_under_a_per_try_timeout() -> None:
    # Cut by the proxy's per-try timeout: the node was slow, try another one.
    assert _verdict(Code.DEADLINE_EXCEEDED, cut=True) == UNREACHED
    # The client's own deadline (forwarded to the node): no error, no ejection.
    assert _verdict(Code.DEADLINE_EXCEEDED, cut=False) == CLIENT_ERROR


def test_other_codes() -> None:
    assert _verdict(Code.OK) == GOOD
    assert _verdict(Code.RESOURCE_EXHAUSTED) == BUSY
    assert _verdict(Code.INTERNAL) == NODE_ERROR and _verdict(Code.UNAVAILABLE) == NODE_ERROR
    assert _verdict(Code.INVALID_ARGUMENT) == CLIENT_ERROR
    assert _verdict(Code.NOT_FOUND) == CLIENT_ERROR
