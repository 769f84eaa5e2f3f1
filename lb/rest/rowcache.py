"""Row-level caching for `instances` requests (opt-in per model: `row_cache: true`).

Called by `lb.request.core.Core.serve` when the REST plan (`lb.rest.keys`) gives one
key per row. One MGET looks every row up; only the distinct missing rows go
to a node, as one smaller batch (through the core's `forward`, so they are
balanced, retried, hedged and batched like any call); the reply's predictions
are stored one per row and the client's `predictions` are reassembled in the
original order (from the stored JSON bytes, without re-parsing them).
Duplicate rows in one request are sent once. Concurrent requests that miss
the same row share one backend call: the first owns the row's future, the
others await it. The fetch runs in its own named task, so a cancelled owner
does not fail the rows others wait for; a failed fetch fails every waiting
row with the node's reply, and nothing is stored.

`X-Cache`: HIT (every row), PARTIAL (some), COALESCED (every missing row was
another request's), MISS; BYPASS under Cache-Control no-cache (no lookup; the
rows are fetched and stored).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import orjson

from lb.errors import DeadlineExceeded, NotCached
from lb.http.client import Response
from lb.request.call import Call, Outcome, Transport, XCache
from lb.rest.routes import Body
from lb.rest.upstream import JSON, RestPayload

if TYPE_CHECKING:
    from lb.request.core import Core

log = logging.getLogger("lb.rest.rowcache")


class Answered:
    """Which node answered a row fetch (set by `_fetch` once it has), for the caller."""

    __slots__ = ("node",)

    def __init__(self) -> None:
        self.node: str | None = None


class RowsFailed(Exception):
    """The node did not answer the missing rows with a usable 200; carries its reply."""

    def __init__(self, reply: Response, node: str | None) -> None:
        super().__init__(f"status {reply.status}")
        self.reply = reply
        self.node = node


def assemble(rows: Sequence[bytes]) -> bytes:
    """`{"predictions": [...]}` from per-row JSON values, in order."""
    return b'{"predictions":[' + b",".join(rows) + b"]}"


def split_predictions(reply: Response, expected: int, node: str | None) -> list[bytes]:
    """Per-row JSON values of a 200 predict reply; RowsFailed if it is not one."""
    try:
        preds = orjson.loads(reply.body)["predictions"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise RowsFailed(reply, node) from exc
    if not isinstance(preds, list) or len(preds) != expected:
        raise RowsFailed(reply, node)
    return [orjson.dumps(p) for p in preds]


class RowCache:
    """Row lookups, per-row coalescing and fills for one proxy's core."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self._flights: dict[str, asyncio.Future[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, call: Call, transport: Transport[Any],
                    keys: list[str]) -> Outcome[Response]:
        cache = self.core.cache
        assert cache is not None
        d = call.directives
        if d.lookup:
            values = await cache.lookup_rows(keys, call.model)
        else:
            cache.bypass(call.model)
            values = [None] * len(keys)
        missing: dict[str, int] = {}
        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            if value is None and key not in missing:
                missing[key] = i
        if not missing:
            return Outcome(Response(200, assemble(values), JSON), XCache.HIT)  # type: ignore[arg-type]
        if d.only_if_cached:
            raise NotCached
        try:
            found, node, joined_all = await self._fetch_missing(call, transport, missing)
        except RowsFailed as exc:
            return Outcome(exc.reply, XCache.BYPASS if not d.lookup else XCache.MISS, exc.node)
        rows = [v if v is not None else found[k] for k, v in zip(keys, values, strict=True)]
        if not d.lookup:
            x_cache = XCache.BYPASS
        elif any(v is not None for v in values):
            x_cache = XCache.PARTIAL
        else:
            x_cache = XCache.COALESCED if joined_all else XCache.MISS
        if x_cache is XCache.COALESCED:
            cache.coalesced(call.model)
        return Outcome(Response(200, assemble(rows), JSON), x_cache, node)

    async def _fetch_missing(self, call: Call, transport: Transport[Any],
                             missing: dict[str, int]
                             ) -> tuple[dict[str, bytes], str | None, bool]:
        """Rows for `missing` keys: joined from flights in progress, the rest fetched."""
        share = call.directives.lookup      # no-cache requests neither join nor lead
        owned = {k: i for k, i in missing.items() if not (share and k in self._flights)}
        waiting = {k: self._flights[k] for k in missing if k not in owned}
        answered = Answered()
        if owned:
            loop = asyncio.get_running_loop()
            futures = {k: loop.create_future() for k in owned}
            if share:
                self._flights.update(futures)
            task = asyncio.create_task(
                self._fetch(call, transport, owned, futures, answered),
                name=f"rows:{call.model}:{len(owned)}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            waiting.update(futures)
        try:
            async with asyncio.timeout(call.deadline.remaining()):
                done = await asyncio.gather(*(asyncio.shield(f) for f in waiting.values()))
        except TimeoutError:
            raise DeadlineExceeded("Deadline exceeded") from None
        found = dict(zip(waiting, done, strict=True))
        return found, answered.node, not owned

    def _subcall(self, call: Call, owned: dict[str, int]) -> Call:
        p: RestPayload = call.payload
        assert p.parsed is not None
        doc: dict[str, Any] = {"instances": [p.parsed.doc["instances"][i]
                                             for i in owned.values()]}
        if "signature_name" in p.parsed.doc:
            doc["signature_name"] = p.parsed.doc["signature_name"]
        rows = len(owned)
        body = Body(doc=doc, rows=rows, signature_name=p.parsed.signature_name)
        payload = replace(p, body=orjson.dumps(doc), parsed=body)
        cost = call.units / max(call.rows, 1)
        return replace(call, payload=payload, rows=rows, units=rows * cost)

    async def _fetch(self, call: Call, transport: Transport[Any], owned: dict[str, int],
                     futures: dict[str, asyncio.Future[bytes]], answered: Answered) -> None:
        try:
            reply, node = await self.core.forward(self._subcall(call, owned), transport)
            answered.node = node.name
            if reply.status != 200:
                raise RowsFailed(reply, node.name)
            rows = split_predictions(reply, len(owned), node.name)
        except BaseException as exc:
            for key, fut in futures.items():
                self._settle(key, fut, exc=exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (key, fut), row in zip(futures.items(), rows, strict=True):
            self._settle(key, fut, value=row)
        cache = self.core.cache
        if call.directives.store and cache is not None:
            await cache.fill_many(list(zip(owned, rows, strict=True)), call.model)

    def _settle(self, key: str, fut: asyncio.Future[bytes], value: bytes | None = None,
                exc: BaseException | None = None) -> None:
        if self._flights.get(key) is fut:
            del self._flights[key]
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
            fut.exception()        # retrieved: waiters may all be gone
        else:
            assert value is not None
            fut.set_result(value)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
