"""Shadow copies: who gets one, what may stop it, and the pair once both answers are in.

Used by `lb.rollout.service.Rollouts`: `Shadow` is one model's shadow (config,
selection sequence, cap, budget, statistics), `Shedding` watches the proxy's
admission, `send` starts a copy for a `Ticket`, and a `Ticket` follows one
inference call of a routed model until its client's answer (and its copy's,
when it has one) is in; then the pair is compared (`lb.rollout.compare`) and
counted (`lb.rollout.windows.ShadowStats`).

`shadow.share` % of a model's predict calls whose primary group is not the
shadow's (chosen by a golden-ratio sequence: evenly spread, no randomness)
are copied to a node of the shadow group that the pool picks. A copy goes
through the front's `Transport` directly: not through the dispatcher (no
retries, no hedges, no `Node.begin`/`end`, so never in τ, the load window or
outlier detection) and never through the cache. It has its own deadline
(`shadow.timeout_s`), its own cap (`max_inflight`) and budget (`max_per_s`, a
token bucket), and is not sent while the proxy is shedding or near it
(client requests in flight at half `limits.max_inflight`, or a request shed in
the last second): shadows go first. Skipped copies are counted by reason. The
client never waits for a shadow: its answer is sent before the pair is compared.

Guarantees: nothing here awaits; a copy's failure never reaches the client;
`Ticket.answered` and the copy's end may come in either order, once each.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lb.pool.nodes import NodePool
from lb.request.call import Call, Deadline, Transport
from lb.rollout import compare
from lb.rollout.settings import ShadowConfig
from lb.rollout.split import Golden
from lb.rollout.windows import Pair, ShadowStats
from lb.status import http_status

if TYPE_CHECKING:
    from lb.rollout.service import Routed

log = logging.getLogger("lb.rollout")

SHED_QUIET_S = 1.0           # no shadow for this long after the proxy shed a request
SHADOW_HEADROOM = 0.5        # no shadow past this fraction of limits.max_inflight
CLIENT_CLOSED = 499

Load = Callable[[], tuple[int, int, int]]     # (requests in flight, max_inflight, shed)

def grpc_status(code: Any) -> int:
    """The HTTP status of a `grpc.StatusCode` (500 for the node-failure codes)."""
    value = getattr(code, "value", (2,))
    return http_status(value[0] if isinstance(value, tuple) else 2)


def reply(protocol: str, answer: Any) -> tuple[int, bytes | None]:
    """(status, body of a 200) of a node's answer (REST `Response`, gRPC `GrpcReply`)."""
    status = grpc_status(answer.code) if protocol == "grpc" else int(answer.status)
    return status, (answer.body if status == 200 else None)


class Budget:
    """A token bucket: `rate` per second, bursts of up to `burst`."""

    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self.tokens = self.burst
        self.at = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Shadow:
    """One model's shadow: its config, selection, cap, budget and statistics."""

    __slots__ = ("budget", "cfg", "inflight", "seq", "stats")

    def __init__(self, cfg: ShadowConfig, now: float) -> None:
        self.cfg = cfg
        self.seq = Golden()
        self.inflight = 0
        self.budget = Budget(cfg.max_per_s, now)
        self.stats = ShadowStats(cfg.window_s, cfg.samples)

    def reconfigure(self, cfg: ShadowConfig, now: float) -> None:
        if cfg.max_per_s != self.cfg.max_per_s:
            self.budget = Budget(cfg.max_per_s, now)
        self.stats.resize(cfg.window_s, cfg.samples)
        self.cfg = cfg

    def selected(self) -> bool:
        return self.seq.next() < self.cfg.share / 100.0


class Shedding:
    """Whether the proxy sheds or is near it (then no copy starts)."""

    __slots__ = ("last", "load")

    def __init__(self, load: Load) -> None:
        self.load = load
        self.last = (0, -1e9)                # (shed count seen, when it last grew)

    def now(self, now: float) -> bool:
        inflight, limit, shed = self.load()
        if shed != self.last[0]:
            self.last = (shed, now)
        return inflight >= limit * SHADOW_HEADROOM or now - self.last[1] < SHED_QUIET_S


class Ticket:
    """One inference call of a routed model, from `Rollouts.open` until its client's
    answer (and its shadow's, when it has one) is in."""

    __slots__ = ("body", "closed", "group", "model", "primary", "protocol", "shadow_node",
                 "shadow_out", "shadow_start", "shadowing", "start")

    def __init__(self, model: Routed, group: str, protocol: str, body: bytes) -> None:
        self.model = model
        self.group = group
        self.protocol = protocol
        self.body = body
        self.start = time.perf_counter()
        self.closed = False
        self.shadowing = False
        self.shadow_node = ""
        self.shadow_start = 0.0
        self.primary: tuple[int, bytes | None, float | None] | None = None
        self.shadow_out: tuple[int, bytes | None, float] | None = None

    def answered(self, status: int, body: bytes | None, hit: bool) -> None:
        """The client's answer (`status` 0: none; 499: the client left). Called once by
        the front; later calls are ignored."""
        if self.closed:
            return
        self.closed = True
        if status == CLIENT_CLOSED:
            return                                  # neither the group's fault nor a pair
        seconds = None if hit else time.perf_counter() - self.start
        self.model.group(self.group).record(status, seconds, hit)
        if self.shadowing:
            self.primary = (status, body, seconds)
            if self.shadow_out is not None:
                self._pair()

    def shadow_done(self, fut: asyncio.Future[Any]) -> None:
        """The shadow's attempt ended (called by the transport, once)."""
        seconds = time.perf_counter() - self.shadow_start
        shadow = self.model.shadow
        if shadow is not None:
            shadow.inflight = max(shadow.inflight - 1, 0)
        status, body = 0, None
        if not fut.cancelled() and fut.exception() is None:
            status, body = reply(self.protocol, fut.result())
        self.shadow_out = (status, body, seconds)
        if self.primary is not None:
            self._pair()
        elif self.closed and shadow is not None:    # the client left: no pair
            shadow.stats.skip("client_left")

    def _pair(self) -> None:
        """Both answers are in: compare them and count the pair."""
        shadow = self.model.shadow
        assert self.primary is not None and self.shadow_out is not None
        if shadow is None:                           # a reload removed the shadow
            return
        p_status, p_body, p_s = self.primary
        s_status, s_body, s_s = self.shadow_out
        comparison = None
        if p_body is not None and s_body is not None:
            read = compare.grpc_outputs if self.protocol == "grpc" else compare.rest_outputs
            a, b = read(p_body), read(s_body)
            comparison = (compare.compare(a, b) if a is not None and b is not None
                          else compare.Comparison(mismatch="an answer is not a readable "
                                                           "predict reply"))
        digest = hashlib.blake2b(self.body, digest_size=16).hexdigest()
        shadow.stats.record(time.monotonic(), time.time(),
                            Pair(p_status, s_status, comparison, p_s, s_s, digest,
                                 self.protocol, self.shadow_node))


def send(ticket: Ticket, shadow: Shadow, call: Call, transport: Transport[Any],
         pool: NodePool, shedding: Shedding) -> None:
    """Start `call`'s copy to the shadow group for `ticket`, or count why not
    (shedding first, then the cap, the budget, a node to send it to)."""
    now = time.monotonic()
    reason = None
    if shedding.now(now):
        reason = "shedding"
    elif shadow.inflight >= shadow.cfg.max_inflight:
        reason = "cap"
    elif not shadow.budget.take(now):
        reason = "budget"
    node = None if reason else pool.pick(call.units, (), call.model, None,
                                         usable=transport.usable, group=shadow.cfg.group)
    if node is None:
        shadow.stats.skip(reason or "no_node")
        return
    timeout = shadow.cfg.timeout_s
    copy = Call(model=call.model, version=None, label=call.label, pinned=call.pinned,
                units=call.units, deadline=Deadline(now + timeout), payload=call.payload,
                rows=call.rows, group=shadow.cfg.group)
    ticket.shadowing, ticket.shadow_node = True, node.name
    ticket.shadow_start = time.perf_counter()
    try:
        transport.send(node, copy, timeout, ticket.shadow_done)
    except Exception as exc:                     # e.g. a node without a gRPC address
        ticket.shadowing = False
        shadow.stats.skip("send_failed")
        log.debug("shadow to %s not sent: %r", node.name, exc)
        return
    shadow.inflight += 1
