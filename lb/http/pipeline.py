"""The answering half of a server connection: the queue of complete requests, the one
the app holds, replies, the connection's timer, flow control and closing.

Called by `lb.http.server_protocol.ServerConnection` (the reading half, a subclass),
by `Exchange.respond`, and by `HttpServer.shutdown`. Guarantees:
- The app holds at most one exchange of a connection at a time; queued ones follow in
  arrival order; each reply is one transport.write; a deep pipeline answered
  synchronously is served by a loop, not by recursion.
- Replies leave through the server's `lb.http.outbox.Outbox` (every write of the
  connection does, and it is flushed before the connection is shut or closed).
- Server-made errors are answered after the replies owed to earlier requests, then the
  connection closes (lingering briefly so the client can read the error; over TLS
  the transport's closing handshake does that).
- On loss of the connection the exchange in flight gets `on_abort` once; the queue is
  dropped; timers are cancelled.
- All deadlines share one loop timer, moved only when it would fire too late (`_arm`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections import deque
from typing import TYPE_CHECKING, Any, cast

from lb.http.exchange import Exchange, Request
from lb.http.limits import (
    CONNECTION_CLOSE,
    CONNECTION_KEEP_ALIVE,
    CONTINUE,
    HEADS,
    MESSAGES,
    reply_head,
)
from lb.status import error_body

if TYPE_CHECKING:
    from lb.http.outbox import Outbox
    from lb.http.server import HttpServer

log = logging.getLogger("lb.http")

INF = math.inf
# (status, content type) -> b"HTTP/1.1 200 OK\r\nContent-Type: ...\r\nContent-Length: "
_HEADS: dict[tuple[int, bytes], bytes] = {}
# What the connection's one timer watches.
IDLE = 0      # between requests: keep-alive (before the first byte: the header timeout)
HEAD = 1      # request line and headers arriving
BODY = 2      # body arriving
WAIT100 = 3   # body withheld by a client waiting for our "100 Continue": no deadline
LINGER = 4    # error sent, write side shut: drain what the client still sends, then close
_LINGER_S = 2.0

PAUSE_WRITE = 1   # reasons reading is paused (bits)
PAUSE_QUEUE = 2


def _head(status: int, content_type: bytes) -> bytes:
    """A reply's first bytes up to the value of Content-Length, cached per pair."""
    head = b"".join((HEADS.get(status) or reply_head(status), content_type,
                     b"\r\nContent-Length: "))
    if len(_HEADS) < 256:
        _HEADS[(status, content_type)] = head
    return head


class Pipeline(asyncio.Protocol):
    """Requests in, replies out, in order; see the module docstring."""

    __slots__ = ("_active", "_app", "_closed", "_deadline", "_dispatching", "_input_done",
                 "_lim", "_loop", "_lost", "_now", "_out", "_paused", "_phase", "_queue", "_remote",
                 "_req", "_send_timer", "_server", "_shutting", "_timer", "_timer_at",
                 "_transport", "_write_paused", "memo")
    _transport: asyncio.Transport

    def __init__(self, server: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
        self._server = server
        self._app = server.app
        self._lim = server.limits
        self._loop = loop
        self._out: Outbox = server.outbox
        self._remote = ""
        self._now = 0.0
        self._req = Request()           # the one being parsed, once its head is (BODY, WAIT100)
        self._active: Exchange | None = None           # the one the app holds
        self._queue: deque[Exchange] = deque()         # complete, waiting for the app
        self._dispatching = False
        self._input_done = False    # no further request will be parsed
        self._shutting = False
        self._closed = False        # no further reply will be written
        self._lost = False
        self._paused = 0
        self._write_paused = False
        self._phase = IDLE
        self._deadline = INF
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = INF
        self._send_timer: asyncio.TimerHandle | None = None
        # What the app remembers about this connection (lb.edge.gate: the identity the
        # last credentials proved), so a keep-alive client is not checked from scratch
        self.memo: object = None

    # --- transport events -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)   # uvloop's
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if peer else ""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server.conns.add(self)
        if self._server.closing:
            self._close()
        else:
            self._arm(IDLE, self._loop.time() + self._lim.header_timeout_s)

    def peercert(self) -> dict[str, Any] | None:
        """The client's TLS certificate as `ssl` decodes it, when it sent one that was
        verified (None on plaintext, or without a certificate)."""
        cert = self._transport.get_extra_info("peercert")
        return cert if isinstance(cert, dict) and cert else None

    def eof_received(self) -> bool | None:
        return None         # the client left: close, which aborts what is in flight

    def connection_lost(self, exc: Exception | None) -> None:
        self._drop()
        self._server.forget(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause(PAUSE_WRITE)
        self._send_timer = self._loop.call_later(self._lim.send_timeout_s, self.abort)

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None
        self._unpause(PAUSE_WRITE)
        if self._queue and self._active is None:
            self._dispatch()

    # --- requests to the app, replies to the client ---------------------------------

    def _fail(self, status: int, message: str) -> None:
        """Answer `status` after the replies owed to earlier requests, then close."""
        if self._closed:
            return
        self._input_done = True
        if self._phase in (BODY, WAIT100):
            req = self._req
            req.keep_alive = False
        else:
            req = Request("", "", keep_alive=False, remote=self._remote, start=self._now)
        ex = Exchange(self, req)
        ex._error = (status, error_body(message))
        self._server.errors[status] = self._server.errors.get(status, 0) + 1
        self._arm(IDLE, INF)
        self._queue.append(ex)
        if self._active is None:
            self._dispatch()

    def _dispatch(self) -> None:
        """Hand queued requests to the app while nothing is in flight."""
        if self._dispatching:
            return          # a synchronous reply inside the loop below
        self._dispatching = True
        queue = self._queue
        server = self._server
        try:
            while self._active is None and queue and not self._write_paused:
                self._active = ex = queue.popleft()
                if ex._error is not None:
                    ex.respond(*ex._error)
                    continue
                server.requests += 1
                try:
                    self._app.handle(ex)
                except Exception as exc:
                    self._app_failed(ex, exc)
        finally:
            self._dispatching = False
        if self._active is None and not queue and not self._closed:
            self._settled()

    def _app_failed(self, ex: Exchange, exc: Exception) -> None:
        req = ex.request
        log.error("app failed on %s %s from %s", req.method, req.path, req.remote,
                  exc_info=exc)
        self._server.errors[500] += 1
        ex.respond(500, error_body(MESSAGES[500]))

    def _settled(self) -> None:
        """Called by `_dispatch` and `send_reply` when nothing is active or queued: the
        common case (idle, reading, not paused) only starts the keep-alive clock."""
        if self._phase == IDLE and not (self._paused or self._input_done):
            self._keepalive_clock()
        else:
            self._idle()

    def _keepalive_clock(self) -> None:
        self._deadline = deadline = self._loop.time() + self._lim.keepalive_s
        if deadline < self._timer_at:
            self._rearm(deadline)

    def _idle(self) -> None:
        """Nothing queued or in flight: resume reading, start the keep-alive clock, or
        let a client waiting on 100-continue send its body."""
        if self._paused & PAUSE_QUEUE:
            self._unpause(PAUSE_QUEUE)
        if self._phase == IDLE:
            if not self._input_done:
                self._keepalive_clock()
        elif self._phase == WAIT100:
            self._out.write(self._transport, CONTINUE)
            self._arm(BODY, self._loop.time() + self._lim.body_timeout_s)

    def send_reply(self, ex: Exchange, status: int, body: bytes, content_type: bytes,
                   headers: bytes) -> None:
        """Called by `Exchange.respond` (once per exchange)."""
        if ex is not self._active:
            return          # the connection was lost or aborted: nobody to answer
        req = ex.request
        if req.keep_alive and not self._shutting and not (self._input_done and not self._queue):
            close = False
            conn = CONNECTION_KEEP_ALIVE if req.version == "1.0" else b""
        else:
            close = True
            conn = CONNECTION_CLOSE
        head = _HEADS.get((status, content_type)) or _head(status, content_type)
        if req.method == "HEAD":
            data = b"%s%d\r\n%s%s\r\n" % (head, len(body), headers, conn)
        else:
            data = b"%s%d\r\n%s%s\r\n%s" % (head, len(body), headers, conn, body)
        ex.written = len(data)
        self._active = None
        self._out.write(self._transport, data)
        if close:
            self._close(linger=ex._error is not None)
        elif self._dispatching:
            return          # the loop in _dispatch goes on
        elif self._queue:
            self._dispatch()
        else:
            self._settled()

    # --- timer, flow control, closing -----------------------------------------------

    def _arm(self, phase: int, deadline: float) -> None:
        """Enter `phase` with `deadline`. The timer is only moved when it would fire too
        late; firing early, it re-arms itself (see _on_timer), so a steady stream of
        requests costs a float store per phase, not a timer per request. (The hot
        paths inline this.)"""
        self._phase = phase
        self._deadline = deadline
        if deadline < self._timer_at:
            self._rearm(deadline)

    def _rearm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._on_timer)
        self._timer_at = deadline

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = INF
        deadline = self._deadline
        if self._lost or deadline == INF:
            return
        if self._loop.time() < deadline:
            self._timer = self._loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline
        elif self._closed or self._phase == IDLE:
            self._deadline = INF    # idle keep-alive, or the linger after an error
            self._out.flush()
            self._transport.close()
        else:
            self._fail(408, MESSAGES[408])

    def _pause(self, reason: int) -> None:
        if not self._paused and not self._closed:
            self._transport.pause_reading()
            if self._phase in (HEAD, BODY):
                self._deadline = INF    # we, not the client, hold the request up
        self._paused |= reason

    def _unpause(self, reason: int) -> None:
        if not self._paused & reason:
            return
        self._paused &= ~reason
        if self._paused or self._closed:
            return
        self._transport.resume_reading()
        if self._phase == HEAD:
            self._arm(HEAD, self._loop.time() + self._lim.header_timeout_s)
        elif self._phase == BODY:
            self._arm(BODY, self._loop.time() + self._lim.body_timeout_s)

    def _close(self, linger: bool = False) -> None:
        """Close after what was written. After an error reply the client may still be
        sending: shut our side and drain a little (the timer or the client's EOF ends
        it), so the client's kernel does not reset the connection before the reply is
        read."""
        if self._closed:
            return
        self._closed = self._input_done = True
        self._queue.clear()
        self._out.flush()
        tr = self._transport
        # TLS cannot half-close: its close sends close_notify after the reply and
        # reads (and drops) what the client still sends until its close_notify, which
        # is the linger (the TCP socket is not closed under unread bytes either)
        if linger and not self._shutting and tr.can_write_eof():
            tr.write_eof()
            if self._paused:
                self._paused = 0
                tr.resume_reading()
            self._arm(LINGER, self._loop.time() + _LINGER_S)
        else:
            self._deadline = INF
            tr.close()

    def shutdown(self) -> None:
        """Server shutdown: close now if idle, else after the reply in flight."""
        self._shutting = True
        if self._closed:
            if not self._lost:
                self._out.flush()
                self._transport.close()
        elif self._active is None and not self._queue and self._phase == IDLE:
            self._close()

    def abort(self) -> None:
        """Drop the connection now; the exchange in flight gets on_abort."""
        if not self._lost:
            self._transport.abort()
        self._drop()

    def _drop(self) -> None:
        if self._lost:
            return
        self._lost = self._closed = self._input_done = True
        for handle in (self._timer, self._send_timer):
            if handle is not None:
                handle.cancel()
        self._timer = self._send_timer = None
        self._queue.clear()
        ex, self._active = self._active, None
        if ex is not None and not ex._done:
            ex._done = True
            callback, ex.on_abort = ex.on_abort, None
            if callback is not None:
                try:
                    callback()
                except Exception:
                    log.exception("on_abort failed for %s %s", ex.request.method,
                                  ex.request.path)
