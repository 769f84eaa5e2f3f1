"""What the HTTP server hands its app: one `Request` and one `Exchange` per request.

Called by `lb.http.server_protocol` (which fills them in from llhttp's callbacks) and by
the app behind `lb.http.server.HttpServer` (which answers through `Exchange.respond`).
Guarantees: an exchange is answered at most once; `respond` a second time, or after the
client left, does nothing; `on_abort` is called at most once, and only before a reply.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lb.http.pipeline import Pipeline


class Request:
    """One request as the parser callbacks filled it in."""

    __slots__ = ("body", "headers", "keep_alive", "method", "path", "query", "remote",
                 "start", "version")

    def __init__(self, method: str = "GET", path: str = "/", query: bytes = b"",
                 headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b"",
                 version: str = "1.1", keep_alive: bool = True, remote: str = "",
                 start: float = 0.0) -> None:
        self.method = method
        self.path = path                # raw target path, latin-1 decoded, no query
        self.query = query              # b"" when none
        self.headers = [] if headers is None else headers  # lower-case names, in order
        self.body = body                # complete, de-chunked
        self.version = version          # "1.0" | "1.1"
        self.keep_alive = keep_alive    # llhttp's verdict
        self.remote = remote            # peer IP
        self.start = start              # loop.time() of the request's first byte

    def header(self, name: bytes) -> bytes | None:
        """First value of a lower-case header name."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Exchange:
    """One request and its one reply; the app answers through `respond`."""

    __slots__ = ("_conn", "_done", "_error", "on_abort", "request", "status", "written")

    def __init__(self, conn: Pipeline, request: Request) -> None:
        self._conn = conn
        self._done = False
        self._error: tuple[int, bytes] | None = None    # a reply the server makes itself
        self.request = request
        self.on_abort: Callable[[], object] | None = None
        self.status = 0                 # of the reply, for the access log
        self.written = 0                # bytes of the reply

    @property
    def done(self) -> bool:
        return self._done

    @property
    def connection(self) -> Pipeline:
        """The client connection it came on (its `memo`, its TLS `peercert()`)."""
        return self._conn

    def respond(self, status: int, body: bytes, content_type: bytes = b"application/json",
                headers: bytes = b"") -> None:
        """Send the reply. `headers`: extra lines, each b"Name: value\\r\\n". The first
        call counts; later ones, and calls after the client left, do nothing."""
        if self._done:
            return
        self._done = True
        self.status = status
        self._conn.send_reply(self, status, body, content_type, headers)


class App(Protocol):
    def handle(self, exchange: Exchange) -> None:
        """Called on the loop for each complete request, in order per connection; answer
        now or later through `exchange.respond`. Must not raise."""
