"""Fakes for in-process tests of the request core: a transport whose nodes answer from
a script, and calls. No sockets: the scheduler, the dispatcher and the pool are the real
ones; only the node at the end of the wire is scripted."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from lb.errors import UpstreamTimeout
from lb.pool.nodes import Node
from lb.request.call import Call, Deadline
from lb.status import Verdict, rest_verdict


class Answer:
    """A node's answer: a status and a body."""

    __slots__ = ("body", "content_type", "status")

    def __init__(self, status: int, body: bytes = b"{}") -> None:
        self.status, self.body, self.content_type = status, body, "application/json"


class ScriptedNodes:
    """A Transport whose nodes answer by name: `statuses[name]` after `delays[name]`
    seconds (0: on the next loop turn), or `UpstreamTimeout` at the attempt's timeout.
    Like the REST transport, it calls `on_done` itself as the answer lands, before the
    awaiting coroutine resumes; a cancel ends the attempt at once (the connection is
    dropped)."""

    codec: Any = None
    usable: Callable[[Node], bool] | None = None

    def __init__(self, statuses: dict[str, int], delays: dict[str, float] | None = None
                 ) -> None:
        self.statuses = statuses
        self.delays = delays or {}
        self.sent: list[str] = []
        self.open: dict[str, int] = {}          # attempts in flight per node

    def send(self, node: Node, call: Call, timeout_s: float,
             on_done: Callable[[Any], object]) -> asyncio.Future[Answer]:
        self.sent.append(node.name)
        self.open[node.name] = self.open.get(node.name, 0) + 1
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Answer] = loop.create_future()
        closed = False

        def close() -> None:
            nonlocal closed
            if not closed:
                closed = True
                self.open[node.name] -= 1
                on_done(fut)

        delay = self.delays.get(node.name, 0.0)

        def land() -> None:
            if fut.done():
                return
            if delay > timeout_s:           # the client's per-try deadline, as a real one
                fut.set_exception(UpstreamTimeout(node.name, "read timed out"))
            else:
                fut.set_result(Answer(self.statuses[node.name]))
            close()

        handle = loop.call_later(min(delay, max(timeout_s, 0.0)), land)

        def cancelled(f: asyncio.Future[Answer]) -> None:
            if f.cancelled():
                handle.cancel()
                close()

        fut.add_done_callback(cancelled)
        return fut

    def verdict(self, answer: Answer, cut: bool) -> Verdict:
        return rest_verdict(answer.status)

    def body(self, answer: Answer) -> bytes:
        return answer.body

    def from_cache(self, call: Call, body: bytes) -> Answer | None:
        return None


def call(model: str = "m", version: int | None = 1, left_s: float = 5.0,
         units: float = 1.0) -> Call:
    return Call(model=model, version=version, pinned=False, units=units,
                deadline=Deadline(time.monotonic() + left_s), payload=None)
