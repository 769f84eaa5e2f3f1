"""Sending one call to nodes: pick, attempt, hedge, retry. Both fronts, one place.

Called by `lb.core` and the batcher (`send`), and by the REST front's direct
path, which runs the same steps without a Task (`open` → `attempt(then=...)`
→ `then(future)` → `outcome`, and `send(call, transport, flow)` for
whatever is left when a retry is needed). `attempt` asks the pool for the
policy's choice and starts an attempt through the front's `Transport`,
arming a hedge (a copy to the best other node once the first has waited
longer than its node's p95 for the model, `lb.hedge`, or as soon as its node
counts as stalled: a rescue, `hedge_check`) when it may; `outcome`
says whether the answer is final or worth another node (no answer, busy, a
per-try timeout); attempts go on while `upstream.retries`, the retry budget
and the call's deadline allow.

Guarantees:
* every attempt is bracketed by `Node.begin`/`Node.end` in exactly one place,
  `_Attempt.settle`, which the transport calls once the attempt's future is
  done (REST: from the I/O callback that ended it): whether it was
  answered, failed, timed out or was cancelled (a hedge that lost, a client
  that left), the node's in-flight counters return and outlier detection sees
  the outcome once;
* the first good answer wins; the other attempt is cancelled at once (the
  transport drops its connection or cancels its RPC), and what it ran counts
  as a lower bound of its node's time per unit;
* no Task is created here: attempts are futures, a hedge is a loop timer;
* when no attempt succeeds: the last answer if a node gave one, else
  `DeadlineExceeded` past the deadline, else `Unavailable` (`finish`).
"""

from __future__ import annotations

import asyncio
import contextlib
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
# Node clients time attempts on the loop's clock, which uvloop keeps in whole
# milliseconds and reads once per iteration: an attempt that the call's deadline
# cut can end a little before that deadline by time.monotonic(). It is still the
# deadline that ended it (504), not a lack of nodes (503).
CLOCK_SLACK_S = 0.01
A = TypeVar("A")


class _Attempt(Generic[A]):
    """One send to one node; `settle` closes its books when its future is done, then
    calls `then` with the future (the race, or the REST front's direct path)."""

    __slots__ = ("cut", "dispatcher", "flight", "fut", "hedge", "model", "node", "start",
                 "then", "transport")

    def __init__(self, dispatcher: Dispatcher, node: Node, call: Call,
                 transport: Transport[A], try_s: float, cut: bool, hedge: bool,
                 then: Callable[[asyncio.Future[A]], object] | None = None) -> None:
        self.dispatcher = dispatcher
        self.node = node
        self.model = call.model
        self.transport = transport
        self.cut = cut
        self.hedge = hedge
        self.then = then
        self.start = time.monotonic()
        self.flight = node.begin(call.units, self.start)
        try:
            self.fut: asyncio.Future[A] = transport.send(node, call, try_s, self.settle)
        except BaseException:
            node.end(self.flight, 0.0, ok=False, now=self.start, sample=False)
            raise

    def settle(self, fut: asyncio.Future[A]) -> None:
        dispatcher = self.dispatcher
        try:
            now = time.monotonic()
            elapsed = now - self.start
            node = self.node
            if fut.cancelled():
                node.end(self.flight, elapsed, ok=True, now=now, sample=False,
                         lower_bound=True)
                return
            exc = fut.exception()
            if exc is not None:
                node.end(self.flight, elapsed, ok=False, now=now, sample=False)
                dispatcher.passive(node, False, now)
                if not isinstance(exc, LbError):
                    log.error("attempt on %s raised %r", node.name, exc)
                return
            verdict = self.transport.verdict(fut.result(), self.cut)
            node.end(self.flight, elapsed, ok=verdict.node_ok, now=now, sample=verdict.good)
            if not verdict.node_ok or node.outlier.failures:
                dispatcher.passive(node, verdict.node_ok, now)
            if verdict.good and dispatcher.hedge_on:
                dispatcher.hedging.observe(node.name, self.model, elapsed)
        finally:
            if self.then is not None:
                self.then(fut)
            if dispatcher.on_settle is not None:    # the batcher, while members wait
                dispatcher.on_settle()

    def verdict(self) -> Verdict:
        return self.transport.verdict(self.fut.result(), self.cut)


class _Race(Generic[A]):
    """One attempt, and a hedge when the first is slow: settles `out` with the
    first good (or final) answer and sets `flow.node` to the node that gave it;
    cancels whatever is still running when done."""

    __slots__ = ("atts", "call", "dispatcher", "flow", "out", "p95_at", "timer", "transport",
                 "try_at")

    def __init__(self, dispatcher: Dispatcher, call: Call, transport: Transport[A],
                 flow: Flow, try_at: float, p95_at: float) -> None:
        self.dispatcher = dispatcher
        self.call = call
        self.transport = transport
        self.flow = flow
        self.try_at = try_at
        self.p95_at = p95_at                # when the first attempt reaches its node's p95
        self.atts: list[_Attempt[A]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.out: asyncio.Future[A] = dispatcher.loop.create_future()
        self.out.add_done_callback(self._closed)

    def start(self, node: Node, cut: bool, hedge: bool = False) -> None:
        try_s = self.try_at - time.monotonic()
        att = _Attempt(self.dispatcher, node, self.call, self.transport, try_s, cut, hedge,
                       self._answered)
        self.atts.append(att)

    def arm(self, at: float) -> None:
        """Look at the hedge again at `at` (time.monotonic()), if within the try."""
        if at < self.try_at:
            self.timer = self.dispatcher.loop.call_later(at - time.monotonic(), self._hedge)

    def _hedge(self) -> None:
        """A hedge may be due: the first attempt reached its node's p95 (a plain hedge),
        or its node counts as stalled now (a rescue, which the budget favours). Else,
        or when no other node is better now, or the budget said no: look again at the
        next moment one of them can change (`Dispatcher.hedge_check`)."""
        self.timer = None
        if self.out.done():
            return
        now = time.monotonic()
        primary = self.atts[0]
        dispatcher = self.dispatcher
        rescue = dispatcher.stalled(primary.node, now)
        if rescue or now >= self.p95_at:
            node = dispatcher.hedge_target(self.call, self.transport, self.flow.tried,
                                           primary.node)
            if node is not None and dispatcher.hedging.spend(now, rescue):
                self.flow.tried.append(node)
                try:
                    self.start(node, cut=primary.cut, hedge=True)
                except LbError as exc:
                    log.debug("hedge on %s not sent: %s", node.name, exc)
                return
        at = dispatcher.hedge_check(self.call, primary.node, primary.start, self.p95_at, now)
        if at is not None:
            self.arm(at)

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
            self.flow.node = att.node
            self.out.set_result(fut.result())
        elif not pending:
            self.flow.node = att.node
            if exc is not None:
                self.out.set_exception(exc)
            else:
                self.out.set_result(fut.result())

    def _closed(self, _out: asyncio.Future[A]) -> None:
        if self.timer is not None:
            self.timer.cancel()
        for att in self.atts:
            if not att.fut.done():
                att.fut.cancel()


class Flow:
    """The dispatch state of one call across its attempts (`Dispatcher.open`)."""

    __slots__ = ("answered", "cut", "error", "n", "node", "tried")

    def __init__(self) -> None:
        self.tried: list[Node] = []
        self.n = 0                                   # attempts started (not hedges)
        self.node: Node | None = None                # of the attempt in progress
        self.cut = False                             # it runs under a per-try timeout
        self.error: LbError | None = None            # the last attempt without an answer
        self.answered: tuple[Any, Node] | None = None    # the last answer, with its node


class Dispatcher:
    """Pick → attempt (→ hedge) → retry, for calls of both fronts."""

    def __init__(self, cfg: Config, pool: NodePool) -> None:
        self.pool = pool
        self.cfg = cfg
        up = cfg.upstream
        self.budget = RetryBudget(ratio=up.retry_budget_ratio, min_per_s=up.retry_min_per_s)
        self.hedging = HedgePolicy(cfg.hedge)
        self.on_settle: Callable[[], None] | None = None    # the batcher's capacity hook
        self.hedge_on = cfg.hedge.enabled
        self._tries = 1 + up.retries
        self._try_limit = up.try_timeout_s or math.inf
        self.loop: Any = None               # the running loop, cached by open()

    def running_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, looked up once: on 3.11 get_running_loop() makes a
        getpid() syscall each time, which shows on the hot path."""
        loop: asyncio.AbstractEventLoop | None = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        return loop

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        self._tries = 1 + cfg.upstream.retries
        self._try_limit = cfg.upstream.try_timeout_s or math.inf
        self.budget.ratio = cfg.upstream.retry_budget_ratio
        self.budget.min_per_s = cfg.upstream.retry_min_per_s
        self.hedging.reconfigure(cfg.hedge)
        self.hedge_on = cfg.hedge.enabled

    def open(self, call: Call) -> Flow:
        """Begin dispatching `call`: its deposits to the retry and hedge budgets."""
        if self.loop is None:
            self.running_loop()
        now = time.monotonic()
        self.budget.deposit(now)
        if self.hedge_on:
            self.hedging.deposit(now)
        return Flow()

    def attempt(self, flow: Flow, call: Call, transport: Transport[A],
                then: Callable[[asyncio.Future[A]], object] | None = None,
                ) -> asyncio.Future[A] | None:
        """Start the next attempt of `flow` without an await (pick → attempt, with a hedge
        armed when the node has a p95); None when no attempt is left (deadline, retries,
        retry budget, nodes). The future settles with the node's answer (`flow.node`
        says whose) or fails with `UpstreamError`; `then(future)` is called once it
        has, after the node's books are closed (for REST from inside the I/O callback:
        no loop round trip)."""
        now = time.monotonic()
        left = call.deadline.at - now
        if flow.n >= self._tries or left <= 0 or (flow.n and not self.budget.try_spend(now)):
            return None
        node = self.pool.pick(call.units, flow.tried, call.model, call.version,
                              explicit=call.pinned, usable=transport.usable, group=call.group)
        if node is None:
            return None
        flow.tried.append(node)
        flow.n += 1
        flow.node = node
        try_s = min(left, self._try_limit)
        flow.cut = try_s < left
        p95 = self._hedge_p95(call, node) if self.hedge_on else None
        if p95 is None:                     # the common case: one attempt, no extra future
            return _Attempt(self, node, call, transport, try_s, flow.cut, False, then).fut
        race: _Race[A] = _Race(self, call, transport, flow, now + try_s, now + p95)
        if then is not None:
            race.out.add_done_callback(then)
        race.start(node, flow.cut)
        at = self.hedge_check(call, node, now, now + p95, now)
        if at is not None:
            race.arm(at)
        return race.out

    def outcome(self, flow: Flow, fut: asyncio.Future[A],
                transport: Transport[A]) -> tuple[A, Node] | None:
        """After an attempt's future is done: the final answer and its node, or None
        when another attempt is worth it (no answer, or an answer that says retry)."""
        node = flow.node
        assert node is not None
        exc = fut.exception()
        if exc is not None:
            if not isinstance(exc, UpstreamError):
                raise exc
            log.warning("attempt on %s failed: %s", node.name, exc)
            flow.error = exc
            return None
        answer = fut.result()
        flow.answered = (answer, node)
        return None if transport.verdict(answer, flow.cut).retry else flow.answered

    def finish(self, flow: Flow, call: Call) -> tuple[Any, Node]:
        """No attempt is left: the last answer if a node gave one, else the error."""
        if flow.answered is not None:
            return flow.answered
        if call.deadline.at - time.monotonic() <= CLOCK_SLACK_S:
            raise DeadlineExceeded("Deadline exceeded") from flow.error
        if flow.error is None:
            raise Unavailable("no node available")
        raise Unavailable(str(flow.error)) from flow.error

    async def send(self, call: Call, transport: Transport[A],
                   flow: Flow | None = None) -> tuple[A, Node]:
        """The answer to `call` from the first node that gives a usable one (see the
        module docstring); raises DeadlineExceeded or Unavailable when none did.
        With `flow`, it continues a dispatch whose first attempts ran without it."""
        if flow is None:
            flow = self.open(call)
        while (fut := self.attempt(flow, call, transport)) is not None:
            with contextlib.suppress(UpstreamError):   # outcome() reads it off the future
                await fut
            done = self.outcome(flow, fut, transport)
            if done is not None:
                return done
        return self.finish(flow, call)

    def _hedge_p95(self, call: Call, node: Node) -> float | None:
        """The hedge delay of `call` on `node` (its p95 for the model), None: no hedging."""
        if (not self.hedging.cfg.enabled or not call.idempotent
                or not self.cfg.model(call.model).hedge):
            return None
        return self.hedging.delay(node.name, call.model)

    def hedge_check(self, call: Call, node: Node, start: float, p95_at: float,
                    now: float) -> float | None:
        """When to look at a hedge for `call`, which started on `node` at `start`: the
        first of its p95, the moment it counts as stalled itself, and the moment its
        node does (by the node's oldest request in flight, which may be much older:
        a stall is rescued from its start, not one threshold per request); past all
        of those, every threshold while it waits. None while τ is unknown and the
        p95 has passed."""
        stalled = self.stall_delay(call, node)
        moments = [p95_at] if p95_at > now else []
        if stalled is not None:
            moments.append(start + stalled + 0.001)     # strictly past the threshold
        node_at = self.stall_at(node)
        if node_at is not None:
            moments.append(node_at + 0.001)
        later = [t for t in moments if t > now]
        if later:
            return min(later)
        return None if stalled is None else now + stalled

    def stall_delay(self, call: Call, node: Node) -> float | None:
        """Seconds after which `call` counts as stalled on `node` (`policy.stall_factor`
        × τ × units, at least `hedge.min_delay_ms`); None while τ is unknown."""
        return self._threshold(node, call.units)

    def stall_at(self, node: Node) -> float | None:
        """When `node` counts as stalled for a rescue (time.monotonic()): it has answered
        nothing for `policy.stall_factor` × τ × the units of its oldest request in
        flight, since that request started. (Old requests alone are not a stall: a
        busy node queues, and answers its queue one after the other.) None while τ
        is unknown or nothing with units is in flight."""
        oldest = node.oldest(time.monotonic())
        if oldest is None:
            return None
        threshold = self._threshold(node, oldest[1])
        if threshold is None:
            return None
        return max(oldest[0], node.answered_at) + threshold

    def stalled(self, node: Node, now: float) -> bool:
        at = self.stall_at(node)
        return at is not None and at <= now

    def _threshold(self, node: Node, units: float) -> float | None:
        tau = node.tau.value
        if tau is None or units <= 0:
            return None
        return max(self.cfg.policy.stall_factor * tau * units,
                   self.hedging.cfg.min_delay_ms / 1000.0)

    def hedge_target(self, call: Call, transport: Transport[Any], tried: list[Node],
                     primary: Node) -> Node | None:
        """The best other node for a hedge: available (not ejected), below its in-flight
        cap, not tried yet, and expected to finish sooner than what is left on the
        primary (its score for the request is below the primary's score now, which
        counts the primary's stall from the age of its oldest request); None when
        there is none. A copy sent to a node that is no better would only add load
        where queues are already long. The caller spends the hedge budget."""
        node = self.pool.pick(call.units, tried, call.model, call.version,
                              explicit=call.pinned, usable=transport.usable,
                              spare=self.cfg.upstream.pool_size, group=call.group)
        if node is None:
            return None
        there = self.pool.scores(call.units, node)[0]
        here = self.pool.scores(0.0, primary)[0]
        if there >= here:
            self.hedging.no_better += 1
            return None
        return node

    def passive(self, node: Node, ok: bool, now: float) -> None:
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
