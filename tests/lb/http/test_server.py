"""The lean HTTP/1.1 server over raw sockets: a real HttpServer on a free port per test,
a small app (echo / slow / raising / big replies), no HTTP client library.

Every test runs on uvloop (what the proxy ships) and on asyncio's own loop, and on
uvloop over TLS (real handshakes with a certificate made by the tests): the same
bytes above the transport, the same behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from lb.http.server import Exchange, HttpServer, Request, ServerLimits
from tests.lb.http.conftest import TLS, Runner

Run = Callable[[Coroutine[Any, Any, None]], None]
WAIT = 5.0      # the deadline of every single read in these tests
@pytest.fixture
def run(run_tls: Runner) -> Runner:
    """Every test of this module on asyncio, uvloop and uvloop over TLS."""
    return run_tls


async def listen(server: HttpServer) -> None:
    """Start `server` on a free port, over TLS when the test runs over TLS."""
    tls = TLS[0]
    await server.start("127.0.0.1", 0, ssl=tls[0] if tls else None)


class App:
    """/slow/<ms>: answers after ms (records on_abort); /raise; /big?<n>; else echo."""

    def __init__(self) -> None:
        self.handled: list[Request] = []
        self.aborted: list[str] = []
        self.exchanges: list[Exchange] = []

    def handle(self, ex: Exchange) -> None:
        req = ex.request
        self.handled.append(req)
        self.exchanges.append(ex)
        if req.path.startswith("/slow/"):
            ex.on_abort = lambda: self.aborted.append(req.path)
            delay = int(req.path.rsplit("/", 1)[1]) / 1000
            asyncio.get_running_loop().call_later(delay, self.late, ex)
        elif req.path == "/raise":
            raise RuntimeError("boom")
        elif req.path == "/big":
            ex.respond(200, b"x" * int(req.query), b"application/octet-stream")
        else:
            ex.respond(200, echo(req), headers=b"X-Echo: 1\r\nX-Node: a\r\n")

    def late(self, ex: Exchange) -> None:
        ex.respond(200, echo(ex.request))       # a no-op when the client left


def echo(req: Request) -> bytes:
    return json.dumps({
        "method": req.method, "path": req.path, "query": req.query.decode(),
        "headers": [[k.decode(), v.decode()] for k, v in req.headers],
        "body": req.body.decode("latin-1"), "version": req.version,
        "keep_alive": req.keep_alive, "remote": req.remote,
        "x_echo": (req.header(b"x-echo") or b"").decode()}).encode()


@contextlib.asynccontextmanager
async def serving(app: App | None = None, **limits: Any) -> AsyncIterator[tuple[HttpServer, App]]:
    app = app or App()
    server = HttpServer(app, ServerLimits(**limits))
    await listen(server)
    try:
        yield server, app
    finally:
        await server.shutdown(0.5)


class Reply:
    def __init__(self, raw: bytes, status: int, headers: dict[str, str], body: bytes) -> None:
        self.raw, self.status, self.headers, self.body = raw, status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, server: HttpServer) -> Client:
        tls = TLS[0]
        if tls is None:
            return cls(*await asyncio.open_connection("127.0.0.1", server.port))
        return cls(*await asyncio.open_connection("127.0.0.1", server.port, ssl=tls[1],
                                                  server_hostname="localhost"))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def reply(self) -> Reply:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        size = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(size), WAIT)
        return Reply(head + body, status, headers, body)

    async def closed(self, within: float = WAIT) -> bool:
        """Whether the server closes the connection (EOF or reset) with nothing more."""
        try:
            rest = await asyncio.wait_for(self.reader.read(65536), within)
        except (ConnectionResetError, ssl.SSLError):     # TLS: a reset mid-record
            return True
        return rest == b""

    def close(self) -> None:
        self.writer.close()


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


async def until(check: Callable[[], bool], within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.01)


def assert_error(reply: Reply, status: int, starts: str = "") -> None:
    assert reply.status == status
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["connection"] == "close"
    assert reply.json()["error"].startswith(starts)


# --- keep-alive, pipelining, request fields -------------------------------------------


def test_request_fields_and_reply_shape(run: Run) -> None:
    async def body() -> None:
        async with serving() as (server, app):
            c = await Client.connect(server)
            c.send(post("/v1/models/m:predict?a=1&b=2", b'{"x": 1}', "X-Echo: Yes\r\n"))
            r = await c.reply()
            assert r.raw == (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nX-Echo: 1\r\nX-Node: a\r\n\r\n"
                             % len(r.body) + r.body)
            got = r.json()
            assert got["method"] == "POST" and got["path"] == "/v1/models/m:predict"
            assert got["query"] == "a=1&b=2" and got["body"] == '{"x": 1}'
            assert got["headers"] == [["host", "t"], ["content-length", "8"], ["x-echo", "Yes"]]
            assert got["version"] == "1.1" and got["keep_alive"] is True
            assert got["remote"] == "127.0.0.1" and got["x_echo"] == "Yes"
            ex = app.exchanges[0]
            assert ex.done and ex.status == 200 and ex.written == len(r.raw)
            assert ex.request.start <= asyncio.get_running_loop().time()
            c.close()
    run(body())


def test_request_target_forms(run: Run) -> None:
    async def body() -> None:
        async with serving() as (server, _app):
            c = await Client.connect(server)
            cases = [(b"GET http://h:1/p/q?x=y HTTP/1.1\r\n\r\n", "/p/q", "x=y"),
                     (b"GET http://h HTTP/1.1\r\n\r\n", "/", ""),
                     (b"OPTIONS * HTTP/1.1\r\n\r\n", "*", ""),
                     (b"GET /a%20b?c#frag HTTP/1.1\r\n\r\n", "/a%20b", "c")]
            for raw, path, query in cases:
                c.send(raw)
                got = (await c.reply()).json()
                assert (got["path"], got["query"]) == (path, query)
            c.send(get("/h", "X-Echo: first\r\nX-Echo: second\r\n"))
            assert (await c.reply()).json()["x_echo"] == "first"
            c.close()
    run(body())


def test_keep_alive_many_requests_one_connection(run: Run) -> None:
    async def body() -> None:
        async with serving() as (server, _app):
            c = await Client.connect(server)
            for i in range(50):
                c.send(post(f"/n/{i}", b"x" * i))
                r = await c.reply()
                assert r.status == 200 and r.json()["path"] == f"/n/{i}"
            stats = server.stats()
            assert stats["connections"] == 1 and stats["requests"] == 50
            c.close()
    run(body())


def test_pipelined_requests_answered_in_order(run: Run) -> None:
    async def body() -> None:
        async with serving() as (server, app):
            c = await Client.connect(server)
            paths = ["/slow/80", "/a", "/slow/10", "/b", "/slow/30", "/c"]
            c.send(b"".join(get(p) for p in paths))
            got = [(await c.reply()).json()["path"] for _ in paths]
            assert got == paths
            assert [r.path for r in app.handled] == paths
            c.close()
    run(body())


def test_deep_pipeline_answered_synchronously_and_reading_pauses(run: Run) -> None:
    async def body() -> None:
        async with serving(max_pipeline=8) as (server, _app):
            c = await Client.connect(server)
            c.send(b"".join(get(f"/{i}") for i in range(3000)))    # no recursion
            for i in range(3000):
                assert (await c.reply()).json()["path"] == f"/{i}"
            conn = next(iter(server.conns))
            c.send(b"".join(get(f"/slow/{5}") for _ in range(20)))
            await until(lambda: not conn._transport.is_reading())   # queue long
            for _ in range(20):
                assert (await c.reply()).status == 200
            await until(lambda: conn._transport.is_reading())
            c.close()
    run(body())


def test_chunked_body_is_decoded_and_limited(run: Run) -> None:
    async def body() -> None:
        async with serving(max_body_bytes=10) as (server, _app):
            c = await Client.connect(server)
            chunked = b"4\r\nabcd\r\n3\r\nefg\r\n0\r\n\r\n"
            c.send(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
            assert (await c.reply()).json()["body"] == "abcdefg"
            c.send(b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n")
            await asyncio.sleep(0.05)
            c.send(b"5\r\nghijk\r\n0\r\n\r\n")                     # 11 bytes decoded
            assert_error(await c.reply(), 413, "Request body too large")
            assert await c.closed()
            assert server.stats()["errors_413"] == 1
    run(body())


def test_expect_100_continue(run: Run) -> None:
    async def body() -> None:
        async with serving(max_body_bytes=100) as (server, app):
            c = await Client.connect(server)
            c.send(b"POST /e HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            assert (await c.reply()).status == 100
            c.send(b"hello")
            assert (await c.reply()).json()["body"] == "hello"
            # too large: 413 at once, no 100 Continue, then closed
            c.send(b"POST /e HTTP/1.1\r\nContent-Length: 101\r\nExpect: 100-continue\r\n\r\n")
            assert_error(await c.reply(), 413)
            assert await c.closed()
            assert len(app.handled) == 1
    run(body())


def test_expect_100_waits_until_the_request_is_next(run: Run) -> None:
    async def body() -> None:
        async with serving() as (server, _app):
            c = await Client.connect(server)
            c.send(get("/slow/150") + b"POST /e HTTP/1.1\r\nContent-Length: 2\r\n"
                   b"Expect: 100-continue\r\n\r\n")
            first = await c.reply()
            assert first.status == 200 and first.json()["path"] == "/slow/150"
            assert (await c.reply()).status == 100
            c.send(b"ok")
            assert (await c.reply()).json()["body"] == "ok"
            c.close()
    run(body())


def test_http10_and_connection_close(run: Run) -> None:
    async def body() -> None:
        async with serving() as (server, _app):
            c = await Client.connect(server)
            c.send(b"GET /old HTTP/1.0\r\n\r\n")
            r = await c.reply()
            assert r.json()["version"] == "1.0" and r.headers["connection"] == "close"
            assert await c.closed()
            c = await Client.connect(server)
            c.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            assert (await c.reply()).headers["connection"] == "keep-alive"
            c.send(b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            assert (await c.reply()).json()["path"] == "/b"
            c.close()
            c = await Client.connect(server)
            c.send(get("/last", "Connection: close\r\n") + get("/never"))
            r = await c.reply()
            assert r.json()["keep_alive"] is False and r.headers["connection"] == "close"
            assert await c.closed()
    run(body())


def test_head_reply_has_length_but_no_body(run: Run) -> None:
    async def body() -> None:
        async with serving() as (server, _app):
            c = await Client.connect(server)
            c.send(b"HEAD /h HTTP/1.1\r\n\r\n" + get("/after"))
            head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), WAIT)
            assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) > 0
            assert (await c.reply()).json()["path"] == "/after"    # framing intact
            c.close()
    run(body())


# --- limits and timeouts --------------------------------------------------------------


def test_413_on_content_length_without_reading_the_body(run: Run) -> None:
    async def body() -> None:
        async with serving(max_body_bytes=1000) as (server, app):
            c = await Client.connect(server)
            c.send(b"POST /p HTTP/1.1\r\nContent-Length: 1001\r\n\r\n" + b"x" * 200)
            assert_error(await c.reply(), 413)
            assert await c.closed() and not app.handled
    run(body())


def test_414_and_431(run: Run) -> None:
    async def body() -> None:
        async with serving(max_url_bytes=100, max_header_bytes=200, max_headers=5) as (s, _):
            cases = [(get("/" + "u" * 100), 414),
                     (get("/", "X-Big: " + "v" * 200 + "\r\n"), 431),
                     (get("/", "".join(f"X-{i}: 1\r\n" for i in range(6))), 431)]
            for request, status in cases:
                c = await Client.connect(s)
                c.send(request)
                assert_error(await c.reply(), status)
                assert await c.closed()
            c = await Client.connect(s)         # a header growing on the wire, unfinished
            c.send(b"GET / HTTP/1.1\r\nX-Slow: ")
            for _ in range(3):
                await asyncio.sleep(0.05)
                c.send(b"v" * 1500)
            assert_error(await c.reply(), 431)
            stats = s.stats()
            assert stats["errors_414"] == 1 and stats["errors_431"] == 3
    run(body())


def test_408_slow_headers_and_slow_body(run: Run) -> None:
    async def body() -> None:
        async with serving(header_timeout_s=0.3, body_timeout_s=0.3) as (server, app):
            c = await Client.connect(server)
            c.send(get("/ok"))
            assert (await c.reply()).status == 200
            t0 = time.monotonic()
            c.send(b"GET /slow-head HTTP/1.1\r\nHost:")
            assert_error(await c.reply(), 408, "Request timeout")
            assert time.monotonic() - t0 >= 0.25
            assert await c.closed()
            c = await Client.connect(server)
            c.send(b"POST /b HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
            assert_error(await c.reply(), 408)
            assert await c.closed()
            assert [r.path for r in app.handled] == ["/ok"]
            assert server.stats()["errors_408"] == 2
    run(body())


def test_idle_keepalive_connection_closed_silently(run: Run) -> None:
    async def body() -> None:
        async with serving(keepalive_s=0.3, header_timeout_s=0.3) as (server, _app):
            c = await Client.connect(server)
            c.send(get("/"))
            assert (await c.reply()).status == 200
            t0 = time.monotonic()
            assert await c.closed(within=2.0)       # EOF, no bytes
            assert time.monotonic() - t0 >= 0.25
            quiet = await Client.connect(server)    # never sends a byte
            assert await quiet.closed(within=2.0)
            await until(lambda: server.stats()["connections"] == 0)
            assert server.stats()["errors_408"] == 0
    run(body())


@pytest.mark.parametrize("raw", [
    b"\x00\x01\x02garbage\r\n\r\n",
    b"G@T / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_malformed_http_is_400_and_closed(run: Run, raw: bytes) -> None:
    async def body() -> None:
        async with serving() as (server, app):
            c = await Client.connect(server)
            c.send(get("/before") + raw)
            assert (await c.reply()).json()["path"] == "/before"
            assert_error(await c.reply(), 400, "Malformed HTTP request: ")
            assert await c.closed()
            assert len(app.handled) == 1 and server.stats()["errors_400"] == 1
    run(body())


def test_upgrade_is_answered_plainly_then_closed(run: Run) -> None:
    async def body() -> None:
        async with serving() as (server, app):
            c = await Client.connect(server)
            c.send(get("/ws", "Connection: Upgrade\r\nUpgrade: websocket\r\n") + b"\x81\x05hello")
            r = await c.reply()
            assert r.status == 200 and r.json()["path"] == "/ws"
            assert r.headers["connection"] == "close"
            assert await c.closed() and len(app.handled) == 1
    run(body())


# --- the app's failures, clients that leave, flow control -------------------------------


def test_app_that_raises_gets_500_and_a_log_line(run: Run, caplog: pytest.LogCaptureFixture) \
        -> None:
    async def body() -> None:
        async with serving() as (server, _app):
            c = await Client.connect(server)
            with caplog.at_level(logging.ERROR, logger="lb.http"):
                c.send(get("/raise") + get("/fine"))
                r = await c.reply()
            assert r.status == 500 and r.json() == {"error": "Internal server error"}
            assert (await c.reply()).json()["path"] == "/fine"     # still usable
            assert any(rec.name == "lb.http" and rec.exc_info for rec in caplog.records)
            assert server.stats()["errors_500"] == 1
            c.close()
    run(body())


def test_client_that_leaves_aborts_the_exchange_once(run: Run) -> None:
    async def body() -> None:
        async with serving() as (server, app):
            c = await Client.connect(server)
            c.send(get("/slow/200") + get("/queued") + get("/queued-too"))
            await until(lambda: len(app.handled) == 1)
            c.close()
            await until(lambda: app.aborted == ["/slow/200"])
            await until(lambda: server.stats()["connections"] == 0)
            await asyncio.sleep(0.3)                # the late respond() is a no-op
            assert app.aborted == ["/slow/200"] and len(app.handled) == 1
            assert app.exchanges[0].done and app.exchanges[0].written == 0
    run(body())


def test_full_write_buffer_stops_reading_and_dispatching(run: Run) -> None:
    async def body() -> None:
        async with serving(send_timeout_s=30.0) as (server, app):
            c = await Client.connect(server)
            n, size = 10, 2_000_000          # fewer than max_pipeline: no queue pause
            c.send(b"".join(get(f"/big?{size}") for _ in range(n)))
            await asyncio.sleep(0.3)                # the client reads nothing
            assert len(app.handled) < n
            conn = next(iter(server.conns))
            assert not conn._transport.is_reading()
            for _ in range(n):
                r = await c.reply()
                assert r.status == 200 and len(r.body) == size
            assert len(app.handled) == n
            c.close()
    run(body())


def test_client_that_reads_nothing_is_dropped_after_send_timeout(run: Run) -> None:
    async def body() -> None:
        async with serving(send_timeout_s=0.3) as (server, app):
            c = await Client.connect(server)
            c.send(b"".join(get("/big?4000000") for _ in range(10)))
            await until(lambda: server.stats()["connections"] == 0, within=5.0)
            assert len(app.handled) < 10
            c.close()
    run(body())


def test_accepted_sockets_have_tcp_nodelay(run: Run) -> None:
    async def body() -> None:
        async with serving() as (server, _app):
            c = await Client.connect(server)
            c.send(get("/"))
            await c.reply()
            sock = next(iter(server.conns))._transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            c.close()
    run(body())


# --- shutdown ---------------------------------------------------------------------------


def test_shutdown_drains_then_aborts(run: Run) -> None:
    async def body() -> None:
        app = App()
        server = HttpServer(app, ServerLimits())
        await listen(server)
        port = server.port
        idle, busy, stuck = [await Client.connect(server) for _ in range(3)]
        idle.send(get("/"))
        await idle.reply()
        busy.send(get("/slow/300"))
        stuck.send(get("/slow/5000"))
        await until(lambda: len(app.handled) == 3)
        t0 = time.monotonic()
        shutdown = asyncio.create_task(server.shutdown(1.0))
        assert await idle.closed(within=0.3)                    # idle: closed at once
        with pytest.raises(OSError):                            # no new connections
            await asyncio.open_connection("127.0.0.1", port)
        r = await busy.reply()                                  # in flight: completes
        assert r.status == 200 and r.headers["connection"] == "close"
        assert await busy.closed(within=0.5)
        assert not app.aborted
        assert await stuck.closed(within=3.0)                   # past grace: aborted
        await asyncio.wait_for(shutdown, 3.0)
        assert 0.9 <= time.monotonic() - t0 < 2.5
        assert app.aborted == ["/slow/5000"]
        assert server.stats()["connections"] == 0
    run(body())


# --- requests answered inside the parser, clocks started at the end of a chunk ---------


def test_connect_is_answered_plainly_then_closed(run: Run) -> None:
    async def body() -> None:
        async with serving() as (server, app):
            c = await Client.connect(server)
            c.send(b"CONNECT /x HTTP/1.1\r\nHost: h\r\n\r\n" + get("/never"))
            r = await c.reply()
            assert r.status == 200 and r.json()["method"] == "CONNECT"
            assert r.headers["connection"] == "close"
            assert await c.closed() and len(app.handled) == 1
    run(body())


def test_requests_after_a_shutdown_reply_in_the_same_chunk_are_not_handled(run: Run) -> None:
    async def body() -> None:
        app = App()
        server = HttpServer(app, ServerLimits())
        await listen(server)
        c = await Client.connect(server)
        c.send(b"GET /a HTTP/1.1\r\nHost: t\r\n")      # a head arriving: not idle
        await until(lambda: bool(server.conns))
        await asyncio.sleep(0.05)
        shutdown = asyncio.create_task(server.shutdown(2.0))
        await asyncio.sleep(0.05)
        c.send(b"\r\n" + get("/b") + get("/c"))        # answered synchronously
        r = await c.reply()
        assert r.json()["path"] == "/a" and r.headers["connection"] == "close"
        assert await c.closed()
        await asyncio.wait_for(shutdown, 3.0)
        assert [req.path for req in app.handled] == ["/a"]
        assert server.stats()["requests"] == 1
    run(body())


def test_header_timeout_runs_from_the_first_byte_across_chunks(run: Run) -> None:
    async def body() -> None:
        async with serving(header_timeout_s=0.4, body_timeout_s=5.0) as (server, _app):
            c = await Client.connect(server)
            t0 = time.monotonic()
            c.send(b"GET /slow-head HTTP/1.1\r\n")
            for _ in range(3):                      # later chunks do not extend it
                await asyncio.sleep(0.1)
                c.send(b"X-More: 1\r\n")
            assert_error(await c.reply(), 408)
            assert 0.35 <= time.monotonic() - t0 < 0.65
            c = await Client.connect(server)        # the body's clock: from its head's end
            c.send(b"POST /b HTTP/1.1\r\nContent-Length: 10\r\n")
            await asyncio.sleep(0.3)
            c.send(b"\r\nabc")
            await asyncio.sleep(0.3)                # 0.6 s from the first byte: no 408
            c.send(b"defghij")
            assert (await c.reply()).json()["body"] == "abcdefghij"
            c.close()
    run(body())


def test_repeated_targets_parse_alike(run: Run) -> None:
    """Parsed targets are cached by their bytes: the second sight of each is the same."""
    async def body() -> None:
        async with serving() as (server, _app):
            c = await Client.connect(server)
            cases = [(b"/v1/models/m:predict", "/v1/models/m:predict", ""),
                     (b"/v1/models/m?x=1", "/v1/models/m", "x=1"),
                     (b"/v1/models/m?x=2", "/v1/models/m", "x=2"),
                     (b"/a%20b?c#frag", "/a%20b", "c"),
                     (b"http://h:1/p?q", "/p", "q"),
                     (b"/" + b"l" * 300, "/" + "l" * 300, "")]     # too long to cache
            for _ in range(2):
                for raw, path, query in cases:
                    c.send(b"GET " + raw + b" HTTP/1.1\r\n\r\n")
                    got = (await c.reply()).json()
                    assert (got["path"], got["query"]) == (path, query)
            c.close()
    run(body())
