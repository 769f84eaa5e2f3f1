"""The reading half of a server connection: bytes -> llhttp -> one complete Request.

Called by uvloop for each socket `lb.http.server.HttpServer` accepts (this class is the
asyncio.Protocol; the answering half is its base, `lb.http.pipeline.Pipeline`).
Guarantees:
- llhttp (via httptools) parses; its callbacks fill one slotted `Request` per request:
  method, raw path and query, lower-cased headers, the de-chunked body.
- Limits are enforced while bytes arrive: URL (414), header bytes and count (431, also
  on the wire before llhttp hands a header over), body (413: at once for a declared
  Content-Length, without 100 Continue; as soon as a chunked body passes it).
- `Expect: 100-continue` is answered when the request is next in line.
- Malformed input is answered 400 `{"error": "Malformed HTTP request: ..."}`; an
  Upgrade (or CONNECT) request is answered as a plain request, then the connection
  closes.
- A complete request goes to the app from inside the parser when nothing is in flight
  or queued (a synchronous reply is written before the next pipelined request is
  parsed), else it waits in the queue; the per-request work is kept to a few bytecodes
  per callback (see the comments on hot paths: scripts/bench_http_server.py measures).
"""

from __future__ import annotations

import asyncio
import logging
from itertools import chain
from typing import TYPE_CHECKING, Any, NoReturn

import httptools

from lb.http.exchange import Exchange, Request
from lb.http.limits import CONTINUE, MESSAGES
from lb.http.pipeline import BODY, HEAD, IDLE, INF, PAUSE_QUEUE, WAIT100, Pipeline

if TYPE_CHECKING:
    from lb.http.server import HttpServer

log = logging.getLogger("lb.http")

_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}
_WATCHED = frozenset((b"content-length", b"expect", b"connection"))
# Bits of ServerConnection._watched: what the head of the request being parsed said.
_LENGTH = 1         # Content-Length (in _content_length)
_EXPECT = 2         # Expect: 100-continue
_CONNECTION = 4     # a Connection header
_LAST = 8           # CONNECT: the last request on this connection
_TOO_LARGE = 16     # a Content-Length above max_body_bytes
# Parsed request targets by their bytes: what the proxy sees again and again.
_TARGETS: dict[bytes, tuple[str, bytes]] = {}
_TARGET_CACHE_SIZE = 4096
_TARGET_CACHE_URL = 256
_HASH = ord("#")
_UNARMED = -1.0     # _deadline of a phase entered in the chunk being parsed


class _Reject(Exception):
    """Raised in a parser callback to stop llhttp; the status is in `_reject`."""


class ServerConnection(Pipeline):
    """One client connection; see the module docstrings of this module and Pipeline."""

    __slots__ = ("_body", "_body_len", "_chunk_len", "_content_length", "_head_bytes",
                 "_head_wire", "_headers", "_last", "_parser", "_parts", "_reject",
                 "_reject_msg", "_start", "_url", "_watched")

    def __init__(self, server: HttpServer, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(server, loop)
        self._parser = httptools.HttpRequestParser(self)
        self._start = 0.0
        self._headers: list[tuple[bytes, bytes]] = []
        self._url = b""
        self._chunk_len = 0         # bytes of the chunk being fed
        self._head_wire = 0         # bytes of the chunk the head began in
        self._head_bytes = 0        # bytes of later chunks that held only this head; -1:
                                    # the head began in the chunk being fed
        self._watched = 0           # bits _LENGTH ... _TOO_LARGE, per request
        self._content_length = 0    # valid when _watched & (_LENGTH | _TOO_LARGE)
        self._last = False          # no request may follow the one being parsed
        self._body = b""            # the body's first piece
        self._parts: list[bytes] | None = None      # all its pieces, when more came
        self._body_len = 0
        self._reject = 0
        self._reject_msg = ""

    def data_received(self, data: bytes) -> None:
        if self._input_done:
            return          # after an error, an upgrade or a last request: discarded
        self._now = self._loop.time()
        self._chunk_len = len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._input_done = True     # answered as a plain request, then closed
        except httptools.HttpParserError as exc:
            if not self._input_done:    # after a last request llhttp rejects more bytes
                self._parse_failed(exc)
        else:
            if self._phase:             # a request is still arriving
                self._arriving(len(data))
        if self._queue:
            self._queued()

    def _queued(self) -> None:
        """Requests wait in the queue: dispatch if nothing is in flight, and bound them."""
        queue = self._queue
        if self._active is None:
            self._dispatch()
        if queue:
            lim = self._lim
            if (len(queue) >= lim.max_pipeline or sum(len(ex.request.body) for ex in queue)
                    >= lim.max_pipeline_bytes):
                self._pause(PAUSE_QUEUE)

    # --- llhttp callbacks -------------------------------------------------------------
    # One Python call each per request (on_header: per header); the per-request state
    # they reset is kept to what a request without watched headers needs.

    def on_message_begin(self) -> None:
        # The phase's deadline is set by _arriving if the request is not complete at the
        # end of this chunk (most are), from the same clock reading.
        self._start = self._now
        self._headers = []
        self._url = b""
        self._watched = 0
        self._head_wire = self._chunk_len
        self._head_bytes = -1
        self._phase = HEAD

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._lim.max_url_bytes:
            self._stop(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Count and size are checked once the head is complete: until then memory is
        # bounded by the wire count in _arriving.
        name = name.lower()
        self._headers.append((name, value))
        if name in _WATCHED:
            if name == b"content-length":      # in every POST: no second call for it
                try:
                    self._content_length = length = int(value)
                except ValueError:
                    self._stop(400, "Malformed HTTP request: invalid Content-Length")
                self._watched |= _LENGTH if length <= self._lim.max_body_bytes else _TOO_LARGE
            else:
                self._watch(name, value)

    def _watch(self, name: bytes, value: bytes) -> None:
        """Expect and Connection (Content-Length is handled by on_header itself)."""
        if name == b"expect":
            if value.lower() == b"100-continue":
                self._watched |= _EXPECT
        else:
            self._watched |= _CONNECTION

    def on_headers_complete(self) -> None:
        headers = self._headers
        lim = self._lim
        if len(headers) > lim.max_headers:
            self._stop(431)
        wire = self._head_wire          # at least the head's bytes on the wire: the exact
        if self._head_bytes >= 0:       # sum is only needed when this could pass the limit
            wire += self._head_bytes + self._chunk_len
        if wire > lim.max_header_bytes and (
                sum(map(len, chain.from_iterable(headers))) > lim.max_header_bytes):
            self._stop(431)
        parser = self._parser
        method = _METHODS.get(parser.get_method()) or self._other_method()
        keep_alive = parser.should_keep_alive()
        url = self._url
        target = _TARGETS.get(url) or self._target(url)
        self._req = req = Request(method, target[0], target[1], headers, b"", "1.1",
                                  keep_alive, self._remote, self._start)
        watched = self._watched
        # any bit but _LENGTH (the lowest), or HTTP/1.0 and Connection: close
        if (watched > _LENGTH or not keep_alive) and self._unusual(req, watched):
            return
        self._phase = BODY
        self._deadline = _UNARMED       # see _arriving

    def on_body(self, body: bytes) -> None:
        if self._body:
            self._more_body(body)
        elif len(body) > self._lim.max_body_bytes:
            self._stop(413)
        else:
            self._body = body

    def _more_body(self, body: bytes) -> None:
        """A body in several pieces (several reads, or chunked): join it at the end."""
        parts = self._parts
        if parts is None:
            first = self._body
            self._parts = parts = [first]
            self._body_len = len(first)
        size = self._body_len + len(body)
        if size > self._lim.max_body_bytes:
            self._stop(413)
        self._body_len = size
        parts.append(body)

    def on_message_complete(self) -> None:
        req = self._req
        parts = self._parts
        if parts is None:
            req.body = self._body
        else:
            req.body = b"".join(parts)
            self._parts = None
        self._body = b""
        ex = Exchange(self, req)
        if self._last:
            self._input_done = True
        self._phase = IDLE              # busy: no keep-alive clock until the reply
        self._deadline = INF
        if (self._active is None and not self._queue and not self._write_paused
                and not self._closed):
            # The app takes it now, inside the parser (a synchronous reply is written
            # before the next pipelined request is parsed); otherwise it waits its turn.
            self._active = ex
            self._server.requests += 1
            try:
                self._app.handle(ex)
            except Exception as exc:
                self._app_failed(ex, exc)
        elif not self._closed:          # else a reply closed the connection (shutdown)
            self._queue.append(ex)

    # --- helpers ------------------------------------------------------------------------

    def _unusual(self, req: Request, watched: int) -> bool:
        """The rest of on_headers_complete for a head that is not a plain keep-alive
        HTTP/1.1 one; True when the body is withheld until a 100 Continue is sent."""
        parser = self._parser
        # llhttp takes 0.9, 1.0, 1.1 and 2.0; of these only 1.1 keeps alive by default,
        # so the (slow) version string is needed only when that default did not apply.
        if not req.keep_alive or watched & _CONNECTION:
            req.version = parser.get_http_version()
            if not req.keep_alive or parser.should_upgrade():
                self._last = True       # an upgrade is answered as a plain request
        elif watched & _LAST:
            self._last = True
        if watched & _TOO_LARGE:
            self._stop(413)             # at once: no 100 Continue, no body read
        if watched & _EXPECT and req.version == "1.1":
            return self._expect_continue(watched)
        return False

    def _target(self, url: bytes) -> tuple[str, bytes]:
        """Path (latin-1 decoded) and query of a request target, cached for short ones
        (a proxy sees few distinct targets; the app's own caches then hit on one str)."""
        # origin-form, what clients send; `_HASH not in url` searches for b"#" (a bytes
        # needle would cost CPython a TypeError raised and cleared inside `in`)
        if url[:1] == b"/" and _HASH not in url:
            path, _, query = url.partition(b"?")
        else:
            path, query = self._split_url(url)
        target = (path.decode("latin-1"), query)
        if len(url) <= _TARGET_CACHE_URL and len(_TARGETS) < _TARGET_CACHE_SIZE:
            _TARGETS[url] = target
        return target

    def _other_method(self) -> str:
        """A method outside _METHODS. After CONNECT llhttp parses no further request."""
        method: str = self._parser.get_method().decode("latin-1")
        if method == "CONNECT":
            self._watched |= _LAST
        return method

    def _expect_continue(self, watched: int) -> bool:
        """Answer `Expect: 100-continue` now, or later when this request is next in line
        (then True: the body is withheld, no deadline runs)."""
        if watched & _LENGTH and self._content_length == 0:
            return False
        if self._active is not None or self._queue:
            self._arm(WAIT100, INF)
            return True
        self._out.write(self._transport, CONTINUE)
        return False

    def _split_url(self, url: bytes) -> tuple[bytes, bytes]:
        """Path and query of a target that is not a plain origin-form one."""
        url = url.partition(b"#")[0]
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
            return path, query
        if url == b"*":
            return url, b""
        try:                            # absolute-form
            # Any: its path and query are None when absent, whatever the stubs say
            parsed: Any = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            self._stop(400, "Malformed HTTP request: invalid URL")
        return parsed.path or b"/", parsed.query or b""

    def _stop(self, status: int, message: str = "") -> NoReturn:
        """Stop llhttp from a callback; data_received answers `status`."""
        self._reject = status
        self._reject_msg = message or MESSAGES[status]
        raise _Reject(status)

    def _arriving(self, size: int) -> None:
        """A request is incomplete at the end of a chunk of `size` bytes: start the clock
        of the phase it entered in this chunk, and bound its head on the wire (llhttp
        holds a header's parts before on_header)."""
        phase = self._phase
        if phase == HEAD:
            if self._head_bytes < 0:    # the head began inside this chunk
                self._head_bytes = 0
                self._start_clock(self._now + self._lim.header_timeout_s)
            else:
                self._head_bytes += size
                if self._head_bytes > self._lim.head_cap():
                    self._fail(431, MESSAGES[431])
        elif phase == BODY and self._deadline == _UNARMED:
            self._start_clock(self._now + self._lim.body_timeout_s)

    def _start_clock(self, deadline: float) -> None:
        if self._paused:
            deadline = INF              # we, not the client, hold the request up
        self._deadline = deadline
        if deadline < self._timer_at:
            self._rearm(deadline)

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        if self._reject:
            self._fail(self._reject, self._reject_msg)
        elif isinstance(exc, httptools.HttpParserCallbackError):
            log.error("HTTP parser callback failed", exc_info=exc.__context__ or exc)
            self._fail(500, MESSAGES[500])
        else:
            self._fail(400, f"Malformed HTTP request: {exc}")
