"""lb.http.client against real sockets: an aiohttp server for normal traffic and a
raw asyncio server whose every byte the test scripts, on both asyncio and uvloop,
and on uvloop to nodes over TLS (certificates made by the tests): a node's https://
pool behaves as its http:// one."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import struct
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web

from harness.certs import CA
from lb.errors import BadRequest, UpstreamConnectError, UpstreamError, UpstreamTimeout
from lb.http.client import ClientLimits, NodeClient, Response
from tests.lb.http.conftest import TLS, Runner, runner
from tests.procs import free_port


@pytest.fixture
def run(run_tls: Runner) -> Runner:
    """Every test of this module on asyncio, uvloop and uvloop over TLS."""
    return run_tls


def _scheme() -> str:
    return "https" if TLS[0] else "http"


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s"
            % (len(body), extra, body))


class RawConn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.requests: list[bytes] = []
        self.gone = asyncio.Event()          # the client closed the connection
        self.reading = False
        self.drain: asyncio.Task[None] | None = None

    async def request(self) -> bytes | None:
        """The next whole request, or None when the client closed the connection."""
        self.reading = True
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            req = head + await self.reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError):
            self.gone.set()
            return None
        finally:
            self.reading = False
        self.requests.append(req)
        return req

    async def _read_to_eof(self) -> None:
        with contextlib.suppress(ConnectionError):
            while await self.reader.read(65536):
                pass
        self.gone.set()

    async def peer_closed(self, within_s: float = 3.0) -> bool:
        """Whether the client closes the connection within `within_s` (reads what it sends)."""
        if not self.reading and self.drain is None:
            self.drain = asyncio.ensure_future(self._read_to_eof())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.gone.wait(), within_s)
        return self.gone.is_set()

    def reset(self) -> None:
        """Close with RST (SO_LINGER 0), as a crashing node would."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Script = Callable[[RawConn, int], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(script: Script) -> AsyncIterator[tuple[str, list[RawConn]]]:
    """A server that runs `script(conn, index)` for every accepted connection."""
    conns: list[RawConn] = []
    tasks: list[asyncio.Task[Any]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        conn = RawConn(reader, writer)
        conns.append(conn)
        # Cancelled by the cleanup below; ending normally keeps asyncio's stream callback
        # from logging the cancellation as an error (Python 3.11).
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            await script(conn, len(conns) - 1)

    port = free_port()
    tls = TLS[0]
    server = await asyncio.start_server(handle, "127.0.0.1", port,
                                        ssl=tls[0] if tls else None)
    try:
        yield f"{_scheme()}://127.0.0.1:{port}", conns
    finally:
        server.close()
        for c in conns:
            c.writer.transport.abort()
            if c.drain is not None:
                tasks.append(c.drain)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def serve_forever(conn: RawConn, _: int) -> None:
    while await conn.request() is not None:
        conn.writer.write(ok())


async def never_answer(conn: RawConn, _: int) -> None:
    await conn.request()
    await conn.peer_closed(10)


async def peer(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("ms", 0)) / 1000)
    assert request.transport is not None
    return web.json_response({"port": request.transport.get_extra_info("peername")[1]})


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.Response(body=body, content_type="application/x-echo",
                        headers={"X-Got-Type": request.content_type,
                                 "X-Hello": request.headers.get("X-Hello", "")})


async def chunked(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse()
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for i in range(int(request.query["parts"])):
        await resp.write(b"part%d;" % i)
        await asyncio.sleep(0.005)
    await resp.write_eof()
    return resp


async def big(request: web.Request) -> web.Response:
    return web.Response(body=b"x" * int(request.query["n"]))


@contextlib.asynccontextmanager
async def aio_server(ssl_ctx: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    if ssl_ctx is None and TLS[0] is not None:
        ssl_ctx = TLS[0][0]
    app = web.Application()
    app.add_routes([web.get("/peer", peer), web.post("/echo", echo),
                    web.get("/chunked", chunked), web.get("/big", big)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_ctx).start()
    try:
        yield f"{'https' if ssl_ctx else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def call(client: NodeClient, path: str, body: bytes | None = None,
               within_s: float = 5.0, method: str | None = None) -> Response:
    deadline = asyncio.get_running_loop().time() + within_s
    return await client.send(method or ("GET" if body is None else "POST"), path, body, deadline)


def start(client: NodeClient, path: str, within_s: float,
          on_done: Callable[[asyncio.Future[Response]], object]) -> asyncio.Future[Response]:
    """A GET whose future is not awaited here, with `on_done` (the on_done tests)."""
    return client.send("GET", path, None, asyncio.get_running_loop().time() + within_s,
                       on_done=on_done)


async def port_of(client: NodeClient, ms: int = 0) -> int:
    resp = await call(client, f"/peer?ms={ms}")
    assert resp.status == 200, resp
    return int(resp.body.split(b":")[1].strip(b" }"))


async def eventually(check: Callable[[], bool], what: str, within_s: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def node(url: str, **limits: Any) -> NodeClient:
    """A pool to `url`, trusting the tests' CA when the test runs over TLS."""
    tls = TLS[0]
    return NodeClient("n1", url, ClientLimits(**limits), ssl_context=tls[1] if tls else None)


# -- keep-alive and the bound -------------------------------------------------------------


def test_sequential_calls_share_one_connection(run: Any) -> None:
    async def main() -> None:
        async with aio_server() as url:
            client = node(url)
            ports = [await port_of(client) for _ in range(5)]
            assert len(set(ports)) == 1
            assert client.stats() | {} == {"open": 1, "idle": 1, "busy": 0, "connecting": 0,
                                          "waiting": 0, "created": 1, "reused": 4, "failed": 0}
            await client.close()
    run(main())


def test_most_recently_returned_connection_is_reused_first(run: Any) -> None:
    async def main() -> None:
        async with aio_server() as url:
            client = node(url)
            first, second = await asyncio.gather(port_of(client, 20), port_of(client, 250))
            assert first != second
            # `second` came back last, so it is on top of the idle stack.
            assert [await port_of(client) for _ in range(3)] == [second] * 3
            assert client.stats()["created"] == 2
            await client.close()
    run(main())


def test_max_connections_bounds_concurrent_requests(run: Any) -> None:
    async def main() -> None:
        async with aio_server() as url:
            client = node(url, max_connections=2)
            calls = [asyncio.ensure_future(port_of(client, 200)) for _ in range(5)]
            await asyncio.sleep(0.05)
            assert client.stats()["open"] == 2
            assert client.stats()["waiting"] == 3
            ports = await asyncio.gather(*calls)
            assert len(ports) == 5
            assert len(set(ports)) == 2        # the server accepted two connections in all
            assert client.stats()["created"] == 2
            await client.close()
    run(main())


def test_pool_wait_is_bounded_by_the_deadline(run: Any) -> None:
    async def main() -> None:
        async with aio_server() as url:
            client = node(url, max_connections=1)
            slow = asyncio.ensure_future(port_of(client, 1000))
            await asyncio.sleep(0.05)
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(UpstreamTimeout, match="no free connection"):
                await call(client, "/peer", within_s=0.2)
            assert loop.time() - start < 0.8
            assert client.stats()["waiting"] == 0
            assert await slow > 0               # the request holding the slot is unharmed
            await client.close()
    run(main())


# -- connect failures and stale connections ------------------------------------------------


def test_connect_refused_is_a_connect_error(run: Any) -> None:
    async def main() -> None:
        client = node(f"http://127.0.0.1:{free_port()}")
        with pytest.raises(UpstreamConnectError, match="ConnectionRefused"):
            await call(client, "/")
        assert client.stats()["open"] == 0 and client.stats()["failed"] == 1
    run(main())


def test_connect_timeout(run: Any) -> None:
    async def main() -> None:
        with socket.socket() as listener:     # backlog full: further SYNs are dropped
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            filler = socket.create_connection(listener.getsockname())
            client = node(f"http://127.0.0.1:{listener.getsockname()[1]}",
                          connect_timeout_s=0.2)
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(UpstreamTimeout, match="connect timed out"):
                await call(client, "/", within_s=5.0)
            assert loop.time() - start < 2.0
            assert client.stats()["open"] == 0
            filler.close()
    run(main())


def test_idle_connection_closed_by_the_node_is_never_used(run: Any) -> None:
    async def answer_once_then_close(conn: RawConn, _: int) -> None:
        await conn.request()
        conn.writer.write(ok())
        await asyncio.sleep(0.05)
        conn.writer.close()

    async def main() -> None:
        async with raw_server(answer_once_then_close) as (url, conns):
            client = node(url)
            assert (await call(client, "/a")).body == b"ok"
            await eventually(lambda: client.stats()["idle"] == 0, "the idle close to be seen")
            assert (await call(client, "/b")).body == b"ok"
            assert [len(c.requests) for c in conns] == [1, 1]
            assert client.stats()["reused"] == 0 and client.stats()["created"] == 2
            await client.close()
    run(main())


def test_reused_connection_lost_before_any_byte_is_retried_once_on_a_fresh_one(
        run: Any) -> None:
    async def close_on_second_request(conn: RawConn, index: int) -> None:
        while await conn.request() is not None:
            if index == 0 and len(conn.requests) == 2:
                conn.writer.close()          # the node's keep-alive close raced our write
                return
            conn.writer.write(ok())

    async def main() -> None:
        async with raw_server(close_on_second_request) as (url, conns):
            client = node(url)
            assert (await call(client, "/a")).status == 200
            assert (await call(client, "/b")).status == 200
            assert [len(c.requests) for c in conns] == [2, 1]
            assert client.stats()["failed"] == 0
            await client.close()
    run(main())


def test_fresh_connection_lost_before_any_byte_is_not_retried(run: Any) -> None:
    async def close_at_once(conn: RawConn, _: int) -> None:
        await conn.request()
        conn.writer.close()

    async def main() -> None:
        async with raw_server(close_at_once) as (url, conns):
            client = node(url)
            with pytest.raises(UpstreamConnectError, match="closed"):
                await call(client, "/a")
            assert len(conns) == 1
            assert client.stats()["open"] == 0
    run(main())


def test_reset_mid_response_is_an_upstream_error_and_not_retried(run: Any) -> None:
    async def second_answer_cut(conn: RawConn, _: int) -> None:
        await conn.request()
        conn.writer.write(ok())
        await conn.request()
        conn.writer.write(ok(b"x" * 100)[:-50])
        await conn.writer.drain()
        await asyncio.sleep(0.05)
        conn.reset()

    async def main() -> None:
        async with raw_server(second_answer_cut) as (url, conns):
            client = node(url)
            await call(client, "/a")
            with pytest.raises(UpstreamError) as info:
                await call(client, "/b")
            assert type(info.value) is UpstreamError     # response bytes had arrived
            assert len(conns) == 1
    run(main())


def test_reset_before_any_byte_is_a_connect_error(run: Any) -> None:
    async def reset(conn: RawConn, _: int) -> None:
        await conn.request()
        conn.reset()

    async def main() -> None:
        async with raw_server(reset) as (url, _):
            with pytest.raises(UpstreamConnectError):
                await call(node(url), "/a")
    run(main())


# -- deadlines, cancel, close ---------------------------------------------------------------


def test_response_deadline_times_out_and_closes_the_connection(run: Any) -> None:
    async def main() -> None:
        async with raw_server(never_answer) as (url, conns):
            client = node(url)
            with pytest.raises(UpstreamTimeout, match="no complete response"):
                await call(client, "/a", within_s=0.2)
            assert client.stats()["open"] == 0
            assert await conns[0].peer_closed()
    run(main())


def test_cancel_closes_the_connection_and_frees_the_slot_at_once(run: Any) -> None:
    async def main() -> None:
        async with raw_server(never_answer) as (url, conns):
            client = node(url, max_connections=1)
            fut = client.send("GET", "/a", None, asyncio.get_running_loop().time() + 10)
            await eventually(lambda: bool(conns and conns[0].requests), "the request")
            fut.cancel()
            assert client.stats()["open"] == 0          # synchronously
            assert await conns[0].peer_closed()
            second = client.send("GET", "/b", None, asyncio.get_running_loop().time() + 10)
            await eventually(lambda: len(conns) == 2 and bool(conns[1].requests),
                             "the next request on the freed slot")
            second.cancel()
    run(main())


def test_cancelling_the_awaiting_task_aborts_the_exchange(run: Any) -> None:
    async def main() -> None:
        async with raw_server(never_answer) as (url, conns):
            client = node(url)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await call(client, "/a")
            assert client.stats()["open"] == 0
            assert await conns[0].peer_closed()
    run(main())


def test_close_lets_the_request_in_flight_finish_then_refuses(run: Any) -> None:
    async def main() -> None:
        async with aio_server() as url:
            client = node(url)
            await port_of(client)               # one idle connection
            slow = asyncio.ensure_future(port_of(client, 300))
            await asyncio.sleep(0.05)
            await client.close(grace_s=3.0)
            assert slow.done() and await slow > 0
            assert client.stats()["open"] == 0
            with pytest.raises(UpstreamConnectError, match="closed"):
                await call(client, "/peer")
            await client.close()                # idempotent
    run(main())


def test_close_ends_requests_still_running_after_the_grace(run: Any) -> None:
    async def main() -> None:
        async with raw_server(never_answer) as (url, conns):
            client = node(url)
            fut = client.send("GET", "/a", None, asyncio.get_running_loop().time() + 10)
            await eventually(lambda: bool(conns and conns[0].requests), "the request")
            await client.close(grace_s=0.1)
            with pytest.raises(UpstreamConnectError):
                await fut
            assert await conns[0].peer_closed()
    run(main())


def test_keepalive_expiry_closes_idle_connections(run: Any) -> None:
    async def main() -> None:
        async with raw_server(serve_forever) as (url, conns):
            client = node(url, keepalive_s=0.2)
            await call(client, "/a")
            await call(client, "/b")
            await eventually(lambda: client.stats()["open"] == 0, "the idle expiry")
            assert await conns[0].peer_closed()
            await call(client, "/c")
            assert len(conns) == 2
            await client.close()
    run(main())


# -- response framing ----------------------------------------------------------------------


def test_request_bytes_and_response_fields(run: Any) -> None:
    async def main() -> None:
        async with aio_server() as url:
            client = node(url)
            deadline = asyncio.get_running_loop().time() + 5
            resp = await client.send("POST", "/echo", b'{"a": 1}', deadline, b"X-Hello: hi\r\n")
            assert (resp.status, resp.body, resp.content_type) == (
                200, b'{"a": 1}', "application/x-echo")
            headers = dict(resp.headers)
            assert headers[b"x-got-type"] == b"application/json"
            assert headers[b"x-hello"] == b"hi"
            assert (await call(client, "/nowhere")).status == 404
            await client.close()
    run(main())


def test_request_line_and_headers_on_the_wire(run: Any) -> None:
    async def main() -> None:
        async with raw_server(serve_forever) as (url, conns):
            client = node(url)
            await call(client, "/v1/models/m:predict", b"{}")
            await call(client, "/v1/models/m")
            port = url.rsplit(":", 1)[1]
            assert conns[0].requests == [
                b"POST /v1/models/m:predict HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nContent-Length: 2"
                b"\r\nContent-Type: application/json\r\n\r\n{}" % port.encode(),
                b"GET /v1/models/m HTTP/1.1\r\nHost: 127.0.0.1:%s\r\n\r\n" % port.encode()]
            with pytest.raises(BadRequest):
                await call(client, "/a b")
            await client.close()
    run(main())


def test_chunked_response(run: Any) -> None:
    async def main() -> None:
        async with aio_server() as url:
            client = node(url)
            resp = await call(client, "/chunked?parts=5")
            assert resp.body == b"part0;part1;part2;part3;part4;"
            assert (b"transfer-encoding", b"chunked") in resp.headers
            assert (await call(client, "/chunked?parts=2")).body == b"part0;part1;"
            assert client.stats()["created"] == 1
            await client.close()
    run(main())


def test_head_response_has_no_body_and_its_connection_is_not_reused(run: Any) -> None:
    async def main() -> None:
        async with aio_server() as url:
            client = node(url)
            resp = await call(client, "/big?n=100", method="HEAD")
            assert (resp.status, resp.body) == (200, b"")
            assert (b"content-length", b"100") in resp.headers
            assert len((await call(client, "/big?n=100")).body) == 100
            assert client.stats()["created"] == 2
            await client.close()
    run(main())


@pytest.mark.parametrize("head", [b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n",
                                  b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"])
def test_close_delimited_response(run: Any, head: bytes) -> None:
    async def body_until_close(conn: RawConn, _: int) -> None:
        await conn.request()
        conn.writer.write(head + b"hello ")
        await conn.writer.drain()
        await asyncio.sleep(0.02)
        conn.writer.write(b"world")
        conn.writer.close()

    async def main() -> None:
        async with raw_server(body_until_close) as (url, conns):
            client = node(url)
            resp = await call(client, "/a")
            assert resp.body == b"hello world"
            ctype = "text/plain" if b"1.0" in head else "application/json"
            assert resp.content_type == ctype
            await call(client, "/b")
            assert len(conns) == 2
            await client.close()
    run(main())


def test_connection_close_from_the_node_is_honoured(run: Any) -> None:
    async def answer_with_close(conn: RawConn, _: int) -> None:
        await conn.request()
        conn.writer.write(ok(extra=b"Connection: close\r\n"))
        await conn.peer_closed(10)             # the client must close it, not us

    async def main() -> None:
        async with raw_server(answer_with_close) as (url, conns):
            client = node(url)
            assert (await call(client, "/a")).body == b"ok"
            assert await conns[0].peer_closed()
            assert (await call(client, "/b")).body == b"ok"
            assert len(conns) == 2 and client.stats()["reused"] == 0
            await client.close()
    run(main())


def test_interim_1xx_responses_are_skipped(run: Any) -> None:
    async def interim_first(conn: RawConn, _: int) -> None:
        while await conn.request() is not None:
            conn.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n"
                              b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n")
            await conn.writer.drain()
            await asyncio.sleep(0.01)
            conn.writer.write(ok(b"final"))

    async def main() -> None:
        async with raw_server(interim_first) as (url, conns):
            client = node(url)
            for _ in range(2):
                resp = await call(client, "/a")
                assert (resp.status, resp.body) == (200, b"final")
                assert all(name != b"link" for name, _ in resp.headers)
            assert len(conns) == 1
            await client.close()
    run(main())


def test_max_response_bytes(run: Any) -> None:
    async def main() -> None:
        async with aio_server() as url:
            client = node(url, max_response_bytes=1000)
            assert len((await call(client, "/big?n=1000")).body) == 1000
            with pytest.raises(UpstreamError, match="max_response_bytes"):
                await call(client, "/big?n=1001")
            with pytest.raises(UpstreamError, match="max_response_bytes"):
                await call(client, "/chunked?parts=200")     # no length: counted as it comes
            assert client.stats()["open"] <= 1
            assert (await call(client, "/big?n=10")).status == 200
            await client.close()
    run(main())


def test_unparseable_response_is_an_upstream_error(run: Any) -> None:
    async def junk(conn: RawConn, _: int) -> None:
        await conn.request()
        conn.writer.write(b"SMTP ready\r\n\r\n")
        await conn.peer_closed(10)

    async def main() -> None:
        async with raw_server(junk) as (url, conns):
            client = node(url)
            with pytest.raises(UpstreamError, match="unparseable"):
                await call(client, "/a")
            assert await conns[0].peer_closed()
    run(main())


def test_unsolicited_response_closes_the_idle_connection(run: Any) -> None:
    async def answer_twice(conn: RawConn, _: int) -> None:
        await conn.request()
        conn.writer.write(ok())
        await asyncio.sleep(0.05)
        conn.writer.write(ok(b"nobody asked"))
        await conn.peer_closed(10)

    async def main() -> None:
        async with raw_server(answer_twice) as (url, conns):
            client = node(url)
            assert (await call(client, "/a")).body == b"ok"
            assert await conns[0].peer_closed()
            assert (await call(client, "/b")).body == b"ok"
            assert len(conns) == 2
            await client.close()
    run(main())


# -- https --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make a self-signed certificate")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=node",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=30)
    return cert, key


def test_https_with_verification(run: Any, tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files

    async def main() -> None:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)
        async with aio_server(server_ctx) as url:
            trusting = ssl.create_default_context(cafile=str(cert))
            client = NodeClient("n1", url, ClientLimits(), ssl_context=trusting)
            ports = [await port_of(client) for _ in range(3)]
            assert len(set(ports)) == 1 and client.stats()["created"] == 1
            await client.close()
            with pytest.raises(UpstreamConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                # the default context does not trust it
                await call(NodeClient("n1", url, ClientLimits()), "/peer")
    run(main())


def test_https_node_checks_expiry_name_and_client_certificates(tmp_path: Path) -> None:
    """What upstream.tls guarantees, on the pool itself (uvloop): an expired node
    certificate, one for another name (unless server_name says that name), and a node
    that wants a client certificate (mTLS) the pool does not present, all fail to
    connect."""
    run = runner("uvloop")
    ca = CA(tmp_path)
    expired = ca.issue("expired", "node", expired=True)
    other_name = ca.issue("named", "node", hosts=("node.internal",))
    proxy_pair = ca.issue("proxy", "tfserving-lb", client=True)

    def server_ctx(pair: Any, client_ca: bool = False) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pair.cert, pair.key)
        if client_ca:
            ctx.load_verify_locations(ca.path)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def pool(url: str, pair: Any = None, server_name: str | None = None) -> NodeClient:
        ctx = ssl.create_default_context(cafile=str(ca.path))
        if pair is not None:
            ctx.load_cert_chain(pair.cert, pair.key)
        return NodeClient("n1", url, ClientLimits(), ssl_context=ctx, server_name=server_name)

    async def main() -> None:
        async with aio_server(server_ctx(expired)) as url:
            with pytest.raises(UpstreamConnectError, match="certificate has expired"):
                await call(pool(url), "/peer")
        async with aio_server(server_ctx(other_name)) as url:
            with pytest.raises(UpstreamConnectError, match="match"):
                await call(pool(url), "/peer")
            client = pool(url, server_name="node.internal")
            assert (await call(client, "/peer")).status == 200
            await client.close()
        async with aio_server(server_ctx(other_name, client_ca=True)) as url:
            with pytest.raises((UpstreamConnectError, UpstreamError)):
                await call(pool(url, server_name="node.internal"), "/peer")
            client = pool(url, proxy_pair, server_name="node.internal")
            assert (await call(client, "/peer")).status == 200
            await client.close()
    run(main())


# -- one deadline timer per pool, cached request lines ----------------------------------------


def test_each_exchange_times_out_at_its_own_deadline(run: Any) -> None:
    """The pool's one timer is moved earlier by a send with an earlier deadline, and
    re-armed for the exchanges left when it fires; exchanges that finish leave it be."""
    async def main() -> None:
        async with raw_server(never_answer) as (url, _conns), aio_server() as fast_url:
            client = node(url)
            loop = asyncio.get_running_loop()
            start = loop.time()

            async def timed(path: str, within_s: float) -> float:
                with pytest.raises(UpstreamTimeout, match="no complete response"):
                    await call(client, path, within_s=within_s)
                return loop.time() - start

            late = asyncio.ensure_future(timed("/late", 0.9))
            await asyncio.sleep(0.05)
            early = asyncio.ensure_future(timed("/early", 0.2))
            middle = asyncio.ensure_future(timed("/middle", 0.5))
            assert 0.19 <= await early < 0.45       # (a millisecond's timer resolution)
            assert 0.49 <= await middle < 0.75
            assert 0.89 <= await late < 1.15
            assert client.stats()["open"] == 0
            other = node(fast_url)                       # finished exchanges: no timeouts
            for _ in range(20):
                assert (await call(other, "/peer", within_s=0.3)).status == 200
            await asyncio.sleep(0.4)
            assert other.stats()["failed"] == 0 and other.stats()["idle"] == 1
            await other.close()
            await client.close()
    run(main())


def test_request_lines_are_cached_per_method_and_path(run: Any) -> None:
    async def main() -> None:
        async with raw_server(serve_forever) as (url, conns):
            client = node(url)
            for _ in range(2):
                await call(client, "/v1/models/m")
                await call(client, "/v1/models/m", b"{}")
                with pytest.raises(BadRequest):
                    await call(client, "/a\r\nX-Injected: 1")
            port = url.rsplit(":", 1)[1].encode()
            get = b"GET /v1/models/m HTTP/1.1\r\nHost: 127.0.0.1:%s\r\n\r\n" % port
            post = (b"POST /v1/models/m HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nContent-Length: 2\r\n"
                    b"Content-Type: application/json\r\n\r\n{}" % port)
            assert conns[0].requests == [get, post, get, post]
            assert client.stats()["failed"] == 2
            await client.close()
    run(main())


# -- on_done: the exchange reports itself, without a loop round trip ----------------------


class InsideDataReceived:
    """A connection's protocol, wrapped (transport.set_protocol): says whether its
    data_received is running. (Frames of compiled modules do not show in a stack.)"""

    def __init__(self, real: asyncio.BaseProtocol) -> None:
        self.real = real
        self.inside = False

    def data_received(self, data: bytes) -> None:
        self.inside = True
        try:
            self.real.data_received(data)   # type: ignore[attr-defined]
        finally:
            self.inside = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def test_on_done_is_called_once_from_the_io_callback_that_ends_the_exchange(run: Any) -> None:
    """An answer, a deadline and a cancel each call on_done once with the finished
    future, and before any done-callback of the loop has run; never inside send."""
    async def main() -> None:
        async with raw_server(serve_forever) as (url, _conns):
            client = node(url)
            seen: list[tuple[str, bool, bool]] = []
            loop_saw: list[str] = []

            in_io: list[bool] = []
            assert (await call(client, "/warm")).status == 200   # one idle connection,
            transport = client._idle[0].transport                # watched from now on
            assert transport is not None
            spy = InsideDataReceived(transport.get_protocol())
            transport.set_protocol(cast(asyncio.BaseProtocol, spy))   # it delegates

            def on_done(what: str) -> Callable[[asyncio.Future[Response]], None]:
                def done(fut: asyncio.Future[Response]) -> None:
                    seen.append((what, fut.done(), bool(loop_saw)))
                    in_io.append(spy.inside)
                return done

            fut = start(client, "/a", 5, on_done("answer"))
            fut.add_done_callback(lambda _f: loop_saw.append("answer"))
            assert seen == []                       # not before send returned
            assert (await fut).status == 200
            assert seen == [("answer", True, False)]     # before the loop's callbacks
            assert in_io == [True]          # inside the connection's data_received
        async with raw_server(never_answer) as (url, _conns):
            client = node(url)
            loop_saw.clear()
            late = start(client, "/b", 0.1, on_done("deadline"))
            late.add_done_callback(lambda _f: loop_saw.append("deadline"))
            with pytest.raises(UpstreamTimeout):
                await late
            loop_saw.clear()
            gone = start(client, "/c", 5, on_done("cancel"))
            gone.add_done_callback(lambda _f: loop_saw.append("cancel"))
            gone.cancel()
            await asyncio.sleep(0.01)
            assert seen[1:] == [("deadline", True, False), ("cancel", True, False)]
            await client.close()
    run(main())


def test_on_done_of_an_exchange_that_fails_before_starting_runs_after_send(run: Any) -> None:
    async def main() -> None:
        async with raw_server(serve_forever) as (url, _conns):
            client = node(url)
            seen: list[bool] = []
            fut = start(client, "/a", -1, lambda f: seen.append(f.done()))
            assert seen == []                       # not inside send, although done
            with pytest.raises(UpstreamTimeout):
                await fut
            await asyncio.sleep(0)
            assert seen == [True]
            await client.close()
    run(main())


def test_on_done_that_raises_is_logged_and_the_connection_serves_on(
        run: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with raw_server(serve_forever) as (url, conns):
            client = node(url)

            def broken(_fut: asyncio.Future[Response]) -> None:
                raise RuntimeError("a bug in the caller")

            fut = start(client, "/a", 5, broken)
            assert (await fut).status == 200
            assert (await call(client, "/b")).status == 200
            assert len(conns) == 1 and client.stats()["reused"] == 1
            await client.close()
    run(main())
    assert "on_done of an exchange" in caplog.text
