"""Row-level caching for `instances` requests (opt-in per model: `row_cache: true`).

Called by `lb.proxy.Proxy.infer` for row-format predicts of such models. One
MGET looks every row up; only the distinct missing rows go to a node, as one
smaller batch; the reply's predictions are stored one per row and the client's
`predictions` are reassembled in the original order (from the stored JSON
bytes, without re-parsing them). Duplicate rows in one request are sent once.
Concurrent requests that miss the same row share one backend call: the first
owns the row's future, the others await it. The fetch runs in its own named
task, so a cancelled owner does not fail the rows others wait for; a failed
fetch fails every waiting row with the node's reply, and nothing is stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from cache.result_cache import ResultCache
from lb.errors import DeadlineExceeded
from lb.nodes import Node
from lb.routes import Body, Directives, Route
from lb.upstream import Reply

log = logging.getLogger("lb.rowcache")

JSON = "application/json"
# (route, body, rows, version, deadline) -> the node's reply
Forward = Callable[[Route, bytes, int, int, float], Awaitable[tuple[Reply, Node]]]


class RowsFailed(Exception):
    """The node did not answer the missing rows with a usable 200; carries its reply."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"status {reply.status}")
        self.reply = reply


@dataclass(slots=True, frozen=True)
class RowOutcome:
    reply: Reply
    x_cache: str            # HIT | PARTIAL | MISS | COALESCED
    node: str | None


def assemble(rows: Sequence[bytes]) -> bytes:
    """`{"predictions": [...]}` from per-row JSON values, in order."""
    return b'{"predictions":[' + b",".join(rows) + b"]}"


def split_predictions(reply: Reply, expected: int) -> list[bytes]:
    """Per-row JSON values of a 200 predict reply; RowsFailed if it is not one."""
    try:
        preds = orjson.loads(reply.body)["predictions"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise RowsFailed(reply) from exc
    if not isinstance(preds, list) or len(preds) != expected:
        raise RowsFailed(reply)
    return [orjson.dumps(p) for p in preds]


class RowCache:
    def __init__(self, cache: ResultCache, forward: Forward) -> None:
        self.cache = cache
        self._forward = forward
        self._flights: dict[str, asyncio.Future[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, route: Route, body: Body, keys: list[str], version: int,
                    directives: Directives, deadline: float) -> RowOutcome | None:
        """Answer from rows; None when only-if-cached cannot be honoured (a miss)."""
        model = route.model
        if directives.lookup:
            values = await self.cache.lookup_rows(keys, model)
        else:
            self.cache.bypass(model)
            values = [None] * len(keys)
        missing: dict[str, int] = {}
        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            if value is None and key not in missing:
                missing[key] = i
        if not missing:
            return RowOutcome(Reply(200, assemble(values), JSON), "HIT", None)  # type: ignore[arg-type]
        if directives.only_if_cached:
            return None
        try:
            found, node, joined_all = await self._fetch_missing(
                route, body, missing, version, directives, deadline)
        except RowsFailed as exc:
            return RowOutcome(exc.reply, "MISS", None)
        rows = [v if v is not None else found[k] for k, v in zip(keys, values, strict=True)]
        hit_some = any(v is not None for v in values)
        x_cache = "PARTIAL" if hit_some else ("COALESCED" if joined_all else "MISS")
        if x_cache == "COALESCED":
            self.cache.coalesced(model)
        return RowOutcome(Reply(200, assemble(rows), JSON), x_cache, node)

    async def _fetch_missing(self, route: Route, body: Body, missing: dict[str, int],
                             version: int, directives: Directives, deadline: float
                             ) -> tuple[dict[str, bytes], str | None, bool]:
        """Rows for `missing` keys: joined from flights in progress, the rest fetched."""
        share = directives.lookup        # no-cache/no-store requests neither join nor lead
        owned = {k: i for k, i in missing.items() if not (share and k in self._flights)}
        waiting = {k: self._flights[k] for k in missing if k not in owned}
        node_box: list[str] = []
        if owned:
            loop = asyncio.get_running_loop()
            futures = {k: loop.create_future() for k in owned}
            if share:
                self._flights.update(futures)
            task = asyncio.create_task(
                self._fetch(route, body, owned, futures, version, directives, deadline, node_box),
                name=f"rows:{route.model}:{len(owned)}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            waiting.update(futures)
        remaining = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                done = await asyncio.gather(*(asyncio.shield(f) for f in waiting.values()))
        except TimeoutError:
            raise DeadlineExceeded("Deadline exceeded") from None
        found = dict(zip(waiting, done, strict=True))
        return found, (node_box[0] if node_box else None), not owned

    async def _fetch(self, route: Route, body: Body, owned: dict[str, int],
                     futures: dict[str, asyncio.Future[bytes]], version: int,
                     directives: Directives, deadline: float, node_box: list[str]) -> None:
        doc: dict[str, Any] = {"instances": [body.doc["instances"][i] for i in owned.values()]}
        if "signature_name" in body.doc:
            doc["signature_name"] = body.doc["signature_name"]
        try:
            reply, node = await self._forward(route, orjson.dumps(doc), len(owned), version,
                                              deadline)
            node_box.append(node.name)
            if reply.status != 200:
                raise RowsFailed(reply)
            rows = split_predictions(reply, len(owned))
        except BaseException as exc:
            for key, fut in futures.items():
                self._settle(key, fut, exc=exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (key, fut), row in zip(futures.items(), rows, strict=True):
            self._settle(key, fut, value=row)
        if directives.store:
            await self.cache.fill_many(list(zip(owned, rows, strict=True)), route.model)

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
