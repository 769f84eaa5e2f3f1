"""The proxy's exception tree: each class's `status` is the REST answer (`lb.status`
holds the other boundaries' tables).

    LbError
    ├── ConfigError            bad config file (names the file and field)
    ├── BadRequest             400: malformed body, path or header
    ├── NotFound               404: route the TF Serving API does not have
    ├── RequestTimeout         408: the client sent its body too slowly
    ├── PayloadTooLarge        413
    ├── Unauthenticated        401: no API key, or not a known one (lb.edge)
    ├── Forbidden              403: the key may not call this model
    ├── RateLimited            429 + Retry-After: over the key's budget
    ├── Unavailable            503: no node could take the request
    │   ├── NotReady           503 + Retry-After: no node has the model AVAILABLE yet
    │   └── Overloaded         503 + Retry-After: past limits.max_inflight
    ├── DeadlineExceeded       504: the request's deadline passed
    │   └── NotCached          504: only-if-cached and the cache has no answer
    └── UpstreamError          a node failed before sending a response
        ├── UpstreamConnectError   connect refused / reset (safe to retry)
        └── UpstreamTimeout        a per-try timeout (connect or read)

The core raises these; each front maps them at one boundary: `lb.rest.front`
to `{"error": "..."}` replies with `status` (and `Retry-After` when
`retry_after` is set), `lb.grpc.front` to gRPC status codes. Library errors
are translated into this tree at one boundary per node protocol:
`lb.http.client` (OSError, httptools) and `lb.grpc.upstream` (AioRpcError).
"""

from __future__ import annotations


class LbError(Exception):
    """Base of everything the proxy raises on purpose."""

    status = 500
    retry_after: int | None = None      # seconds, for a Retry-After header
    headers = b""                       # more reply header lines (b"Name: value\r\n")


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


class Unauthenticated(LbError):
    """No API key (or client certificate) the proxy knows; gRPC UNAUTHENTICATED."""

    status = 401
    headers = b'WWW-Authenticate: Bearer realm="tfserving-lb"\r\n'


class Forbidden(LbError):
    """A known key that may not call this model; gRPC PERMISSION_DENIED."""

    status = 403


class RateLimited(LbError):
    """Over the key's budget; `retry_after` says when it would pass. gRPC
    RESOURCE_EXHAUSTED."""

    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(LbError):
    status = 503


class NotReady(Unavailable):
    """No node has the model AVAILABLE within limits.queue_timeout_s."""

    retry_after = 1


class Overloaded(Unavailable):
    """Past limits.max_inflight: shed at once rather than queue inside the proxy."""

    retry_after = 1


class DeadlineExceeded(LbError):
    status = 504


class NotCached(DeadlineExceeded):
    """Cache-Control: only-if-cached, and the cache has no answer."""

    def __init__(self) -> None:
        super().__init__("not in cache (only-if-cached)")


class UpstreamError(LbError):
    """A node failed before any response arrived; the request may be retried."""

    status = 502

    def __init__(self, node: str, message: str) -> None:
        super().__init__(f"node {node}: {message}")
        self.node = node


class UpstreamConnectError(UpstreamError):
    status = 503


class UpstreamRefused(UpstreamConnectError):
    """The node turned the call away without serving it (gRPC UNAVAILABLE: a model
    still loading, a server starting or stopping, no connection): like a REST 503, the
    node leaves the model's set until a probe says AVAILABLE (`NodePool.refused`)."""


class UpstreamTimeout(UpstreamError):
    status = 504
