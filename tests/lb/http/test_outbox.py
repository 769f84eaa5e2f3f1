"""lb.http.outbox over real loopback connections, on both asyncio and uvloop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from lb.http import outbox as outbox_mod
from lb.http.outbox import Outbox


class Sink:
    """What one server-side connection received, until the peer closed it."""

    def __init__(self) -> None:
        self.data = b""
        self.closed = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            self.data += chunk
        self.closed.set()
        writer.close()


@asynccontextmanager
async def connections(n: int) -> AsyncIterator[tuple[list[asyncio.Transport], list[Sink]]]:
    """`n` client transports to a local server, and what each one's peer receives."""
    sinks: list[Sink] = []
    accepted: asyncio.Queue[Sink] = asyncio.Queue()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sink = Sink()
        accepted.put_nowait(sink)
        await sink.serve(reader, writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    transports = []
    for _ in range(n):
        transport, _proto = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        transports.append(transport)
        sinks.append(await asyncio.wait_for(accepted.get(), 5))
    try:
        yield transports, sinks
    finally:
        for transport in transports:
            transport.close()
        server.close()
        await server.wait_closed()


async def settle(sinks: list[Sink], want: list[bytes]) -> None:
    for _ in range(2000):
        if [s.data for s in sinks] == want:
            return
        await asyncio.sleep(0.001)
    assert [s.data for s in sinks] == want


Transports = list[asyncio.Transport]


def on_connections(run: Any, n: int,
                   body: Callable[[Outbox, Transports, list[Sink]], Awaitable[None]]) -> None:
    """Run `body` with a new Outbox, `n` connections and their peers' sinks."""
    async def main() -> None:
        async with connections(n) as (trs, sinks):
            await body(Outbox(), trs, sinks)
    run(main())


def test_writes_wait_for_the_loops_next_turn_then_leave_in_order(run: Any) -> None:
    async def body(out: Outbox, trs: Transports, sinks: list[Sink]) -> None:
        out.write(trs[0], b"a1 ")
        out.write(trs[1], b"b1 ")
        out.write(trs[0], b"a2 ")
        assert out.pending() == 9
        assert trs[0].get_write_buffer_size() == 0      # nothing handed over yet
        await asyncio.sleep(0)                          # the loop's next turn
        assert out.pending() == 0
        await settle(sinks, [b"a1 a2 ", b"b1 "])
    on_connections(run, 2, body)


def test_flush_writes_now_and_the_turn_after_it_writes_nothing_twice(run: Any) -> None:
    async def body(out: Outbox, trs: Transports, sinks: list[Sink]) -> None:
        out.write(trs[0], b"x")
        out.flush()
        assert out.pending() == 0
        trs[0].close()          # closing right after a flush loses nothing
        await sinks[0].closed.wait()
        assert sinks[0].data == b"x"
    on_connections(run, 1, body)


def test_a_write_to_a_transport_closed_meanwhile_is_dropped(run: Any) -> None:
    async def body(out: Outbox, trs: Transports, sinks: list[Sink]) -> None:
        out.write(trs[0], b"lost")
        out.write(trs[1], b"kept")
        trs[0].abort()
        await asyncio.sleep(0)
        await sinks[0].closed.wait()
        await settle(sinks, [b"", b"kept"])
    on_connections(run, 2, body)


def test_past_max_bytes_it_writes_at_once(run: Any) -> None:
    async def body(out: Outbox, trs: Transports, sinks: list[Sink]) -> None:
        big = b"y" * outbox_mod.MAX_BYTES
        out.write(trs[0], b"first ")
        out.write(trs[0], big)          # reaches the cap: both leave now
        assert out.pending() == 0
        await settle(sinks, [b"first " + big])
    on_connections(run, 1, body)
