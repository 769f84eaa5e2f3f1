"""The values the request core works with: a deadline, a call, a verdict, an outcome.

Built by the fronts (`lb.rest.front`, `lb.grpc.front`) once per client request
and read by the core (`lb.request.core`), the dispatcher (`lb.request.dispatch`) and the
batching. All are slotted; the frozen ones are shared constants or results.

A `Call` describes one client request in protocol-neutral terms: which model
and version it addresses, which node group may answer it (`group`, set by
`lb.rollout` for models routed by group; None: any node), what it costs
(units = rows × the model's cost), when it must be answered (`Deadline`), the
cache key if it has one, the client's Cache-Control directives, and the
`payload` only its front's `Transport` understands. The core never looks inside the payload.

Guarantees: a `Deadline` is one value for the whole request (retries, hedges,
waits and batches all read it); `Deadline.check()` raises the one
`DeadlineExceeded` of `lb.errors`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, Protocol, TypeVar

from lb.errors import DeadlineExceeded
from lb.native import mypyc_attr
from lb.pool.nodes import Node
from lb.request.directives import Directives
from lb.status import Verdict

A = TypeVar("A")


class XCache(StrEnum):
    """What the cache did for a request (the `X-Cache` header, `x-cache` metadata)."""

    HIT = "HIT"
    MISS = "MISS"
    PARTIAL = "PARTIAL"
    COALESCED = "COALESCED"
    BYPASS = "BYPASS"


DEFAULT_DIRECTIVES = Directives()


@dataclass(slots=True, init=False)     # built per request, treat as immutable
class Deadline:
    """The instant (time.monotonic()) by which a request must be answered."""

    at: float

    def __init__(self, at: float) -> None:     # written out: compiled (see Call)
        self.at = at

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(self.at - time.monotonic(), 0.0)

    def check(self) -> float:
        """Seconds left; raises DeadlineExceeded when none are."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("Deadline exceeded")
        return left


@dataclass(slots=True, init=False)
class Call:
    """One client request as the core sees it (see the module docstring).

    Its `__init__` is written out, not generated: mypyc compiles what a class
    defines, and a dataclass's generated methods run as Python (a frame per
    call). The same holds for the other classes built on every request."""

    model: str
    version: int | None         # explicit or resolved; None: by label, or unknown model
    label: str | None
    pinned: bool                # the client named the version (else it was resolved)
    units: float                # w_j = rows × the model's cost
    deadline: Deadline
    payload: Any                # what the front's Transport sends; opaque to the core
    directives: Directives = DEFAULT_DIRECTIVES
    rows: int = 1
    decision: Any = None        # the adaptive cache's Decision, once made (lb.request.core)
    priority: int = 0           # the client's X-Priority, lanes as lb.request.scheduler's
                                # (0 critical, 1 normal, 2 sheddable): the lower of it and
                                # the model's counts
    group: str | None = None    # the node group that answers (lb.rollout); None: any node

    def __init__(self, *, model: str, version: int | None, pinned: bool, units: float,
                 deadline: Deadline, payload: Any, label: str | None = None,
                 directives: Directives = DEFAULT_DIRECTIVES, rows: int = 1,
                 decision: Any = None, priority: int = 0, group: str | None = None) -> None:
        self.model = model
        self.version = version
        self.label = label
        self.pinned = pinned
        self.units = units
        self.deadline = deadline
        self.payload = payload
        self.directives = directives
        self.rows = rows
        self.decision = decision
        self.priority = priority
        self.group = group


@mypyc_attr(native_class=False)     # compiled, a generic dataclass does not load
@dataclass(slots=True)     # not frozen: built per request, treat as immutable
class Outcome(Generic[A]):
    """The core's answer to a call: the reply, what the cache did, who answered."""

    answer: A
    x_cache: XCache
    node: str | None = None     # None: answered without a node (a cache hit)


class Transport(Protocol[A]):
    """How one front talks to nodes: `lb.rest.upstream.RestTransport`,
    `lb.grpc.upstream.GrpcTransport`."""

    codec: Any      # its `lb.request.batching.BatchCodec`, None when its calls are never batched

    @property
    def usable(self) -> Callable[[Node], bool] | None:
        """Whether a node can take this front's calls (e.g. has a gRPC address); None:
        every node can (the common case: the policy skips the call per node)."""
        ...

    def send(self, node: Node, call: Call, timeout_s: float,
             on_done: Callable[[Any], object]) -> Any:
        """Start one attempt; returns an awaitable future of the node's answer (A).
        Raises or fails with `UpstreamError` when the node gave no answer. Calls
        `on_done(future)` once when the future is done, never before returning: REST
        from inside the I/O callback that ended it, gRPC as a done-callback."""
        ...

    def verdict(self, answer: A, cut_by_try_timeout: bool) -> Verdict: ...

    def body(self, answer: A) -> bytes:
        """The bytes of a good answer, as stored in the cache."""
        ...

    def from_cache(self, call: Call, body: bytes) -> A | None:
        """A cached body as this front's answer to `call`; None: unusable (a miss)."""
        ...
