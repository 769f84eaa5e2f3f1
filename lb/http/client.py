"""Keep-alive HTTP/1.1 connection pools from the proxy to the nodes.

Called by `lb.rest.upstream.RestUpstream`, which keeps one `NodeClient` per node for
the attempts the dispatcher sends, the health probes and metadata reads.
Guarantees: the future `send` returns completes with a `Response` for any HTTP
status, or with `UpstreamConnectError` (nothing answered: safe to try another
node), `UpstreamTimeout` (connect or deadline passed) or `UpstreamError`
(anything else), never later than its deadline; at most `max_connections`
connections per node are open or connecting; a connection that failed, timed out
or was cancelled is closed, never reused. This module and `lb.http.client_conn`
are the one boundary where OS, ssl and httptools errors become `lb.errors`.
Per exchange: one Future and the request's bytes (request lines are cached per
method and path); one loop timer per node watches every deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from lb.errors import (
    BadRequest,
    ConfigError,
    LbError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamTimeout,
)
from lb.http.client_conn import Conn, Exchange, Response
from lb.http.outbox import Outbox

__all__ = ["ClientLimits", "NodeClient", "Response"]

log = logging.getLogger("lb.http.client")

_METHODS = {m.decode(): m for m in (b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"PATCH")}
_MAX_HEADS = 1024           # request lines cached per node (the proxy forwards few paths)
INF = math.inf
# The deadline timer takes what is due within this as due: uvloop's clock and timers
# have a millisecond's resolution, and re-arming for less would spin until it ticks.
_SLACK_S = 0.001


@dataclass(slots=True, frozen=True)
class ClientLimits:
    max_connections: int = 256      # per node: open + connecting
    connect_timeout_s: float = 1.0
    keepalive_s: float = 30.0       # an idle pooled connection is closed after this
    max_response_bytes: int = 256 * 2**20


class NodeClient:
    """Connections to one node (base URL http://host:port or https://host:port).

    `ssl_context` replaces the default verifying context for https (`upstream.tls`:
    `lb.edge.node_tls`); `server_name` replaces the URL's host as the name the node's
    certificate must carry (and the SNI sent)."""

    def __init__(self, name: str, base_url: str, limits: ClientLimits,
                 ssl_context: ssl.SSLContext | None = None,
                 server_name: str | None = None) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"node {name}: base URL {base_url!r} is not http(s)://host[:port]")
        self.name = name
        self.limits = limits
        self.max_body = limits.max_response_bytes
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = (ssl_context or ssl.create_default_context()) if url.scheme == "https" else None
        self._server_name = (server_name or url.hostname) if self._ssl is not None else None
        self._prefix = url.path.rstrip("/").encode("ascii")
        self._host_line = b"Host: " + url.netloc.encode("idna") + b"\r\n"
        self._loop: asyncio.AbstractEventLoop | None = None
        self.outbox = Outbox()                   # requests leave at the end of a loop turn
        self._idle: list[Conn] = []              # LIFO; sorted by idle_since
        self._conns: set[Conn] = set()           # every connection holding a slot
        self._connecting: set[Exchange] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._waiters: deque[Exchange] = deque()
        self._open = 0                           # slots taken: connected + connecting
        self._sweeper: asyncio.TimerHandle | None = None
        self._timer: asyncio.TimerHandle | None = None  # the earliest deadline, or earlier
        self._timer_at = INF
        self._heads: dict[tuple[str, str], bytes] = {}  # request line + Host, by method, path
        self._closing = False
        self._drained: asyncio.Future[None] | None = None
        self._created = self._reused = self._failed = 0

    # -- public API ------------------------------------------------------------------------

    def send(self, method: str, path: str, body: bytes | None, deadline: float,
             headers: bytes = b"",
             on_done: Callable[[asyncio.Future[Response]], object] | None = None,
             ) -> asyncio.Future[Response]:
        """Start one exchange; the future fails with UpstreamTimeout past `deadline`
        (a loop.time() value). Cancelling the future aborts the exchange at once.
        `headers` are extra lines b"Name: value\\r\\n" (not Host, Content-Length or
        Content-Type, which this adds). `on_done(future)` is called once when it is
        done: from inside the I/O callback that ended it, or from the loop when it
        failed before it started; never before `send` returns."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        ex = Exchange(loop=loop)
        ex.on_done = None
        try:
            if self._closing:
                raise UpstreamConnectError(self.name, "client is closed")
            if deadline <= loop.time():
                raise UpstreamTimeout(self.name, "deadline passed before sending")
            head = self._heads.get((method, path)) or self._head(method, path)
        except (LbError, ValueError) as exc:
            self._failed += 1
            ex.set_exception(exc if isinstance(exc, LbError)
                             else BadRequest(f"cannot forward {method} {path!r}: {exc}"))
            if on_done is not None:
                ex.add_done_callback(on_done)       # after send returns
            return ex
        if body is None:
            ex.data = b"%s%s\r\n" % (head, headers)
        else:
            ex.data = b"%sContent-Length: %d\r\nContent-Type: application/json\r\n%s\r\n%s" % (
                head, len(body), headers, body)
        ex.owner = self
        ex.deadline = deadline
        ex.head = method == "HEAD"
        ex.conn = ex.task = None
        if deadline < self._timer_at:
            self._arm(deadline)
        idle = self._idle
        while idle:                     # the most recently used open connection
            conn = idle.pop()
            conn.idle = False
            transport = conn.transport
            if transport is not None and not transport.is_closing():
                self._reused += 1
                conn.start(ex)
                break
            self._discard(conn, abort=True)
        else:                           # none: a new one, or queued for a slot
            if self._open < self.limits.max_connections:
                self._open += 1
                self._connect(ex)
            else:
                self._waiters.append(ex)    # a slot passes to it when one frees
        if not ex.done():
            ex.on_done = on_done
        elif on_done is not None:       # a write failed at once: after send returns
            ex.add_done_callback(on_done)
        return ex

    def stats(self) -> dict[str, int]:
        """open: connections open or connecting (<= max_connections); idle: pooled;
        busy: open - idle; connecting; waiting: sends queued for a slot; created:
        connections established; reused: exchanges run on a pooled connection;
        failed: exchanges that ended with an error (not cancellations)."""
        idle = len(self._idle)
        return {"open": self._open, "idle": idle, "busy": self._open - idle,
                "connecting": len(self._connecting), "waiting": len(self._waiters),
                "created": self._created, "reused": self._reused, "failed": self._failed}

    async def close(self, grace_s: float = 1.0) -> None:
        """Close idle connections now, let exchanges in flight finish within `grace_s`,
        then close the rest; later sends fail with UpstreamConnectError. Idempotent."""
        self._closing = True
        loop = self._loop
        if loop is None:
            return
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.idle = False
            self._discard(conn, abort=False)
        while self._waiters:
            self.abort(self._waiters[0], UpstreamConnectError(self.name, "client closed"))
        if self._open > 0:
            if self._drained is None:
                self._drained = loop.create_future()
            await asyncio.wait([self._drained], timeout=grace_s)
        for ex in list(self._connecting):
            self.abort(ex, UpstreamConnectError(self.name, "client closed while connecting"))
        for conn in list(self._conns):
            if conn.ex is not None:
                error = UpstreamError if conn.got_bytes else UpstreamConnectError
                self.abort(conn.ex, error(self.name, "client closed mid-exchange"))
            else:
                self._discard(conn, abort=True)
        if self._timer is not None:              # nothing is left to time out
            self._timer.cancel()
            self._timer = None
            self._timer_at = INF
        if self._tasks:                          # cancelled connects: let them unwind
            await asyncio.wait(list(self._tasks), timeout=1.0)

    # -- dispatch --------------------------------------------------------------------------

    def _head(self, method: str, path: str) -> bytes:
        """The request line and Host header; raises ValueError for what cannot be sent."""
        m = _METHODS.get(method)
        if m is None:
            if not (method.isascii() and method.isalpha()):
                raise ValueError("bad method")
            m = method.encode("ascii")
        p = path.encode("ascii")
        # int needles: `b" " in p` would make CPython raise and clear a TypeError inside
        if 32 in p or 13 in p or 10 in p or not p.startswith(b"/"):
            raise ValueError("bad path")
        head = b"".join((m, b" ", self._prefix, p, b" HTTP/1.1\r\n", self._host_line))
        if len(self._heads) < _MAX_HEADS:
            self._heads[(method, path)] = head
        return head

    def _connect(self, ex: Exchange) -> None:
        """Open a connection for `ex`, which holds a slot already."""
        loop = self._loop
        assert loop is not None
        conn = Conn(self)
        task = loop.create_task(loop.create_connection(
            lambda: conn, self._host, self._port, ssl=self._ssl,
            server_hostname=self._server_name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(functools.partial(self._connected, ex, conn))
        ex.task = task
        ex.conn = ex.connect_timer = None
        self._connecting.add(ex)
        limit = loop.time() + self.limits.connect_timeout_s
        if limit < ex.deadline:
            ex.connect_timer = loop.call_at(limit, self._connect_expired, ex)

    def _connected(self, ex: Exchange, conn: Conn, task: asyncio.Task[Any]) -> None:
        if ex.task is not task:                  # the exchange gave up; its slot is free
            if not task.cancelled() and task.exception() is None:
                conn.close(abort=True)
            return
        ex.task = None
        self._connecting.discard(ex)
        if ex.connect_timer is not None:
            ex.connect_timer.cancel()
            ex.connect_timer = None
        exc = None if task.cancelled() else task.exception()
        if exc is not None or task.cancelled() or not conn.is_usable():
            conn.close(abort=True)
            self._release_slot()
            why = f"{type(exc).__name__}: {exc}" if exc else "closed right after connect"
            error = (UpstreamConnectError if isinstance(exc, OSError | None) else UpstreamError)
            self._settle(ex, error(self.name, f"connect to {self._host}:{self._port}: {why}"))
            return
        self._created += 1
        conn.has_slot = True
        self._conns.add(conn)
        conn.start(ex)

    # -- outcomes (called by Conn and Exchange) -------------------------------------------

    def exchange_done(self, conn: Conn, ex: Exchange, resp: Response, reusable: bool) -> None:
        conn.uses += 1
        if not reusable or self._closing:
            self._discard(conn, abort=False)
        elif self._waiters:             # the connection passes to the first waiter
            self._reused += 1
            conn.start(self._waiters.popleft())
        else:                           # back to the idle stack
            loop = self._loop
            assert loop is not None
            conn.idle = True
            conn.idle_since = now = loop.time()
            self._idle.append(conn)
            if self._sweeper is None:
                self._sweeper = loop.call_at(now + self.limits.keepalive_s, self._sweep)
        if not ex.done():
            ex.set_result(resp)
            ex.report()

    def exchange_failed(self, conn: Conn, ex: Exchange, got_bytes: bool, why: str) -> None:
        if not got_bytes and conn.uses > 0 and not self._closing:
            # A reused connection may have been closed by the node just as we wrote:
            # try once more on a fresh one, which inherits this connection's slot (and,
            # being fresh, is never retried itself).
            log.debug("node %s: reused connection failed (%s); retrying fresh", self.name, why)
            conn.has_slot = False
            self._conns.discard(conn)
            conn.close(abort=True)
            self._connect(ex)
            return
        self._discard(conn, abort=True)
        error = UpstreamError if got_bytes else UpstreamConnectError
        self._settle(ex, error(self.name, why))

    def conn_lost(self, conn: Conn) -> None:
        if conn.idle:
            conn.idle = False
            self._idle.remove(conn)
        self._discard(conn, abort=False)

    def abort(self, ex: Exchange, err: Exception | None) -> None:
        """End `ex` wherever it is (deadline, cancel, close); its connection is closed."""
        task = ex.task
        if task is not None:
            ex.task = None
            task.cancel()
            self._connecting.discard(ex)
            if ex.connect_timer is not None:
                ex.connect_timer.cancel()
                ex.connect_timer = None
            self._release_slot()
        elif ex.conn is not None:
            conn, ex.conn = ex.conn, None
            conn.ex = None
            self._discard(conn, abort=True)
        else:
            with contextlib.suppress(ValueError):
                self._waiters.remove(ex)        # queued for a slot
        self._settle(ex, err)

    def _settle(self, ex: Exchange, err: Exception | None) -> None:
        if ex.done():
            return
        if err is not None:
            self._failed += 1
            ex.set_exception(err)
            ex.report()

    # -- the deadline timer ----------------------------------------------------------------

    def _arm(self, at: float) -> None:
        """Fire at `at`. One timer for every exchange: a send moves it only when its
        deadline is earlier than the timer; when it fires it ends what is past its
        deadline and re-arms for the earliest deadline left."""
        loop = self._loop
        assert loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(at, self._on_timer)
        self._timer_at = at

    def _on_timer(self) -> None:
        loop = self._loop
        assert loop is not None
        self._timer = None
        self._timer_at = INF
        now = loop.time() + _SLACK_S
        soonest = INF
        late: list[tuple[Exchange, str]] = []
        for exs, why in ((self._waiters, f"no free connection (max_connections="
                                         f"{self.limits.max_connections})"),
                         (self._connecting, "connect did not complete"),
                         ((c.ex for c in self._conns if c.ex is not None),
                          "no complete response")):
            for ex in exs:
                if ex.deadline <= now:
                    late.append((ex, why))
                elif ex.deadline < soonest:
                    soonest = ex.deadline
        for ex, why in late:
            if not ex.done():
                self.abort(ex, UpstreamTimeout(self.name, f"{why} before the deadline"))
        if soonest < self._timer_at:
            self._arm(soonest)

    def _connect_expired(self, ex: Exchange) -> None:
        ex.connect_timer = None
        if ex.task is not None:
            self.abort(ex, UpstreamTimeout(
                self.name, f"connect timed out after {self.limits.connect_timeout_s}s"))

    # -- slots and the idle stack ----------------------------------------------------------

    def _sweep(self) -> None:
        """Close connections idle for keepalive_s; the stack bottom is the oldest."""
        loop = self._loop
        assert loop is not None
        self._sweeper = None
        idle = self._idle
        limit = loop.time() - self.limits.keepalive_s
        n = 0
        while n < len(idle) and idle[n].idle_since <= limit:
            n += 1
        expired = idle[:n]
        del idle[:n]
        for conn in expired:
            conn.idle = False
            self._discard(conn, abort=False)
        if idle:
            self._sweeper = loop.call_at(idle[0].idle_since + self.limits.keepalive_s,
                                         self._sweep)

    def _discard(self, conn: Conn, abort: bool) -> None:
        """Close `conn` (not in the idle stack) and free its slot."""
        conn.close(abort)
        if conn.has_slot:
            conn.has_slot = False
            self._conns.discard(conn)
            self._release_slot()

    def _release_slot(self) -> None:
        if self._waiters and not self._closing:
            ex = self._waiters.popleft()           # the slot passes to the first waiter
            self._connect(ex)
            return
        self._open -= 1
        if self._open == 0 and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
