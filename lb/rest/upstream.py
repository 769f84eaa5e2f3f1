"""REST to the nodes: one keep-alive pool per node, and the REST `Transport` of the core.

Called by `lb.request.dispatch` (through `RestTransport.send`) for every REST attempt,
by `lb.pool.health` and `lb.rest.signatures` for probes and metadata (`get`), and by
the composition root (`lb.server`) when nodes come and go (`reconfigure`).

`RestUpstream` keeps one `lb.http.client.NodeClient` per node name, sized by
`upstream.pool_size` (a bound, not a queue that hides load from the policy's
in-flight counters). When a node leaves or its address changes, its old
client is retired: it keeps serving the requests in flight on it, and closes
once they are done (or after `RETIRE_S`).

Guarantees: `send` returns a future that completes with a `Response` or fails
with an `UpstreamError` by its deadline (the one boundary where OS and
httptools errors are translated is `lb.http.client`); the verdict table below
is the REST half of "what is worth another node".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lb.config import UpstreamConfig
from lb.edge import node_tls
from lb.http.client import ClientLimits, NodeClient, Response
from lb.pool.nodes import Node
from lb.request.call import Call
from lb.rest.formats import adapt
from lb.rest.routes import Body
from lb.status import Verdict, rest_verdict

log = logging.getLogger("lb.upstream")

JSON = "application/json"
RETIRE_S = 60.0


@dataclass(slots=True, init=False)     # built per request, treat as immutable
class RestPayload:
    """What a REST attempt sends; `body` is the client's bytes, passed through."""

    method: str
    path: str
    body: bytes | None = None
    parsed: Body | None = None      # the parsed body of a POST (keys, rows, batching)
    verb: str | None = None

    def __init__(self, method: str, path: str, body: bytes | None = None,
                 parsed: Body | None = None, verb: str | None = None) -> None:
        # written out: compiled (lb.request.call.Call says why)
        self.method = method
        self.path = path
        self.body = body
        self.parsed = parsed
        self.verb = verb


class RestUpstream:
    """Connection pools to the nodes, by node name; see the module docstring."""

    def __init__(self, cfg: UpstreamConfig) -> None:
        self._limits = ClientLimits(max_connections=cfg.pool_size,
                                    connect_timeout_s=cfg.connect_timeout_s,
                                    keepalive_s=cfg.keepalive_s)
        self._read_timeout_s = cfg.read_timeout_s
        self._ssl = node_tls.rest_context(cfg.tls)      # for https:// nodes (upstream.tls)
        self._server_name = cfg.tls.server_name if cfg.tls is not None else None
        self._clients: dict[str, tuple[str, NodeClient]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def client(self, node: Node) -> NodeClient:
        known = self._clients.get(node.name)
        if known is not None and known[0] == node.rest:
            return known[1]
        if known is not None:                          # the address changed (reload)
            self._retire(known, lambda: False, grace_s=5.0)
        client = NodeClient(node.name, node.rest, self._limits, self._ssl, self._server_name)
        self._clients[node.name] = (node.rest, client)
        return client

    def send(self, node: Node, method: str, path: str, body: bytes | None,
             timeout_s: float,
             on_done: Callable[[asyncio.Future[Response]], object] | None = None,
             ) -> asyncio.Future[Response]:
        loop = self._loop
        if loop is None:        # get_running_loop() costs a getpid() syscall on 3.11
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + min(timeout_s, self._read_timeout_s)
        return self.client(node).send(method, path, body, deadline, b"", on_done)

    async def get(self, node: Node, path: str, timeout_s: float) -> Response:
        """One GET (health probes, metadata); raises UpstreamError."""
        return await self.send(node, "GET", path, None, timeout_s)

    def reconfigure(self, leaving: list[Node]) -> None:
        """Retire the pools of nodes that left, once their requests are done."""
        for node in leaving:
            known = self._clients.pop(node.name, None)
            if known is not None:
                self._retire(known, lambda n=node: n.inflight == 0)  # type: ignore[misc]

    def _retire(self, known: tuple[str, NodeClient], drained: Callable[[], bool],
                grace_s: float = RETIRE_S) -> None:
        url, client = known

        async def close_when_drained() -> None:
            deadline = time.monotonic() + grace_s
            # The in-flight count is a plain counter (no event to wait on); the poll is
            # bounded by the deadline.
            while not drained() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            await client.close(grace_s=1.0)
            log.info("closed the connection pool of %s", url)

        task = asyncio.create_task(close_when_drained(), name=f"retire:{url}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def stats(self) -> dict[str, dict[str, int]]:
        return {name: c.stats() for name, (_, c) in self._clients.items()}

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        clients = [c for _, c in self._clients.values()]
        self._clients = {}
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


class RestTransport:
    """The core's `Transport` for REST calls (payload: `RestPayload`)."""

    usable: Callable[[Node], bool] | None = None      # every node speaks REST

    def __init__(self, upstream: RestUpstream, codec: Any = None) -> None:
        self.upstream = upstream
        self.codec = codec

    def send(self, node: Node, call: Call, timeout_s: float,
             on_done: Callable[[asyncio.Future[Response]], object]) -> asyncio.Future[Response]:
        p: RestPayload = call.payload
        return self.upstream.send(node, p.method, p.path, p.body, timeout_s, on_done)

    def verdict(self, answer: Response, cut_by_try_timeout: bool) -> Verdict:
        return rest_verdict(answer.status)

    def body(self, answer: Response) -> bytes:
        return answer.body

    def from_cache(self, call: Call, body: bytes) -> Response | None:
        p: RestPayload = call.payload
        if p.verb == "predict":       # row and columnar requests share entries
            adapted = adapt(body, p.parsed is not None and p.parsed.columnar)
            if adapted is None:
                return None
            body = adapted
        return Response(200, body, JSON)
