"""The plaintext of a TLS connection, decrypted into one buffer the server reuses.

Called by uvloop's TLS transport for every connection `lb.http.server.HttpServer`
accepts with an SSLContext (the server's protocol factory wraps each
`ServerConnection` in a `TlsReader`). Why: to a plain `asyncio.Protocol` uvloop
hands each decrypted chunk as a new bytes object read with
`SSLObject.read(262144)`, which allocates 256 KiB for every chunk and shrinks it;
to a `BufferedProtocol` it decrypts straight into the buffer `get_buffer` returns.
One buffer serves every connection of the server: uvloop fills it and calls
`buffer_updated` in one step, and the bytes are copied out (`data_received`'s
one bytes object) before the next connection's turn.

Guarantees: the wrapped connection sees exactly the calls and bytes a plain
protocol would (connection_made with the TLS transport, data_received, eof,
flow control, connection_lost), in the same order.
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

BUFFER_BYTES: Final = 256 * 1024     # uvloop's own read size: one record fits many times


class Connection(Protocol):
    """What is wrapped: `lb.http.server_protocol.ServerConnection`."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...
    def data_received(self, data: bytes) -> None: ...
    def eof_received(self) -> bool | None: ...
    def connection_lost(self, exc: Exception | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...


class TlsReader(asyncio.BufferedProtocol):
    """A BufferedProtocol in front of one connection; see the module docstring."""

    __slots__ = ("_conn", "_view")

    def __init__(self, conn: Connection, view: memoryview) -> None:
        self._conn = conn
        self._view = view           # the server's one buffer

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self._conn.data_received(bytes(self._view[:nbytes]))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._conn.connection_made(transport)

    def eof_received(self) -> bool | None:
        return self._conn.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn.connection_lost(exc)

    def pause_writing(self) -> None:
        self._conn.pause_writing()

    def resume_writing(self) -> None:
        self._conn.resume_writing()


def shared_buffer() -> memoryview:
    """A server's buffer (one per HttpServer, shared by its TLS connections)."""
    return memoryview(bytearray(BUFFER_BYTES))
