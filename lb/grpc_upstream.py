"""Forwarding raw gRPC calls to nodes: one `grpc.aio` channel per node.

Called by `lb.grpc_proxy` for every attempt. Requests and replies are bytes
(no serializers): the proxy never decodes a reply. This module is the one
boundary where `grpc.aio.AioRpcError` becomes either a `GrpcReply` carrying
the node's status code and details (to be passed through to the client) or,
when the node gave no answer (`UNAVAILABLE`: refused, reset, not ready), an
`UpstreamConnectError` that the caller may retry on another node.

Guarantees: every call carries a deadline (`timeout_s`); channels have the
configured message limits (above gRPC's 4 MB default) and are closed by
`close()`; a channel is re-created when a node's address changes (reload).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc
import grpc.aio

from lb.config import GrpcConfig
from lb.errors import UpstreamConnectError

log = logging.getLogger("lb.grpc")

OK = grpc.StatusCode.OK
# Codes that count as the node's failure in its stats (like an HTTP 5xx).
NODE_FAILURES = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.DATA_LOSS,
})


def channel_options(cfg: GrpcConfig) -> list[tuple[str, int]]:
    """Message limits (both directions) for servers and channels."""
    limit = int(cfg.max_message_mb * 2**20)
    return [("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit)]


@dataclass(slots=True, frozen=True)
class GrpcReply:
    """A node's answer: OK with `body`, or another status code with `details`."""

    code: grpc.StatusCode
    body: bytes = b""
    details: str = ""


class GrpcUpstream:
    """Channels to the nodes, created on first use."""

    def __init__(self, cfg: GrpcConfig) -> None:
        self._options = channel_options(cfg)
        self._channels: dict[str, tuple[str, grpc.aio.Channel]] = {}
        self._retired: list[grpc.aio.Channel] = []

    def _channel(self, node: str, address: str) -> grpc.aio.Channel:
        known = self._channels.get(node)
        if known is not None and known[0] == address:
            return known[1]
        if known is not None:                      # the address changed on reload
            self._retired.append(known[1])
        channel = grpc.aio.insecure_channel(address, options=self._options)
        self._channels[node] = (address, channel)
        return channel

    async def call(self, node: str, address: str, path: str, request: bytes,
                   timeout_s: float) -> GrpcReply:
        """One unary call of `path` (`/package.Service/Method`) on `node`.

        Returns the node's reply for any status but UNAVAILABLE, which raises
        `UpstreamConnectError` (no answer: safe to try another node).
        """
        method = self._channel(node, address).unary_unary(path)
        try:
            body = await method(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE:
                raise UpstreamConnectError(node, details) from exc
            return GrpcReply(code, b"", details)
        return GrpcReply(OK, body if isinstance(body, bytes) else bytes(body))

    async def close(self, grace_s: float = 1.0) -> None:
        """Close every channel (calls still running are cancelled after `grace_s`)."""
        channels = [c for _, c in self._channels.values()] + self._retired
        self._channels, self._retired = {}, []
        results = await asyncio.gather(*(asyncio.wait_for(c.close(grace_s), grace_s + 1.0)
                                         for c in channels), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.debug("closing a channel: %r", result)
