"""The client-facing HTTP/1.1 server of the REST front (httptools/llhttp on uvloop).

Built by the composition root (`lb.server.Proxy.start`) around the REST front (an
`App`): `await HttpServer(app, limits).start(host, port)`, later `await
server.shutdown(grace_s)`.
It knows nothing of TF Serving or of proxying; per-connection behaviour (ordering,
pipelining, limits, timeouts, aborts) is guaranteed by `lb.http.server_protocol`.
With an `ssl.SSLContext` it serves TLS (`lb.edge.tls` makes the REST front's): the
connections behave the same, requests are the same plaintext above the transport.
Guarantees here: shutdown in uvicorn's order (stop accepting, close idle connections,
close busy ones after their reply, abort what is left after the grace period) and
returns within `grace_s` plus about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from ssl import SSLContext

from lb.http.exchange import App, Exchange, Request
from lb.http.limits import ServerLimits
from lb.http.outbox import Outbox
from lb.http.pipeline import Pipeline
from lb.http.server_protocol import ServerConnection
from lb.http.tls_reader import TlsReader, shared_buffer

__all__ = ["App", "Exchange", "HttpServer", "Request", "ServerLimits"]


class HttpServer:
    """Listens, owns the connections, counts what happened, shuts down gracefully."""

    def __init__(self, app: App, limits: ServerLimits) -> None:
        self.app = app
        self.limits = limits
        self.conns: set[Pipeline] = set()
        self.requests = 0
        self.errors: dict[int, int] = {400: 0, 408: 0, 413: 0, 414: 0, 431: 0, 500: 0}
        self.closing = False
        self._server: asyncio.Server | None = None
        self._drained: asyncio.Event | None = None
        self.outbox = Outbox()         # of every connection's replies (one loop)
        self.tls = False

    async def start(self, host: str, port: int, *, reuse_port: bool = True,
                    backlog: int = 1024, ssl: SSLContext | None = None,
                    handshake_timeout_s: float = 10.0) -> None:
        """Listen; with `ssl`, every connection is TLS (uvloop's TLS transport: the
        connection sees plaintext, and a failed handshake never reaches it)."""
        loop = asyncio.get_running_loop()
        self.tls = ssl is not None
        factory: Callable[[], asyncio.BaseProtocol]
        if ssl is None:
            factory = lambda: ServerConnection(self, loop)   # noqa: E731
        else:                           # decrypted into one buffer (lb.http.tls_reader)
            view = shared_buffer()
            factory = lambda: TlsReader(ServerConnection(self, loop), view)   # noqa: E731
        self._server = await loop.create_server(
            factory, host, port, reuse_port=reuse_port, backlog=backlog, ssl=ssl,
            ssl_handshake_timeout=handshake_timeout_s if ssl is not None else None)

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            raise RuntimeError("HttpServer is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    async def shutdown(self, grace_s: float) -> None:
        """Stop accepting; close idle connections now and busy ones after their reply;
        after `grace_s`, abort the rest (their current exchanges get on_abort)."""
        self.closing = True
        self._drained = asyncio.Event()
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns):
            conn.shutdown()
        await self._wait_drained(grace_s)
        for conn in list(self.conns):
            conn.abort()
        await self._wait_drained(1.0)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _wait_drained(self, within_s: float) -> None:
        if self.conns and self._drained is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drained.wait(), within_s)

    def forget(self, conn: Pipeline) -> None:
        self.conns.discard(conn)
        if not self.conns and self._drained is not None:
            self._drained.set()

    def stats(self) -> dict[str, int]:
        out = {"connections": len(self.conns), "requests": self.requests}
        for status, count in self.errors.items():
            out[f"errors_{status}"] = count
        return out
