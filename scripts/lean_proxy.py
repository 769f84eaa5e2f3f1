"""A lean reverse proxy, the ceiling of Python on uvloop that scripts/bench_raw.py shows.

    python scripts/lean_proxy.py --port P http://127.0.0.1:A http://127.0.0.1:B ...

Started by scripts/bench_raw.py on 127.0.0.1: asyncio protocols on uvloop with
httptools, keep-alive both ways, a LIFO pool of idle connections per node,
round robin, replies in order on a connection. It forwards method, target and
body and answers with the node's status, content type and body. Nothing else:
no policy, counters, limits, timeouts, retries, cache, pipelining beyond one
request at a time per connection, or error handling beyond dropping a
connection. It is what tfserving-lb's per-request work is measured against.
"""

import argparse
import asyncio
import itertools
from collections import deque
from urllib.parse import urlsplit

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    """One keep-alive connection to a node, answering one request at a time."""

    def __init__(self, pool: "Pool") -> None:
        self.pool, self.parser = pool, httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        self.ctype, self.body = b"application/json", b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"content-type":
            self.ctype = value

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        body, self.body = self.body, b""
        self.pool.idle.append(self)
        if client is not None:
            client.reply(self.parser.get_status_code(), self.ctype, body)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        if self.client is not None:
            self.client.reply(502, b"application/json", b'{"error": "node closed"}')


class Pool:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.idle: deque[Upstream] = deque()
        self.connecting: set[asyncio.Task[None]] = set()

    def send(self, client: "Client", data: bytes) -> None:
        if self.idle:
            conn = self.idle.pop()
            conn.client = client
            assert conn.transport is not None
            conn.transport.write(data)
            return
        task = asyncio.ensure_future(self._connect(client, data))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _connect(self, client: "Client", data: bytes) -> None:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: Upstream(self), self.host, self.port)
        conn.client = client
        assert conn.transport is not None
        conn.transport.write(data)


class Client(asyncio.Protocol):
    """One client connection."""

    def __init__(self, pools: "itertools.cycle[Pool]") -> None:
        self.pools, self.parser = pools, httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url, self.body, self.ctype = b"", b"", b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        body, self.body, url, self.url = self.body, b"", self.url, b""
        head = b"%s %s HTTP/1.1\r\nHost: node\r\n" % (method, url)
        if body:
            head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        next(self.pools).send(self, head + b"\r\n" + body)

    def reply(self, status: int, ctype: bytes, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %d"
                                 b"\r\n\r\n%s" % (status, ctype, len(body), body))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("upstreams", nargs="+")
    args = parser.parse_args()

    async def serve() -> None:
        pools = itertools.cycle([Pool(u) for u in args.upstreams])
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Client(pools), "127.0.0.1", args.port,
                                          backlog=4096)
        await server.serve_forever()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
