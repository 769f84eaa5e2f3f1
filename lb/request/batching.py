"""Micro-batching in the proxy's queue: compatible predicts leave together, one attempt.

Called by `lb.request.dispatch`: `start` when the scheduler (`lb.request.scheduler`) hands
one run several tickets (`Ticket.batch`, `max_rows`); `Batches.count` for
every run of a batching model, alone or not. The fronts' codecs
(`lb.rest.batch`, `lb.grpc.batch`) say which calls may share a group (same
model, resolved version, signature and output filter, inputs of equal shapes
and kinds apart from the batch dimension), merge them and split the answer.

When a batch goes (what we took from BentoML's adaptive batching, Triton's
dynamic batcher and TF Serving's `batching_parameters`): Triton and TF
Serving wait up to a fixed delay for a batch to fill, which costs that delay
at low load. Here there is no timer at all: a request that finds a free slot
on a node goes at once, alone; while every slot is busy the queue grows, and
when a slot frees the waiting compatible requests leave together, up to
`max_rows` rows. At high load batches grow by themselves, and the number of
batches in flight per node is the node's learned concurrency
(`lb.pool.concurrency`), not a guess.

Failure isolation: the codec never groups requests whose shapes or kinds
differ; a batch the node answers with a 4xx (one member's bad row) or with an
answer that cannot be split is resent member by member (counted as resends),
each alone; a batch that gets no answer, or one that says retry, is retried
member by member with the node excluded, within each member's own tries,
budget and deadline; a member whose client leaves is simply not answered,
the batch goes on for the others.

Guarantees: every member's job ends exactly once (`lb.request.dispatch.Job`); one
attempt per batch; per model counters for `/stats` and `/metrics`.
"""

from __future__ import annotations

import bisect
import functools
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from lb.errors import LbError
from lb.request.call import Call
from lb.request.scheduler import Run

if TYPE_CHECKING:
    import asyncio

    from lb.request.dispatch import Dispatcher, Job

A = TypeVar("A")
ROW_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
MAX_MODELS: Final = 256


class BatchCodec(Protocol[A]):
    """How one front groups, merges and splits its calls (`lb.rest.batch`, `lb.grpc.batch`)."""

    def group(self, call: Call) -> Hashable | None:
        """The group a call may be batched in; None: it goes alone."""
        ...

    def merge(self, calls: list[Call]) -> Call:
        """One call carrying every member's rows, in order."""
        ...

    def split(self, answer: A, calls: list[Call]) -> list[A] | None:
        """One answer per member, in order; None when the answer cannot be split."""
        ...


class BatchStats:
    """Per model: batches, rows per batch (histogram), waits, resends."""

    __slots__ = ("batches", "members", "resends", "row_buckets", "rows", "wait_s")

    def __init__(self) -> None:
        self.batches = 0
        self.rows = 0
        self.members = 0
        self.wait_s = 0.0
        self.resends = 0
        self.row_buckets = [0] * (len(ROW_BUCKETS) + 1)

    def as_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "rows": self.rows, "members": self.members,
                "rows_per_batch": round(self.rows / self.batches, 3) if self.batches else 0.0,
                "wait_ms_avg": round(1000 * self.wait_s / self.members, 3)
                if self.members else 0.0,
                "resends": self.resends,
                "rows_histogram": dict(zip([*map(str, ROW_BUCKETS), "+Inf"],
                                           self.row_buckets, strict=True))}


class Batches:
    """The batch counters of one proxy process, per model (bounded)."""

    __slots__ = ("stats",)

    def __init__(self) -> None:
        self.stats: dict[str, BatchStats] = {}

    def count(self, run: Run, now: float) -> None:
        """A run of a batching model left the queue (alone or with others)."""
        model = run.tickets[0].model
        stats = self.stats.get(model)
        if stats is None:
            stats = self.stats.setdefault(model if len(self.stats) < MAX_MODELS else "(other)",
                                          BatchStats())
        stats.batches += 1
        stats.rows += run.rows
        stats.members += len(run.tickets)
        for ticket in run.tickets:
            stats.wait_s += now - (ticket.arrived or now)
        stats.row_buckets[bisect.bisect_left(ROW_BUCKETS, run.rows)] += 1

    def resent(self, model: str, members: int) -> None:
        stats = self.stats.get(model)
        if stats is not None:
            stats.resends += members

    def as_dict(self) -> dict[str, Any]:
        return {model: s.as_dict() for model, s in self.stats.items()}


def start(dispatcher: Dispatcher, run: Run) -> None:
    """The scheduler gave `run` several tickets: merge their calls into one attempt."""
    jobs: list[Job] = [t.payload for t in run.tickets]
    live = [job for job in jobs if not job.done]
    if not live:
        dispatcher.scheduler.finished(run, time.monotonic(), 0.0, ok=True, sample=False)
        return
    if len(live) == 1:
        live[0].attempt(run, hedge=False)
        return
    Batch(dispatcher, run, live).send()


class Batch:
    """One merged attempt for several jobs; its answer split back (module docstring)."""

    __slots__ = ("call", "dispatcher", "jobs", "run")

    def __init__(self, dispatcher: Dispatcher, run: Run, jobs: list[Job]) -> None:
        self.dispatcher = dispatcher
        self.run = run
        self.jobs = jobs
        self.call: Call = jobs[0].transport.codec.merge([job.call for job in jobs])

    def send(self) -> None:
        run, node = self.run, self.run.node
        now = time.monotonic()
        try_s = min(min(job.call.deadline.at for job in self.jobs) - now,
                    self.dispatcher.try_limit)
        for job in self.jobs:
            job.n += 1
            job.tried.append(node)
            job.node = node
            job.runs.append(run)
        transport = self.jobs[0].transport
        try:
            run.fut = transport.send(node, self.call, try_s, functools.partial(self.landed))
        except LbError as exc:
            self.dispatcher.scheduler.finished(run, now, 0.0, ok=False, sample=False)
            self._retry(exc, False)

    def landed(self, fut: asyncio.Future[Any]) -> None:
        dispatcher, run, node = self.dispatcher, self.run, self.run.node
        now = time.monotonic()
        elapsed = now - run.started
        for job in self.jobs:
            if run in job.runs:
                job.runs.remove(run)
        if fut.cancelled():
            dispatcher.scheduler.cancelled(run, now, elapsed)
            dispatcher.kick(now)
            return
        raised = fut.exception()
        if raised is not None:
            exc, refused = dispatcher.raised(run, raised, self.call.model, now, elapsed)
            dispatcher.kick(now)
            self._retry(exc, refused)
            return
        transport = self.jobs[0].transport
        answer = fut.result()
        verdict = transport.verdict(answer, False)
        dispatcher.answered(run, verdict, self.call.model, now, elapsed)
        dispatcher.kick(now)
        live = [job for job in self.jobs if not job.done]
        parts = (transport.codec.split(answer, [job.call for job in live])
                 if verdict.good and live else None)
        if parts is not None:
            for job, part in zip(live, parts, strict=True):
                job.result = (part, node)
                job._end()
        elif verdict.good or (verdict.node_ok and not verdict.retry):
            self._resend(live)          # a 4xx, or an answer that cannot be split
        elif verdict.retry:
            for job in live:
                if not verdict.refused:
                    job.answered = (answer, node)
                if not job.runs:
                    job._next(verdict.refused)
        else:                           # a 5xx the node will not get over by a retry
            for job in live:
                job.result = (answer, node)
                job._end()

    def _retry(self, exc: LbError, refused: bool) -> None:
        for job in self.jobs:
            if not job.done:
                job.error = exc
                if not job.runs:
                    job._next(refused)

    def _resend(self, live: list[Job]) -> None:
        """Each member on its own, so that one bad row fails only its own request."""
        if not live:
            return
        self.dispatcher.batches.resent(live[0].call.model, len(live))
        now = time.monotonic()
        for job in live:
            job.n -= 1                  # the batch's attempt was not this member's
            job.tried.remove(self.run.node)
            job.ticket.batch = None     # alone this time
            self.dispatcher.submit(job, now)
