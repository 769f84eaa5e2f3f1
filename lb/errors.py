"""The proxy's exception tree, and the one place that maps it to TF Serving errors.

    LbError
    ├── ConfigError            bad config file (names the file and field)
    ├── BadRequest             400: malformed body, path or header
    ├── NotFound               404: route the TF Serving API does not have
    ├── RequestTimeout         408: the client sent its body too slowly
    ├── PayloadTooLarge        413
    ├── Unavailable            503: no node could take the request
    ├── DeadlineExceeded       504: the request's deadline passed
    └── UpstreamError          a node failed before sending a response
        ├── UpstreamConnectError   connect refused / reset (safe to retry)
        └── UpstreamTimeout        a per-try timeout (connect or read)

Handlers raise these; `lb.rest.error_middleware` turns them into
`{"error": "..."}` replies. Library errors (aiohttp, OSError) are translated
into this tree at one boundary: `lb.upstream`.
"""

from __future__ import annotations


class LbError(Exception):
    """Base of everything the proxy raises on purpose."""

    status = 500


class ConfigError(LbError):
    """The config file is unreadable or invalid; the message names file and field."""


class BadRequest(LbError):
    status = 400


class NotFound(LbError):
    status = 404


class RequestTimeout(LbError):
    status = 408


class PayloadTooLarge(LbError):
    status = 413


class Unavailable(LbError):
    status = 503


class DeadlineExceeded(LbError):
    status = 504


class UpstreamError(LbError):
    """A node failed before any response arrived; the request may be retried."""

    status = 502

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"node {node}: {message}")
        self.node = node


class UpstreamConnectError(UpstreamError):
    status = 503


class UpstreamTimeout(UpstreamError):
    status = 504
