"""Limits of the client-facing HTTP/1.1 server and the bytes of the replies it writes.

Called by `lb.http.server` (the connection protocol) and by whoever configures the
REST front (`ServerLimits`). Guarantees: status lines are built once per status code;
every error the server generates itself has TF Serving's shape `{"error": "..."}`.
"""

from __future__ import annotations

import http
from dataclasses import dataclass


@dataclass(slots=True)
class ServerLimits:
    """What one client may send and how long it may take; each breach has its reply."""

    max_body_bytes: int = 64 * 2**20     # 413 (Content-Length: at once; chunked: when passed)
    max_url_bytes: int = 8190            # 414
    max_header_bytes: int = 8190         # 431: total bytes of header names + values
    max_headers: int = 128               # 431
    header_timeout_s: float = 30.0       # request line + headers, from the first byte: 408
    body_timeout_s: float = 30.0         # the body, from the end of the headers: 408
    keepalive_s: float = 75.0            # idle keep-alive connection: closed silently
    send_timeout_s: float = 60.0         # a client that reads no reply for this long: aborted
    max_pipeline: int = 16               # queued complete requests before reading pauses
    max_pipeline_bytes: int = 2**20      # queued body bytes before reading pauses

    def head_cap(self) -> int:
        """Bytes a request head may take on the wire before llhttp has handed us its
        parts: the URL, names and values, plus separators and the request line."""
        return self.max_url_bytes + self.max_header_bytes + 4 * self.max_headers + 1024


def _status_line(status: int) -> bytes:
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


# "HTTP/1.1 200 OK\r\nContent-Type: ": what precedes the content type in every reply.
HEADS: dict[int, bytes] = {s: _status_line(s) + b"Content-Type: " for s in range(100, 600)}


def reply_head(status: int) -> bytes:
    """Status line and the name of the Content-Type header, cached per status code."""
    head = HEADS.get(status)
    if head is None:
        head = _status_line(status) + b"Content-Type: "
    return head


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CONNECTION_CLOSE = b"Connection: close\r\n"
CONNECTION_KEEP_ALIVE = b"Connection: keep-alive\r\n"   # HTTP/1.0 clients need to hear it


# What the server says for each breach it detects itself.
MESSAGES: dict[int, str] = {
    408: "Request timeout: the request did not arrive in time",
    413: "Request body too large",
    414: "Request URI too long",
    431: "Request header fields too large",
    500: "Internal server error",
}
