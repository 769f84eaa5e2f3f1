"""Writes made during one pass of the loop's I/O callbacks leave together at its end.

Called by `lb.http.pipeline.Pipeline` (replies to clients; one `Outbox` per
`HttpServer`) and by `lb.http.client_conn.Conn` (requests to a node; one per
`NodeClient`). Each loop iteration hands the proxy a batch of ready sockets (15
requests and 15 replies at a time under load). Written at once, every reply and
every forwarded request wakes its reader (a node, a client) separately, each
one after that reader went back to sleep: on a two-core box the wakeups cost the
proxy more kernel time than the writes. Written together after the batch, a
reader's second and later messages find it awake. Under load this took the
REST front's miss path from about 21 000 to 26 000 requests/s on the nginx
stubs of `scripts/bench_raw.py` (kernel time per request 21 → 13 µs); a lone
request waits only for the rest of its own callback.

Guarantees: writes leave in the order they were made, each as one
`transport.write`, on the loop's next turn (`call_soon`: after every I/O
callback of this pass, before the loop polls again), or at once when `MAX_BYTES`
are waiting (a deep pipeline must not buffer without bound before flow control
sees it); a write to a transport that is closing by then is dropped (its
protocol's `connection_lost` settles what it carried). Whoever uses an outbox
for a transport writes to it only through the outbox, and calls `flush` before
it shuts or closes that transport, so nothing is reordered or lost.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

log = logging.getLogger("lb.http")

MAX_BYTES: Final = 1 << 20


class Outbox:
    """Pending writes of one loop, for any number of transports."""

    __slots__ = ("_bytes", "_items", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop               # None: the running loop of the first write
        self._items: list[tuple[asyncio.Transport, bytes]] = []
        self._bytes = 0
        self._scheduled = False

    def write(self, transport: asyncio.Transport, data: bytes) -> None:
        """Queue `data` for `transport`; it is written on the loop's next turn."""
        self._items.append((transport, data))
        self._bytes += len(data)
        if self._bytes >= MAX_BYTES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self._turn)

    def pending(self) -> int:
        """Bytes waiting (tests, stats)."""
        return self._bytes

    def _turn(self) -> None:
        self._scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write everything waiting now, in order."""
        items = self._items
        if not items:
            return
        self._items = []
        self._bytes = 0
        for transport, data in items:
            if transport.is_closing():
                continue
            try:
                transport.write(data)
            except (RuntimeError, OSError) as exc:  # uvloop raises on a closed handle
                log.debug("deferred write dropped: %s", exc)
