"""Proxy-side adaptive micro-batching: concurrent single-model predicts, one call per node.

Called by `lb.core.Core.forward` for calls of models with `batching` in
their config whose front found a group for them (`BatchCodec.group`: same
model, resolved version, signature and output filter, inputs of equal shapes
and kinds apart from the batch dimension). Members of a group wait in a queue;
a batch is merged by the front's codec into one call (units = its rows),
dispatched like any call (`lb.dispatch`: policy, retries, hedges) and its
answer split back, in order, one answer per member in the format it asked for.

When a batch goes (what we took from BentoML's adaptive batching, Triton's
dynamic batcher and TF Serving's `batching_parameters`): Triton and TF
Serving wait up to a fixed `max_queue_delay_microseconds` /
`batch_timeout_micros` for a batch to fill, which costs that delay at low
load; BentoML adapts the wait to the observed load. Here the signal is the
nodes themselves: a batch goes at once when some node could take it now (fewer
than `ROOM` attempts in flight), so at low load every request goes alone with
no added wait; while every node is busy the queue grows, and the batch goes
when a node frees up (an attempt settles), when it reaches `max_rows` (Triton's
preferred size, TF Serving's `max_batch_size`) or at `max_delay_ms` after its
first member arrived — never later. At high load batches grow by themselves.

Failure isolation: the codec never groups requests whose shapes or kinds
differ; a batch the node answers with a 4xx (one member's bad row) is resent
member by member so each client gets its own answer (counted as resends); a
5xx or timeout is retried by the dispatcher within the earliest member
deadline; a member whose client leaves is dropped from its queue, or simply
not answered, without cancelling the batch for the others.

Guarantees: one Task per batch (not per member); every member gets exactly
one answer or error; per model counters for `/stats` and `/metrics`.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from lb.call import Call, Transport
from lb.config import BatchingConfig
from lb.dispatch import Dispatcher
from lb.nodes import Node, NodePool

log = logging.getLogger("lb.batch")
A = TypeVar("A")

ROOM = 2                       # attempts in flight below which a node "could take it now"
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
MAX_MODELS = 256


class BatchCodec(Protocol[A]):
    """How one front groups, merges and splits its calls (`lb.rest_batch`, `lb.grpc_batch`)."""

    def group(self, call: Call) -> Hashable | None:
        """The group a call may be batched in; None: it goes alone."""
        ...

    def merge(self, calls: list[Call]) -> Call:
        """One call carrying every member's rows, in order."""
        ...

    def split(self, answer: A, calls: list[Call]) -> list[A] | None:
        """One answer per member, in order; None when the answer cannot be split."""
        ...


@dataclass(slots=True)
class BatchStats:
    """Per model: batches, rows per batch (histogram), waits, resends."""

    batches: int = 0
    rows: int = 0
    members: int = 0
    wait_s: float = 0.0
    resends: int = 0
    row_buckets: list[int] = field(default_factory=lambda: [0] * (len(ROW_BUCKETS) + 1))

    def as_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "rows": self.rows, "members": self.members,
                "rows_per_batch": round(self.rows / self.batches, 3) if self.batches else 0.0,
                "wait_ms_avg": round(1000 * self.wait_s / self.members, 3)
                if self.members else 0.0,
                "resends": self.resends,
                "rows_histogram": dict(zip([*map(str, ROW_BUCKETS), "+Inf"],
                                           self.row_buckets, strict=True))}


@dataclass(slots=True)
class _Member:
    call: Call
    fut: asyncio.Future[tuple[Any, Node]]
    arrived: float


class _Queue(Generic[A]):
    """Members of one group waiting for a batch."""

    def __init__(self, key: Hashable, transport: Transport[A], codec: BatchCodec[A],
                 cfg: BatchingConfig) -> None:
        self.key = key
        self.transport = transport
        self.codec = codec
        self.cfg = cfg
        self.members: list[_Member] = []
        self.rows = 0
        self.timer: asyncio.TimerHandle | None = None


class Batcher:
    """The batch queues of one proxy process; see the module docstring."""

    def __init__(self, pool: NodePool, dispatcher: Dispatcher) -> None:
        self.pool = pool
        self.dispatcher = dispatcher
        self._queues: dict[Hashable, _Queue[Any]] = {}
        self._waiting: set[Hashable] = set()          # queues with members
        self._tasks: set[asyncio.Task[None]] = set()
        self._starting = 0                            # batches not yet handed to a node
        self.stats: dict[str, BatchStats] = {}

    async def submit(self, call: Call, transport: Transport[A], codec: BatchCodec[A],
                     key: Hashable, cfg: BatchingConfig) -> tuple[A, Node]:
        """The member's answer and the node that gave it (see the module docstring)."""
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(key, transport, codec, cfg)
        loop = self.dispatcher.running_loop()
        member = _Member(call, loop.create_future(), time.monotonic())
        queue.members.append(member)
        queue.rows += call.rows
        self._waiting.add(key)
        self.dispatcher.on_settle = self._capacity      # hooked only while members wait
        if queue.rows >= cfg.max_rows or self._room(transport):
            self._flush(queue)
        else:
            self._arm(queue)
        try:
            return await member.fut
        except asyncio.CancelledError:
            if member in queue.members:       # not sent yet: leave the queue
                queue.members.remove(member)
                queue.rows -= call.rows
            raise

    def _room(self, transport: Transport[Any]) -> bool:
        """Whether some node could take a batch now, counting batches on their way."""
        now = time.monotonic()
        usable = transport.usable
        free: int = sum(ROOM - n.inflight for n in self.pool
                        if n.inflight < ROOM and n.available(now)
                        and (usable is None or usable(n)))
        return free > self._starting

    def _capacity(self) -> None:
        """An attempt settled (a node may have room now): send what waits."""
        for key in list(self._waiting):
            queue = self._queues[key]
            if not queue.members:               # its members left (cancelled)
                self._waiting.discard(key)
            elif self._room(queue.transport):
                self._flush(queue)
        if not self._waiting:
            self.dispatcher.on_settle = None

    def _flush(self, queue: _Queue[Any], every: bool = False) -> None:
        """Send the oldest members as one batch (and more while full batches wait);
        with `every` (the max_delay_ms timer), send all of them. Members left wait for
        a node to free up, or until their own deadline: the first one's arrival plus
        max_delay_ms."""
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        while queue.members:
            batch: list[_Member] = []
            rows = 0
            while queue.members and (not batch or rows + queue.members[0].call.rows
                                     <= queue.cfg.max_rows):
                member = queue.members.pop(0)
                batch.append(member)
                rows += member.call.rows
            queue.rows -= rows
            self._start(queue, batch, rows)
            if not every and queue.rows < queue.cfg.max_rows:   # full batches go at once
                break
        if not queue.members:
            self._waiting.discard(queue.key)
            if not self._waiting:
                self.dispatcher.on_settle = None
            if len(self._queues) > 4 * MAX_MODELS:
                self._queues.pop(queue.key, None)
        else:
            self._arm(queue)

    def _arm(self, queue: _Queue[Any]) -> None:
        """The max_delay_ms timer of the queue's oldest member."""
        if queue.timer is None:
            loop = self.dispatcher.running_loop()
            due = queue.members[0].arrived + queue.cfg.max_delay_ms / 1000.0
            queue.timer = loop.call_at(loop.time() + max(due - time.monotonic(), 0.0),
                                       self._flush, queue, True)

    def _start(self, queue: _Queue[Any], batch: list[_Member], rows: int) -> None:
        now = time.monotonic()
        model = batch[0].call.model
        stats = self._stats(model)
        stats.batches += 1
        stats.rows += rows
        stats.members += len(batch)
        stats.wait_s += sum(now - m.arrived for m in batch)
        stats.row_buckets[bisect.bisect_left(ROW_BUCKETS, rows)] += 1
        self._starting += 1
        task = self.dispatcher.running_loop().create_task(self._send(queue, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _stats(self, model: str) -> BatchStats:
        stats = self.stats.get(model)
        if stats is None:
            stats = self.stats.setdefault(model if len(self.stats) < MAX_MODELS else "(other)",
                                          BatchStats())
        return stats

    async def _send(self, queue: _Queue[Any], batch: list[_Member]) -> None:
        self._starting -= 1           # dispatcher.send begins its attempt before it awaits
        live = [m for m in batch if not m.fut.done()]
        if not live:
            return
        try:
            if len(live) == 1:
                _settle(live[0], await self.dispatcher.send(live[0].call, queue.transport))
                return
            calls = [m.call for m in live]
            answer, node = await self.dispatcher.send(queue.codec.merge(calls), queue.transport)
            verdict = queue.transport.verdict(answer, False)
            parts = queue.codec.split(answer, calls) if verdict.good else None
            if parts is not None:
                for member, part in zip(live, parts, strict=True):
                    _settle(member, (part, node))
            elif verdict.node_ok and not verdict.retry:   # a 4xx or an unsplittable answer
                await self._resend(queue, live)
            else:                                         # a 5xx the retries did not cure
                for member in live:
                    _settle(member, (answer, node))
        except asyncio.CancelledError:
            for member in live:
                if not member.fut.done():
                    member.fut.cancel()
            raise
        except Exception as exc:
            for member in live:
                if not member.fut.done():
                    member.fut.set_exception(exc)
                    member.fut.exception()

    async def _resend(self, queue: _Queue[Any], live: list[_Member]) -> None:
        """Each member on its own, so that one bad row fails only its own request."""
        self._stats(live[0].call.model).resends += len(live)

        async def one(member: _Member) -> None:
            try:
                _settle(member, await self.dispatcher.send(member.call, queue.transport))
            except Exception as exc:
                if not member.fut.done():
                    member.fut.set_exception(exc)
                    member.fut.exception()

        await asyncio.gather(*(one(m) for m in live if not m.fut.done()))

    def as_dict(self) -> dict[str, Any]:
        return {model: s.as_dict() for model, s in self.stats.items()}

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _settle(member: _Member, result: tuple[Any, Node]) -> None:
    if not member.fut.done():
        member.fut.set_result(result)
