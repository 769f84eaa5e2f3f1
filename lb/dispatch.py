"""Sending one call to nodes: pick, attempt, hedge, retry. Both fronts, one place.

Called by `lb.core` (and the batcher) with a `Call` and the front's
`Transport`. `send` asks the pool for the policy's choice, starts an attempt,
may hedge it (a copy to the best other node once the first has waited longer
than its node's p95 for the model, `lb.hedge`), and retries on another node
when the answer says so (no answer, busy, per-try timeout) while
`upstream.retries`, the retry budget and the call's deadline allow.

Guarantees:
* every attempt is bracketed by `Node.begin`/`Node.end` in exactly one place,
  `_Attempt.settle`, a done-callback of the attempt's future: whether it was
  answered, failed, timed out or was cancelled (a hedge that lost, a client
  that left), the node's in-flight counters return and outlier detection sees
  the outcome once;
* the first good answer wins; the other attempt is cancelled at once (the
  transport drops its connection or cancels its RPC), and what it ran counts
  as a lower bound of its node's time per unit;
* no Task is created here: attempts are futures, a hedge is a loop timer;
* when no attempt succeeds: the last answer if a node gave one, else
  `DeadlineExceeded` past the deadline, else `Unavailable`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from lb.call import Call, Transport, Verdict
from lb.config import Config
from lb.errors import DeadlineExceeded, LbError, Unavailable, UpstreamError
from lb.hedge import HedgePolicy
from lb.nodes import Node, NodePool
from lb.retry import RetryBudget

log = logging.getLogger("lb.dispatch")
A = TypeVar("A")


class _Attempt(Generic[A]):
    """One send to one node; `settle` closes its books when its future is done."""

    __slots__ = ("cut", "dispatcher", "flight", "fut", "hedge", "model", "node", "start",
                 "transport")

    def __init__(self, dispatcher: Dispatcher, node: Node, call: Call,
                 transport: Transport[A], try_s: float, cut: bool, hedge: bool) -> None:
        self.dispatcher = dispatcher
        self.node = node
        self.model = call.model
        self.transport = transport
        self.cut = cut
        self.hedge = hedge
        self.start = time.monotonic()
        self.flight = node.begin(call.units, self.start)
        try:
            self.fut: asyncio.Future[A] = transport.send(node, call, try_s)
        except BaseException:
            node.end(self.flight, 0.0, ok=False, now=self.start, sample=False)
            raise
        self.fut.add_done_callback(self.settle)

    def settle(self, fut: asyncio.Future[A]) -> None:
        try:
            self._settle(fut)
        finally:
            if self.dispatcher.on_settle is not None:
                self.dispatcher.on_settle()

    def _settle(self, fut: asyncio.Future[A]) -> None:
        now = time.monotonic()
        elapsed = now - self.start
        node = self.node
        if fut.cancelled():
            node.end(self.flight, elapsed, ok=True, now=now, sample=False, lower_bound=True)
            return
        exc = fut.exception()
        if exc is not None:
            node.end(self.flight, elapsed, ok=False, now=now, sample=False)
            self.dispatcher.outcome(node, False, now)
            if not isinstance(exc, LbError):
                log.error("attempt on %s raised %r", node.name, exc)
            return
        verdict = self.verdict()
        node.end(self.flight, elapsed, ok=verdict.node_ok, now=now, sample=verdict.good)
        self.dispatcher.outcome(node, verdict.node_ok, now)
        if verdict.good:
            self.dispatcher.hedging.observe(node.name, self.model, elapsed)

    def verdict(self) -> Verdict:
        return self.transport.verdict(self.fut.result(), self.cut)


class _Race(Generic[A]):
    """One attempt, and a hedge when the first is slow: settles `out` with the
    first good (or final) answer; cancels whatever is still running when done."""

    __slots__ = ("atts", "call", "dispatcher", "out", "timer", "transport", "tried", "try_at")

    def __init__(self, dispatcher: Dispatcher, call: Call, transport: Transport[A],
                 tried: list[Node], try_at: float) -> None:
        self.dispatcher = dispatcher
        self.call = call
        self.transport = transport
        self.tried = tried
        self.try_at = try_at
        self.atts: list[_Attempt[A]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.out: asyncio.Future[tuple[A, Node]] = asyncio.get_running_loop().create_future()
        self.out.add_done_callback(self._closed)

    def start(self, node: Node, cut: bool, hedge: bool = False) -> None:
        try_s = self.try_at - time.monotonic()
        att = _Attempt(self.dispatcher, node, self.call, self.transport, try_s, cut, hedge)
        self.atts.append(att)
        att.fut.add_done_callback(self._answered)

    def arm(self, delay: float) -> None:
        self.timer = asyncio.get_running_loop().call_later(delay, self._hedge)

    def _hedge(self) -> None:
        self.timer = None
        if self.out.done():
            return
        node = self.dispatcher.hedge_target(self.call, self.transport, self.tried)
        if node is None:
            return
        self.tried.append(node)
        try:
            self.start(node, cut=self.atts[0].cut, hedge=True)
        except LbError as exc:
            log.debug("hedge on %s not sent: %s", node.name, exc)

    def _answered(self, fut: asyncio.Future[A]) -> None:
        if self.out.done():
            return
        att = next(a for a in self.atts if a.fut is fut)
        pending = any(not a.fut.done() for a in self.atts)
        if fut.cancelled():
            if not pending:
                self.out.cancel()
            return
        exc = fut.exception()
        if exc is None and (not att.verdict().retry or not pending):
            if att.hedge:
                self.dispatcher.hedging.won += 1
            self.out.set_result((fut.result(), att.node))
        elif not pending:
            if exc is not None:
                self.out.set_exception(exc)
            else:
                self.out.set_result((fut.result(), att.node))

    def _closed(self, _out: asyncio.Future[tuple[A, Node]]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        for att in self.atts:
            if not att.fut.done():
                att.fut.cancel()


class Dispatcher:
    """Pick → attempt (→ hedge) → retry, for calls of both fronts."""

    def __init__(self, cfg: Config, pool: NodePool) -> None:
        self.pool = pool
        self.cfg = cfg
        up = cfg.upstream
        self.budget = RetryBudget(ratio=up.retry_budget_ratio, min_per_s=up.retry_min_per_s)
        self.hedging = HedgePolicy(cfg.hedge)
        self.on_settle: Callable[[], None] | None = None    # the batcher's capacity hook

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        self.budget.ratio = cfg.upstream.retry_budget_ratio
        self.budget.min_per_s = cfg.upstream.retry_min_per_s
        self.hedging.reconfigure(cfg.hedge)

    async def send(self, call: Call, transport: Transport[A]) -> tuple[A, Node]:
        """The answer to `call` from the first node that gives a usable one (see the
        module docstring); raises DeadlineExceeded or Unavailable when none did."""
        tried: list[Node] = []
        error: LbError | None = None
        answered: tuple[A, Node] | None = None
        now = time.monotonic()
        self.budget.deposit(now)
        self.hedging.deposit(now)
        try_limit = self.cfg.upstream.try_timeout_s or math.inf
        for n in range(1 + self.cfg.upstream.retries):
            now = time.monotonic()
            left = call.deadline.at - now
            if left <= 0 or (n and not self.budget.try_spend(now)):
                break
            node = self.pool.pick(call.units, tried, call.model, call.version,
                                  explicit=call.pinned, usable=transport.usable)
            if node is None:
                break
            tried.append(node)
            try_s = min(left, try_limit)
            try:
                answer, node = await self._race(call, transport, node, tried, now + try_s,
                                                cut=try_s < left)
            except UpstreamError as exc:
                log.warning("attempt on %s failed: %s", node.name, exc)
                error = exc
                continue
            answered = (answer, node)
            if not transport.verdict(answer, try_s < left).retry:
                return answered
        if answered is not None:
            return answered
        if call.deadline.at <= time.monotonic():
            raise DeadlineExceeded("Deadline exceeded") from error
        if error is None:
            raise Unavailable("no node available")
        raise Unavailable(str(error)) from error

    async def _race(self, call: Call, transport: Transport[A], node: Node,
                    tried: list[Node], try_at: float, cut: bool) -> tuple[A, Node]:
        delay = self._hedge_delay(call, node, try_at)
        if delay is None:                  # the common case: one attempt, no extra future
            att = _Attempt(self, node, call, transport, try_at - time.monotonic(), cut, False)
            return await att.fut, node
        race: _Race[A] = _Race(self, call, transport, tried, try_at)
        race.start(node, cut)
        race.arm(delay)
        return await race.out

    def _hedge_delay(self, call: Call, node: Node, try_at: float) -> float | None:
        if not call.idempotent or not self.cfg.model(call.model).hedge:
            return None
        delay = self.hedging.delay(node.name, call.model)
        if delay is None or time.monotonic() + delay >= try_at:
            return None
        return delay

    def hedge_target(self, call: Call, transport: Transport[Any],
                     tried: list[Node]) -> Node | None:
        """The best other node for a hedge: available (not ejected), below its in-flight
        cap, not tried yet; None when there is none or the budget is spent."""
        node = self.pool.pick(call.units, tried, call.model, call.version,
                              explicit=call.pinned, usable=transport.usable,
                              spare=self.cfg.upstream.pool_size)
        if node is None or not self.hedging.spend(time.monotonic()):
            return None
        return node

    def outcome(self, node: Node, ok: bool, now: float) -> None:
        """Passive outlier detection after each attempt (from `_Attempt.settle`)."""
        if node.outlier.record(ok, now, self.pool.outlier):
            node.healthy = False        # back only after the back-off and a good probe
            log.warning("node %s ejected until +%.1fs after %d consecutive failures",
                        node.name, node.outlier.ejected_until - now,
                        self.pool.outlier.consecutive_errors)

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        return {"retries": self.budget.retries, "budget_rejections": self.budget.rejected,
                "hedge": self.hedging.stats(now)}
