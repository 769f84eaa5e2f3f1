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
  Upgrade request is answered as a plain request, then the connection closes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, NoReturn

import httptools

from lb.http.exchange import Exchange, Request
from lb.http.limits import CONTINUE, MESSAGES
from lb.http.pipeline import BODY, HEAD, IDLE, INF, PAUSE_QUEUE, WAIT100, Pipeline

if TYPE_CHECKING:
    from lb.http.server import HttpServer

log = logging.getLogger("lb.http")

_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}
_WATCHED = frozenset((b"content-length", b"expect", b"connection"))


class _Reject(Exception):
    """Raised in a parser callback to stop llhttp; the status is in `_reject`."""


class ServerConnection(Pipeline):
    """One client connection; see the module docstrings of this module and Pipeline."""

    __slots__ = ("_body", "_body_len", "_chunk_len", "_conn_header", "_content_length",
                 "_expect", "_head_bytes", "_head_wire", "_headers", "_parser", "_parts",
                 "_reject", "_reject_msg", "_start", "_url")

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
        self._content_length = -1
        self._expect = False
        self._conn_header = False
        self._body = b""
        self._parts: list[bytes] | None = None
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
            if self._phase == HEAD:
                self._count_head(len(data))
        queue = self._queue
        if queue:
            if self._active is None:
                self._dispatch()
            if queue:               # pipelined requests wait: bound them
                lim = self._lim
                if (len(queue) >= lim.max_pipeline or sum(len(ex.request.body) for ex in queue)
                        >= lim.max_pipeline_bytes):
                    self._pause(PAUSE_QUEUE)

    # --- llhttp callbacks -------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._start = now = self._now
        self._headers = []
        self._url = b""
        self._body_len = 0
        self._head_wire = self._chunk_len
        self._head_bytes = -1
        self._content_length = -1
        self._expect = self._conn_header = False
        self._phase = HEAD
        self._deadline = deadline = now + self._lim.header_timeout_s
        if deadline < self._timer_at:
            self._rearm(deadline)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._lim.max_url_bytes:
            self._stop(414)

    def on_header(self, name: bytes, value: bytes) -> None:
        # Count and size are checked once the head is complete: until then memory is
        # bounded by the wire count in _count_head.
        name = name.lower()
        self._headers.append((name, value))
        if name in _WATCHED:
            self._watch(name, value)

    def _watch(self, name: bytes, value: bytes) -> None:
        if name == b"content-length":
            try:
                self._content_length = int(value)
            except ValueError:
                self._stop(400, "Malformed HTTP request: invalid Content-Length")
        elif name == b"expect":
            self._expect = value.lower() == b"100-continue"
        else:
            self._conn_header = True

    def on_headers_complete(self) -> None:
        parser = self._parser
        headers = self._headers
        lim = self._lim
        if len(headers) > lim.max_headers:
            self._stop(431)
        wire = self._head_wire          # at least the head's bytes on the wire: the exact
        if self._head_bytes >= 0:       # sum is only needed when this could pass the limit
            wire += self._head_bytes + self._chunk_len
        if wire > lim.max_header_bytes and (
                sum(len(n) + len(v) for n, v in headers) > lim.max_header_bytes):
            self._stop(431)
        method = parser.get_method()
        keep_alive = parser.should_keep_alive()
        # llhttp takes 0.9, 1.0, 1.1 and 2.0; of these only 1.1 keeps alive by default,
        # so the (slow) version string is needed only when that default did not apply.
        version = "1.1"
        if not keep_alive or self._conn_header:
            version = parser.get_http_version()
        url = self._url
        if url[:1] == b"/" and b"#" not in url:     # origin-form: what clients send
            path, _, query = url.partition(b"?")
        else:
            path, query = self._split_url(url)
        self._req = req = Request(_METHODS.get(method) or method.decode("latin-1"),
                                  path.decode("latin-1"), query, headers, b"", version,
                                  keep_alive, self._remote, self._start)
        if self._content_length > lim.max_body_bytes:
            self._stop(413)             # at once: no 100 Continue, no body read
        if self._expect and self._content_length != 0 and req.version == "1.1":
            if self._active is not None or self._queue:
                self._arm(WAIT100, INF)     # sent when this request is next in line
                return
            self._transport.write(CONTINUE)
        self._phase = BODY
        self._deadline = deadline = self._now + lim.body_timeout_s
        if deadline < self._timer_at:
            self._rearm(deadline)

    def on_body(self, body: bytes) -> None:
        size = self._body_len + len(body)
        if size > self._lim.max_body_bytes:
            self._stop(413)
        self._body_len = size
        if not self._body:
            self._body = body
        elif self._parts is None:
            self._parts = [self._body, body]
        else:
            self._parts.append(body)

    def on_message_complete(self) -> None:
        req = self._req
        if self._parts is not None:
            req.body = b"".join(self._parts)
            self._parts = None
        else:
            req.body = self._body
        self._body = b""
        self._queue.append(Exchange(self, req))
        if not req.keep_alive:
            self._input_done = True
        self._phase = IDLE              # busy: no keep-alive clock until the reply
        self._deadline = INF

    # --- helpers ------------------------------------------------------------------------

    def _split_url(self, url: bytes) -> tuple[bytes, bytes]:
        """Path and query of a target that is not a plain origin-form one."""
        url = url.partition(b"#")[0]
        if url[:1] == b"/":
            path, _, query = url.partition(b"?")
            return path, query
        if url == b"*":
            return url, b""
        try:                            # absolute-form
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            self._stop(400, "Malformed HTTP request: invalid URL")
        return parsed.path or b"/", parsed.query or b""

    def _stop(self, status: int, message: str = "") -> NoReturn:
        """Stop llhttp from a callback; data_received answers `status`."""
        self._reject = status
        self._reject_msg = message or MESSAGES[status]
        raise _Reject(status)

    def _count_head(self, size: int) -> None:
        """Bound the head on the wire: llhttp holds a header's parts before on_header."""
        if self._head_bytes < 0:        # the head began inside this chunk
            self._head_bytes = 0
        else:
            self._head_bytes += size
            if self._head_bytes > self._lim.head_cap():
                self._fail(431, MESSAGES[431])

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        if self._reject:
            self._fail(self._reject, self._reject_msg)
        elif isinstance(exc, httptools.HttpParserCallbackError):
            log.error("HTTP parser callback failed", exc_info=exc.__context__ or exc)
            self._fail(500, MESSAGES[500])
        else:
            self._fail(400, f"Malformed HTTP request: {exc}")
