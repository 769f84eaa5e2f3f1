"""One keep-alive HTTP/1.1 connection to a node: an asyncio.Protocol with httptools.

Called by `lb.http.client.NodeClient`, which owns the pool, the slots and the
timers; nothing else uses this module. Guarantees: a connection runs at most one
exchange at a time, writes each request with one `transport.write` (through its
owner's `lb.http.outbox.Outbox`, flushed before it closes), and reports
each exchange it runs exactly once to its owner (unless the owner took it back
with `abort`): `exchange_done` with a complete
`Response` (and whether the connection may be reused), or `exchange_failed`
saying whether any response byte had arrived. Bytes that arrive while no
exchange is active, an unparseable response or an oversized one make the
connection unusable; it never decides about retries or error classes itself.
"""

from __future__ import annotations

import _asyncio  # noqa: F401 - mypyc refers to Future's home module, which must be imported
import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import httptools

from lb.http.outbox import Outbox
from lb.native import mypyc_attr

_JSON = "application/json"
_NO_BODY = (204, 304)
_WATCHED = frozenset((b"content-type", b"content-length", b"transfer-encoding"))
log = logging.getLogger("lb.http.client")


@dataclass(slots=True, init=False)     # built per request, treat as immutable
class Response:
    """A node's complete response; `headers` has lower-case names, in arrival order."""

    status: int
    body: bytes
    content_type: str          # the node's Content-Type, "application/json" when absent
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def __init__(self, status: int, body: bytes, content_type: str,
                 headers: list[tuple[bytes, bytes]] | None = None) -> None:
        # written out: mypyc compiles it, a dataclass's generated __init__ runs as Python
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = [] if headers is None else headers


class Owner(Protocol):
    """What a connection reports to (implemented by NodeClient)."""

    max_body: int
    outbox: Outbox

    def exchange_done(self, conn: Conn, ex: Exchange, resp: Response, reusable: bool) -> None: ...
    def exchange_failed(self, conn: Conn, ex: Exchange, got_bytes: bool, why: str) -> None: ...
    def conn_lost(self, conn: Conn) -> None: ...
    def abort(self, ex: Exchange, err: Exception | None) -> None: ...


@mypyc_attr(native_class=False)        # compiled, it stays a Python subclass of Future
class Exchange(asyncio.Future[Response]):
    """One request and the future of its response (no Task and no timer per call: the
    owner's one deadline timer watches every exchange).

    While it runs it is queued for a slot (`task` and `conn` None), connecting (`task`)
    or on a connection (`conn`). `cancel()` aborts it synchronously, so the caller's pool
    slot is free when cancel returns. `on_done`, when set, is called once with the
    exchange as soon as it is done (`report`), from inside the I/O callback that ended
    it: no loop round trip, unlike a done-callback."""

    __slots__ = ("conn", "connect_timer", "data", "deadline", "head", "on_done", "owner",
                 "task")

    owner: Owner
    data: bytes
    deadline: float
    head: bool
    task: asyncio.Task[Any] | None
    connect_timer: asyncio.TimerHandle | None     # set with `task`
    conn: Conn | None

    on_done: Callable[[Exchange], object] | None

    def cancel(self, msg: Any | None = None) -> bool:
        if not super().cancel(msg):
            return False
        self.owner.abort(self, None)
        self.report()
        return True

    def report(self) -> None:
        """Hand the finished exchange to `on_done`, once. What it raises is logged, as
        the loop logs a done-callback's error: it must not break the connection."""
        done = self.on_done
        if done is not None:
            self.on_done = None
            try:
                done(self)
            except Exception:
                log.exception("on_done of an exchange with %s failed", self.owner)


class Conn(asyncio.Protocol):
    """The protocol of one connection; parser callbacks fill the current response."""

    __slots__ = (
        "body",
        "chunks",
        "ctype",
        "error",
        "ex",
        "framed",
        "garbage",
        "got_bytes",
        "has_slot",
        "headers",
        "idle",
        "idle_since",
        "keep_alive",
        "max_body",
        "owner",
        "parser",
        "result",
        "size",
        "status",
        "transport",
        "uses",
    )

    def __init__(self, owner: Owner) -> None:
        self.owner = owner
        self.max_body = owner.max_body
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.ex: Exchange | None = None
        self.uses = 0                  # exchanges completed on this connection
        self.idle = False
        self.idle_since = 0.0
        self.has_slot = False          # holds one of the owner's max_connections slots
        self.status = 0                # of the message being parsed; < 200 until its
                                       # headers end (0 from the start of an exchange)
        self.ctype = _JSON
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""                # the body's first piece
        self.chunks: list[bytes] | None = None      # all its pieces, when more came
        self.size = 0                  # bytes in `chunks`
        self.framed = False            # Content-Length or chunked: not delimited by close
        self.got_bytes = False
        self.result: Response | None = None
        self.keep_alive = False
        self.garbage = False
        self.error: str | None = None

    # -- driven by the owner -------------------------------------------------------------

    def start(self, ex: Exchange) -> None:
        """Run `ex` on this (open, unused) connection."""
        self.ex = ex
        ex.conn = self
        self.got_bytes = False
        self.status = 0
        transport = self.transport
        assert transport is not None
        self.owner.outbox.write(transport, ex.data)

    def is_usable(self) -> bool:
        transport = self.transport
        return transport is not None and not transport.is_closing()

    def close(self, abort: bool) -> None:
        transport = self.transport
        if transport is not None:
            if abort:
                transport.abort()
            else:
                self.owner.outbox.flush()
                transport.close()

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):    # not a TCP socket
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.ex is None:
            self.garbage = True
            self.close(abort=True)     # a response nobody asked for: the stream is unusable
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.result is None:
                self.error = self.error or f"unparseable response: {exc}"
            else:
                self.garbage = True    # a complete response followed by junk
        if self.error is not None:
            why, self.error = self.error, None
            self._fail(True, why)
        elif self.result is not None:
            self._finish()

    def _finish(self) -> None:
        ex, resp = self.ex, self.result
        assert ex is not None and resp is not None
        self.ex = None
        self.result = None
        ex.conn = None
        transport = self.transport
        reusable = (self.keep_alive and not self.garbage and transport is not None
                    and not transport.is_closing() and transport.get_write_buffer_size() == 0)
        self.owner.exchange_done(self, ex, resp, reusable)

    def eof_received(self) -> bool:
        self._lost(None)
        return False                   # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self.ex is not None:
            self._lost(f"connection lost: {exc}" if exc else None)
        self.owner.conn_lost(self)

    # -- httptools callbacks -------------------------------------------------------------
    # One Python call each per response (on_header: per header); on_message_begin stays
    # to notice a second response to one request, whose bytes would corrupt the next.

    def on_message_begin(self) -> None:
        if self.result is not None:
            self.garbage = True        # a second response to one request
        self.ctype = _JSON
        self.headers = []
        self.body = b""
        self.framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self.headers.append((name, value))
        if name == b"content-type":        # in every response: no second call for it
            self.ctype = value.decode("latin-1")
        elif name in _WATCHED:
            self._watch(name, value)

    def _watch(self, name: bytes, value: bytes) -> None:
        if name == b"content-length":
            self.framed = True
            if value.isdigit() and int(value) > self.max_body:
                self.error = f"response of {int(value)} bytes exceeds max_response_bytes"
        else:
            self.framed = self.framed or value.rstrip().lower().endswith(b"chunked")

    def on_headers_complete(self) -> None:
        self.status = status = self.parser.get_status_code()
        ex = self.ex
        if ex is not None and ex.head and status >= 200 and self.result is None:
            # httptools cannot be told the request was HEAD, so it would wait for a body
            # of Content-Length bytes: take the headers as the whole response, then close.
            self.result = Response(status, b"", self.ctype, self.headers)
            self.garbage = True

    def on_body(self, body: bytes) -> None:
        if self.result is not None:
            return
        if self.body or len(body) > self.max_body:
            self._more_body(body)
        else:
            self.body = body

    def _more_body(self, body: bytes) -> None:
        """A body in several pieces (or too large): collect it, up to max_body."""
        chunks = self.chunks
        if chunks is None:
            self.chunks = chunks = [self.body] if self.body else []
            self.size = len(self.body)
        self.size += len(body)
        if self.size > self.max_body:
            self.error = "response exceeds max_response_bytes"
            chunks.clear()
        elif self.error is None:
            chunks.append(body)

    def on_message_complete(self) -> None:
        status = self.status
        if status < 200 or self.result is not None:
            return                     # 1xx interim response: the real one follows
        self.result = self._response(status)
        self.keep_alive = self.parser.should_keep_alive()

    def _response(self, status: int) -> Response:
        return Response(status, self._take_body(), self.ctype, self.headers)

    def _take_body(self) -> bytes:
        """The body received: the one piece, or the pieces joined (and dropped)."""
        chunks = self.chunks
        if chunks is None:
            return self.body
        self.chunks = None
        return b"".join(chunks)

    # -- outcomes ------------------------------------------------------------------------

    def _lost(self, why: str | None) -> None:
        """The stream ended (EOF when `why` is None) while an exchange was active."""
        if self.ex is None:
            return
        if (why is None and self.status >= 200 and not self.framed and self.result is None
                and self.status not in _NO_BODY and self.error is None):
            # A body delimited by the close of the connection (HTTP/1.0 or no length):
            # httptools has no finish(), so the end of the stream completes it here.
            self.result = self._response(self.status)
            self.keep_alive = False
            self._finish()
            return
        self._fail(self.got_bytes, why or "connection closed by the node")

    def _fail(self, got_bytes: bool, why: str) -> None:
        ex = self.ex
        assert ex is not None
        self.ex = None
        self.result = None
        self.chunks = None
        ex.conn = None
        self.owner.exchange_failed(self, ex, got_bytes, why)
