"""Sending calls to nodes through the proxy's queue: one entry with a continuation.

Called by the core (`send`, awaitable) and by the REST front's direct path
(`dispatch(call, transport, then)`: `then(job)` runs once the call has its
final answer or error, from the node connection's I/O callback that ended
it — no Task). Both fronts, retries, hedges and batches go through the one
queue and the same slots of `lb.request.scheduler`; this module does the I/O the
scheduler decides: it starts attempts through the front's `Transport`,
times hedges and rescues, retries, and fans batches out and back in.

A call's life (`Job`):
1. a `Ticket` is submitted: the scheduler starts it on a node with a free
   slot (`Job.start`), queues it, or refuses it (`Job.refused`: 503 +
   Retry-After when overloaded, `NotReady` when no node has its model after
   `limits.queue_timeout_s`, 504 past the deadline);
2. the attempt's answer settles the slot (`Scheduler.finished`; `cancelled`
   keeps it as a ghost); a final answer (or an error the node is not to blame
   for) ends the job; an answer that says retry (no answer, 503/429, a
   per-try timeout) submits the ticket again with the node excluded, while
   `upstream.retries`, the retry budget and the deadline allow — a refusal
   (REST 503, gRPC UNAVAILABLE: the node does not serve the model now) costs
   no try and no budget, each node being tried once per call;
3. hedges: at the node's p95 for the model (opt-in, `hedge.enabled`), and
   rescues (on by default, `hedge.rescue`): a sweep every `RESCUE_SWEEP_S`
   copies the attempts of a node that counts as stalled (silent for
   `policy.stall_factor` × τ × units) to a free slot elsewhere. Both draw on
   one budget (`hedge.max_ratio`); the first good answer wins and the other
   attempt is cancelled (its slot stays a ghost until the node answers).
Batches (`lb.request.batching`): the scheduler hands a run with several tickets to
the first one's job, which merges them, sends one attempt and splits the
answer back.

Guarantees: `then` is called exactly once per job (answer, error, or the
client leaving); every attempt's slot is returned through the scheduler
whatever ends it; no Task is created here; every timer is one loop timer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Final

from lb.config import Config
from lb.errors import (
    DeadlineExceeded,
    LbError,
    Unavailable,
    UpstreamError,
    UpstreamRefused,
)
from lb.pool.nodes import Node, NodePool
from lb.request import batching
from lb.request.call import Call, Transport
from lb.request.directives import PRIORITIES
from lb.request.hedge import HedgePolicy
from lb.request.retry import RetryBudget
from lb.request.scheduler import Run, Scheduler, Settings, Ticket
from lb.status import Verdict

log = logging.getLogger("lb.request.dispatch")
# Node clients time attempts on the loop's clock, which uvloop keeps in whole
# milliseconds and reads once per iteration: an attempt that the call's deadline
# cut can end a little before that deadline by time.monotonic(). It is still the
# deadline that ended it (504), not a lack of nodes (503).
CLOCK_SLACK_S: Final = 0.01
RESCUE_SWEEP_S: Final = 0.005   # how often attempts in flight are checked for a stall


def settings(cfg: Config) -> Settings:
    """What the scheduler reads of the config."""
    pcfg = cfg.policy
    return Settings(target_s=pcfg.queue.target_ms / 1000.0,
                    interval_s=pcfg.queue.interval_ms / 1000.0, lifo=pcfg.queue.lifo,
                    queue_timeout_s=cfg.limits.queue_timeout_s, tie_band=pcfg.tie_band,
                    relax_s=pcfg.tau_relax_s, stall_factor=pcfg.stall_factor,
                    early=pcfg.name != "least_load", prefetch=pcfg.concurrency.prefetch)


class Job:
    """One call's dispatch across its attempts (see the module docstring)."""

    __slots__ = ("answered", "call", "cancelled", "cut", "dispatcher", "done", "error",
                 "n", "node", "refusals", "result", "runs", "then", "ticket", "timer",
                 "transport", "tried")

    def __init__(self, dispatcher: Dispatcher, call: Call, transport: Transport[Any],
                 then: Callable[[Job], object]) -> None:
        self.dispatcher = dispatcher
        self.call = call
        self.transport = transport
        self.then = then
        self.tried: list[Node] = []
        self.n = 0                  # attempts started (not hedges, not refused ones)
        self.refusals = 0
        self.runs: list[Run] = []   # attempts in flight: the first, and a hedge
        self.answered: tuple[Any, Node] | None = None   # the last answer that said retry
        self.error: LbError | None = None               # the last attempt without one
        self.result: tuple[Any, Node] | None = None     # the final answer
        self.node: Node | None = None                   # of the last attempt
        self.done = False
        self.cancelled = False
        self.cut = False
        self.timer: asyncio.TimerHandle | None = None   # the p95 hedge
        self.ticket = dispatcher.ticket(self)

    # -- what the front reads ------------------------------------------------------------

    def outcome(self) -> tuple[Any, Node]:
        """The final answer and the node that gave it; raises the job's error."""
        if self.result is not None:
            return self.result
        assert self.error is not None
        raise self.error

    def cancel(self) -> None:
        """The client left: leave the queue, cancel what runs, then `then` (once)."""
        if self.done:
            return
        self.cancelled = True
        self.dispatcher.scheduler.withdraw(self.ticket)
        self._end()

    # -- the scheduler's decisions ---------------------------------------------------------

    def start(self, run: Run) -> None:
        """A slot: send the attempt (a batch's first ticket gets the whole batch)."""
        if self.ticket.batch is not None:
            self.dispatcher.batches.count(run, run.started)
        if len(run.tickets) > 1:
            batching.start(self.dispatcher, run)
            return
        self.attempt(run, hedge=False)

    def refused(self, ticket: Ticket, error: LbError) -> None:
        """The scheduler turned the ticket away: overloaded, held too long, deadline,
        or no node to send it to (then: the last answer if a node gave one)."""
        if self.done:
            return
        if isinstance(error, NoNode):
            self._give_up()
            return
        self.error = error
        self._end()

    # -- attempts ----------------------------------------------------------------------

    def attempt(self, run: Run, hedge: bool) -> None:
        dispatcher = self.dispatcher
        call = self.call
        now = time.monotonic()
        left = call.deadline.at - now
        try_s = min(left, dispatcher.try_limit)
        if not hedge:
            self.n += 1
            self.cut = try_s < left
            self.node = run.node
        self.tried.append(run.node)
        self.runs.append(run)
        try:
            run.fut = self.transport.send(run.node, call, try_s,
                                          functools.partial(self.landed, run))
        except LbError as exc:
            self.runs.remove(run)
            dispatcher.scheduler.finished(run, now, 0.0, ok=False, sample=False)
            self._failed(exc, False)
            return
        if not hedge and dispatcher.hedge_on:
            dispatcher.arm_hedge(self, run, now)
        dispatcher.watch(now)

    def landed(self, run: Run, fut: asyncio.Future[Any]) -> None:
        """An attempt ended (from the transport's I/O callback): return its slot, then
        decide: the answer, a retry, or wait for the other attempt in flight."""
        dispatcher = self.dispatcher
        now = time.monotonic()
        elapsed = now - run.started
        node = run.node
        if run in self.runs:
            self.runs.remove(run)
        if fut.cancelled():
            dispatcher.scheduler.cancelled(run, now, elapsed)
            dispatcher.kick(now)
            return
        raised = fut.exception()
        if raised is not None:
            exc, refused = dispatcher.raised(run, raised, self.call.model, now, elapsed)
            dispatcher.kick(now)
            if not self.done:
                self._failed(exc, refused)
            return
        answer = fut.result()
        verdict = self.transport.verdict(answer, self.cut)
        dispatcher.answered(run, verdict, self.call.model, now, elapsed)
        if verdict.good and dispatcher.hedge_on:
            dispatcher.hedging.observe(node.name, self.call.model, elapsed)
        dispatcher.kick(now)
        if self.done:
            return
        if not verdict.retry:
            if run.hedge:
                dispatcher.hedging.won += 1
            self.result = (answer, node)
            self._end()
            return
        if not verdict.refused:
            self.answered = (answer, node)
        if not self.runs:
            self._next(verdict.refused)

    def _failed(self, exc: LbError, refused: bool) -> None:
        log.warning("attempt on %s failed: %s", self.tried[-1].name if self.tried else "-", exc)
        self.error = exc
        if not self.runs:
            self._next(refused)

    def _next(self, refused: bool) -> None:
        """The last attempt said retry: submit again, or give up."""
        if refused:                 # the node does not serve the model: free
            self.n -= 1
            self.refusals += 1
        dispatcher = self.dispatcher
        now = time.monotonic()
        if (self.n >= dispatcher.tries or self.call.deadline.at - now <= 0
                or (self.n and not dispatcher.budget.try_spend(now))):
            self._give_up()
            return
        dispatcher.submit(self, now)

    def _give_up(self) -> None:
        """No attempt is left: the last answer if a node gave one, else the error."""
        error: LbError
        if self.answered is not None:
            self.result = self.answered
        elif self.call.deadline.at - time.monotonic() <= CLOCK_SLACK_S:
            error = DeadlineExceeded("Deadline exceeded")
            error.__cause__ = self.error
            self.error = error
        elif self.error is None:
            self.error = Unavailable(f"no node available for model {self.call.model}")
        else:
            error = Unavailable(str(self.error))
            error.__cause__ = self.error
            self.error = error
        self._end()

    def _end(self) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for run in list(self.runs):         # a batch goes on for its other members
            if run.fut is not None and not run.fut.done() and len(run.tickets) == 1:
                run.fut.cancel()
        self.then(self)

    # -- hedges --------------------------------------------------------------------------

    def hedge(self, rescue: bool) -> bool:
        """Send a copy of the attempt in flight to a free slot elsewhere, from the hedge
        budget; True when one went."""
        dispatcher = self.dispatcher
        if self.done or len(self.runs) != 1 or self.runs[0].hedged:
            return False
        primary = self.runs[0]
        now = time.monotonic()
        beat = math.inf if rescue else dispatcher.remaining(primary, now)
        node = dispatcher.scheduler.hedge_node(self.ticket, now, beat)
        if node is None:
            dispatcher.hedging.no_better += 1
            return False
        if not dispatcher.hedging.spend(now, rescue):
            return False
        primary.hedged = True
        self.attempt(dispatcher.scheduler.grant(self.ticket, node, now), hedge=True)
        return True


def _wake(fut: asyncio.Future[None], _job: Job) -> None:
    if not fut.done():
        fut.set_result(None)


class NoNode(Unavailable):
    """The scheduler found no node a ticket may go to, and none that will have its model:
    the job answers with the last node's answer if there was one."""


class Dispatcher:
    """The queue's I/O side for calls of both fronts (see the module docstring)."""

    def __init__(self, cfg: Config, pool: NodePool) -> None:
        self.pool = pool
        self.cfg = cfg
        self.scheduler = Scheduler(pool, settings(cfg))
        self.scheduler.no_node = NoNode
        pool.on_change = self.wake      # the one consumer of the pool's changes
        up = cfg.upstream
        self.budget = RetryBudget(ratio=up.retry_budget_ratio, min_per_s=up.retry_min_per_s)
        self.hedging = HedgePolicy(cfg.hedge)
        self.batches = batching.Batches()
        self.hedge_on = cfg.hedge.enabled
        self.rescue_on = cfg.hedge.rescue
        self.tries = 1 + up.retries
        self.try_limit = up.try_timeout_s or math.inf
        self.loop: Any = None               # the running loop, cached by dispatch()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._sweep: asyncio.TimerHandle | None = None

    def running_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, looked up once: on 3.11 get_running_loop() makes a
        getpid() syscall each time, which shows on the hot path."""
        loop: asyncio.AbstractEventLoop | None = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        return loop

    def reconfigure(self, cfg: Config) -> None:
        self.cfg = cfg
        self.tries = 1 + cfg.upstream.retries
        self.try_limit = cfg.upstream.try_timeout_s or math.inf
        self.budget.ratio = cfg.upstream.retry_budget_ratio
        self.budget.min_per_s = cfg.upstream.retry_min_per_s
        self.hedging.reconfigure(cfg.hedge)
        self.hedge_on = cfg.hedge.enabled
        self.rescue_on = cfg.hedge.rescue
        self.scheduler.settings = settings(cfg)
        self.kick(time.monotonic())

    # -- entry ---------------------------------------------------------------------------

    def dispatch(self, call: Call, transport: Transport[Any],
                 then: Callable[[Job], object]) -> Job:
        """Start dispatching `call`; `then(job)` once it is answered, failed or cancelled
        (possibly before this returns, for a call refused at once)."""
        if self.loop is None:
            self.running_loop()
        now = time.monotonic()
        self.budget.deposit(now)
        if self.hedge_on or self.rescue_on:
            self.hedging.deposit(now)
        job = Job(self, call, transport, then)
        self.submit(job, now)
        return job

    async def send(self, call: Call, transport: Transport[Any]) -> tuple[Any, Node]:
        """The answer to `call` and the node that gave it; raises what `dispatch` ends
        with (see the module docstring). Cancelling the caller cancels the job."""
        fut: asyncio.Future[None] = self.running_loop().create_future()
        job = self.dispatch(call, transport, functools.partial(_wake, fut))
        try:
            await fut
        except asyncio.CancelledError:
            job.cancel()
            raise
        return job.outcome()

    def ticket(self, job: Job) -> Ticket:
        """The scheduler's view of `job`'s call."""
        call = job.call
        cfg = self.cfg.model(call.model)
        ticket = Ticket(call.model, call.version, call.units, call.rows, call.deadline.at,
                        job.start, job.refused, explicit=call.pinned,
                        priority=max(PRIORITIES[cfg.priority], call.priority),
                        usable=job.transport.usable, group=call.group, payload=job)
        ticket.exclude = job.tried
        if cfg.batching is not None and job.transport.codec is not None:
            ticket.batch = job.transport.codec.group(call)
            ticket.max_rows = cfg.batching.max_rows
        return ticket

    def submit(self, job: Job, now: float) -> None:
        self.scheduler.submit(job.ticket, now)
        if self.scheduler.wake_at < self._timer_at:
            self._arm(self.scheduler.wake_at)

    def kick(self, now: float) -> None:
        """Slots may have freed or the pool changed: the scheduler's timer may be due
        sooner (tickets waiting, a queue standing)."""
        if self.scheduler.wake_at < self._timer_at:
            self._arm(self.scheduler.wake_at)

    def wake(self) -> None:
        """The pool changed (a probe, a reload, a readmission): waiting tickets may go.
        Called by `NodePool.changed`."""
        if self.loop is None:
            return                      # nothing was dispatched yet: nothing waits
        now = time.monotonic()
        self.scheduler.wake(now)
        self.kick(now)

    # -- timers --------------------------------------------------------------------------

    def _arm(self, at: float) -> None:
        loop = self.loop
        if loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_later(max(at - time.monotonic(), 0.0), self._expire)

    def _expire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        due = self.scheduler.expire(time.monotonic())
        if due is not None:
            self._arm(max(due, time.monotonic() + 0.001))

    def watch(self, now: float) -> None:
        """An attempt started: sweep for stalled nodes while attempts are in flight."""
        if self.rescue_on and self._sweep is None and self.loop is not None:
            self._sweep = self.loop.call_later(RESCUE_SWEEP_S, self._rescue)

    def _rescue(self) -> None:
        """Copy the attempts of each node that counts as stalled to free slots elsewhere
        (oldest first), while the hedge budget allows; sweep again while any run."""
        self._sweep = None
        now = time.monotonic()
        busy = False
        for node in list(self.pool.nodes.values()):
            if not node.inflight:
                continue
            busy = True
            if not self.stalled(node, now):
                continue
            for flight in list(node.flights):
                run = flight.owner
                if (flight.until != math.inf or not isinstance(run, Run) or run.hedged
                        or run.hedge or len(run.tickets) != 1):
                    continue
                job = run.tickets[0].payload
                if (isinstance(job, Job) and not job.done and len(job.runs) == 1
                        and self.cfg.model(job.call.model).hedge
                        and not job.hedge(rescue=True)):
                    break               # no slot or no budget: none for the next either
        if busy:
            self.watch(now)

    def arm_hedge(self, job: Job, run: Run, now: float) -> None:
        """A p95 hedge for `job`'s first attempt, when hedging is on and the node has a p95."""
        call = job.call
        if job.timer is not None or not self.cfg.model(call.model).hedge:
            return
        delay = self.hedging.delay(run.node.name, call.model)
        if delay is not None and self.loop is not None:
            job.timer = self.loop.call_later(delay, self._hedge_due, job)

    def _hedge_due(self, job: Job) -> None:
        job.timer = None
        job.hedge(rescue=False)

    # -- stalls ----------------------------------------------------------------------------

    def stall_at(self, node: Node) -> float | None:
        """When `node` counts as stalled (time.monotonic()): it has answered nothing for
        `policy.stall_factor` × τ × the units of its oldest request in flight, since
        that request started. None while τ is unknown or nothing is in flight."""
        oldest = node.oldest(time.monotonic())
        if oldest is None or oldest.units <= 0:
            return None
        run = oldest.owner
        tau = node.taus.get(run.key) if isinstance(run, Run) else None
        value = tau.value if tau is not None else node.tau.value
        if value is None:
            return None
        threshold = max(self.cfg.policy.stall_factor * value * oldest.units,
                        self.hedging.cfg.min_delay_ms / 1000.0)
        return max(oldest.start, node.answered_at) + threshold

    def stalled(self, node: Node, now: float) -> bool:
        at = self.stall_at(node)
        return at is not None and at <= now

    def remaining(self, run: Run, now: float) -> float:
        """What is left, expected, of `run` on its node: its τ × units minus its age (a
        p95 hedge must beat it)."""
        tau = run.node.taus.get(run.key)
        expect = (tau.value if tau is not None and tau.value is not None else 0.0) * run.units
        return max(expect - (now - run.started), 0.0)

    def raised(self, run: Run, exc: BaseException, model: str, now: float,
               elapsed: float) -> tuple[LbError, bool]:
        """`run`'s attempt raised (no answer; called by `Job.landed` and a batch's
        `landed`): its slot frees, it counts against the node, and a refusal takes the
        node out of `model`'s set. Returns the error as an `LbError` and whether it was
        a refusal (which costs no try). The caller kicks the timer."""
        node = run.node
        self.scheduler.finished(run, now, elapsed, ok=False, sample=False)
        self.passive(node, False, now)
        refused = isinstance(exc, UpstreamRefused)
        if refused:
            self.pool.refused(node, model)
        if isinstance(exc, LbError):
            return exc, refused
        log.error("attempt on %s raised %r", node.name, exc)
        return UpstreamError(node.name, repr(exc)), refused

    def answered(self, run: Run, verdict: Verdict, model: str, now: float,
                 elapsed: float) -> None:
        """`run`'s attempt got an answer the transport judged `verdict` (same callers):
        its slot frees with the verdict's sample, passive outlier detection sees it, and
        a refusal takes the node out of `model`'s set. The caller kicks the timer."""
        node = run.node
        self.scheduler.finished(run, now, elapsed, ok=verdict.node_ok, sample=verdict.good)
        if not verdict.node_ok or node.outlier.failures:
            self.passive(node, verdict.node_ok, now)
        if verdict.refused:
            self.pool.refused(node, model)

    def passive(self, node: Node, ok: bool, now: float) -> None:
        """Passive outlier detection after each attempt."""
        if node.outlier.record(ok, now, self.pool.outlier):
            node.healthy = False        # back only after the back-off and a good probe
            log.warning("node %s ejected until +%.1fs after %d consecutive failures",
                        node.name, node.outlier.ejected_until - now,
                        self.pool.outlier.consecutive_errors)

    def stats(self) -> dict[str, Any]:
        now = time.monotonic()
        queue: dict[str, Any] = {**self.scheduler.stats.as_dict(),
                                 "waiting": self.scheduler.queue_lengths(),
                                 "standing": self.scheduler.standing()}
        return {"retries": self.budget.retries, "budget_rejections": self.budget.rejected,
                "hedge": self.hedging.stats(now), "queue": queue}

    async def close(self) -> None:
        """Stop the timers (at shutdown, after the fronts stopped)."""
        for timer in (self._timer, self._sweep):
            if timer is not None:
                timer.cancel()
        self._timer = self._sweep = None
