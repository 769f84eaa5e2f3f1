"""Forwarding raw gRPC calls to nodes: one `grpc.aio` channel per node, and the
gRPC `Transport` of the core.

Called by `lb.request.dispatch` (through `GrpcTransport.send`) for every gRPC attempt,
and by the composition root (`lb.server`) when nodes leave (`reconfigure`:
their channels close once the calls in flight on them are done, so a reload
or a DNS change leaks no channel). Requests and replies are bytes
(no serializers): the proxy never decodes a reply. This module is the one
boundary where `grpc.aio.AioRpcError` becomes either a `GrpcReply` carrying
the node's status code and details (to be passed through to the client) or,
when the node gave no answer (`UNAVAILABLE`: refused, reset, not ready), an
`UpstreamRefused` that the caller retries on another node.

Guarantees: every call carries a deadline (`timeout_s`); channels use TLS with
`upstream.tls.grpc` (`lb.edge.node_tls`: CA, client pair, server name); they have the
configured message limits (above gRPC's 4 MB default) and are closed by
`close()`; a channel is re-created when a node's address changes (reload).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from lb.config import GrpcConfig
from lb.edge.config import NodeTls
from lb.edge.node_tls import grpc_credentials, grpc_options
from lb.errors import UpstreamRefused
from lb.grpc.messages import Request
from lb.pool.nodes import Node
from lb.request.call import Call
from lb.status import Verdict, grpc_verdict

log = logging.getLogger("lb.grpc")

OK = grpc.StatusCode.OK


def channel_options(cfg: GrpcConfig) -> list[tuple[str, int]]:
    """Message limits (both directions) for servers and channels."""
    limit = int(cfg.max_message_mb * 2**20)
    return [("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit)]


@dataclass(slots=True)     # not frozen: built per request, treat as immutable
class GrpcReply:
    """A node's answer: OK with `body`, or another status code with `details`."""

    code: grpc.StatusCode
    body: bytes = b""
    details: str = ""


class GrpcUpstream:
    """Channels to the nodes, created on first use."""

    def __init__(self, cfg: GrpcConfig, tls: NodeTls | None = None) -> None:
        self._options: list[tuple[str, Any]] = [*channel_options(cfg), *grpc_options(tls)]
        self._credentials = grpc_credentials(tls)       # None: plaintext (upstream.tls.grpc)
        self._channels: dict[str, tuple[str, grpc.aio.Channel]] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    def _channel(self, node: str, address: str) -> grpc.aio.Channel:
        known = self._channels.get(node)
        if known is not None and known[0] == address:
            return known[1]
        if known is not None:                      # the address changed on reload
            self._retire(known[1], lambda: False, grace_s=5.0)
        if self._credentials is None:
            channel = grpc.aio.insecure_channel(address, options=self._options)
        else:
            channel = grpc.aio.secure_channel(address, self._credentials, options=self._options)
        self._channels[node] = (address, channel)
        return channel

    def reconfigure(self, leaving: list[Node]) -> None:
        """Close the channels of nodes that left, once their calls are done."""
        for node in leaving:
            known = self._channels.pop(node.name, None)
            if known is not None:
                self._retire(known[1], lambda n=node: n.inflight == 0)  # type: ignore[misc]

    def _retire(self, channel: grpc.aio.Channel, drained: Callable[[], bool],
                grace_s: float = 60.0) -> None:
        async def close_when_drained() -> None:
            deadline = time.monotonic() + grace_s
            # In-flight is a plain counter (no event to wait on); bounded by the deadline.
            while not drained() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            await channel.close(1.0)

        task = asyncio.create_task(close_when_drained(), name="retire-grpc-channel")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    @property
    def channels(self) -> int:
        """Open channels (tests check that removed nodes' channels close)."""
        return len(self._channels) + len(self._retiring)

    async def call(self, node: str, address: str, path: str, request: bytes,
                   timeout_s: float) -> GrpcReply:
        """One unary call of `path` (`/package.Service/Method`) on `node`.

        Returns the node's reply for any status but UNAVAILABLE, which raises
        `UpstreamRefused` (no answer: safe to try another node).
        """
        method = self._channel(node, address).unary_unary(path)
        try:
            body = await method(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE:
                raise UpstreamRefused(node, details) from exc
            return GrpcReply(code, b"", details)
        return GrpcReply(OK, body if isinstance(body, bytes) else bytes(body))

    async def close(self, grace_s: float = 1.0) -> None:
        """Close every channel (calls still running are cancelled after `grace_s`)."""
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        channels = [c for _, c in self._channels.values()]
        self._channels = {}
        results = await asyncio.gather(*(asyncio.wait_for(c.close(grace_s), grace_s + 1.0)
                                         for c in channels), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                log.debug("closing a channel: %r", result)


@dataclass(slots=True)     # not frozen: built per request, treat as immutable
class GrpcPayload:
    """What a gRPC attempt sends: the method path and the client's raw bytes."""

    path: str
    raw: bytes
    request: Request


class GrpcTransport:
    """The core's `Transport` for gRPC calls (payload: `GrpcPayload`)."""

    def __init__(self, upstream: GrpcUpstream) -> None:
        self.upstream = upstream
        self.codec: Any = None

    def usable(self, node: Node) -> bool:
        return node.grpc is not None

    def send(self, node: Node, call: Call, timeout_s: float,
             on_done: Callable[[asyncio.Future[GrpcReply]], object]) -> asyncio.Future[GrpcReply]:
        p: GrpcPayload = call.payload
        assert node.grpc is not None
        fut = asyncio.ensure_future(
            self.upstream.call(node.name, node.grpc, p.path, p.raw, timeout_s))
        fut.add_done_callback(on_done)
        return fut

    def verdict(self, answer: GrpcReply, cut_by_try_timeout: bool) -> Verdict:
        return grpc_verdict(answer.code.value[0], cut_by_try_timeout)

    def body(self, answer: GrpcReply) -> bytes:
        return answer.body

    def from_cache(self, call: Call, body: bytes) -> GrpcReply | None:
        return GrpcReply(OK, body)
