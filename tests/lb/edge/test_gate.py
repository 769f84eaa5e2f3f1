"""The gate over real connections, in-process on uvloop: an HttpServer whose app asks
`Edge.rest` first, as the REST front does. Credentials remembered per connection,
client-certificate identities, scopes, budgets, and a reload of the keys."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop
import yaml

from harness.certs import CA
from lb.config import Config, parse_config
from lb.edge.gate import Edge
from lb.errors import ConfigError, LbError
from lb.http.server import Exchange, HttpServer, ServerLimits

NODE = [{"name": "a", "rest": "http://127.0.0.1:1"}]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(asyncio.wait_for(coro, 30))


class GatedApp:
    """What the REST front does with the gate: refused → the error, else 200."""

    def __init__(self, edge: Edge) -> None:
        self.edge = edge
        self.served = 0
        edge.bind_rest(self.serve, self.refuse)

    def handle(self, ex: Exchange) -> None:
        if self.edge.rest(ex):
            self.serve(ex)

    def serve(self, ex: Exchange) -> None:
        self.served += 1
        ex.respond(200, b'{"ok": true}')

    def refuse(self, ex: Exchange, exc: LbError) -> None:
        headers = exc.headers
        if exc.retry_after is not None:
            headers += b"Retry-After: %d\r\n" % exc.retry_after
        ex.respond(exc.status, json.dumps({"error": str(exc)}).encode(), headers=headers)


def config(auth: dict[str, Any], **more: Any) -> Config:
    return parse_config({"nodes": NODE, "auth": auth, **more})


class Conn:
    """One keep-alive client connection speaking raw HTTP/1.1."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def ask(self, path: str, headers: str = "", body: bytes = b"") -> tuple[int, bytes]:
        method = "POST" if body else "GET"
        self.writer.write(f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: "
                          f"{len(body)}\r\n{headers}\r\n".encode() + body)
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        size = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        return int(head.split(b" ")[1]), head + await self.reader.readexactly(size)


async def connect(server: HttpServer, ctx: ssl.SSLContext | None = None) -> Conn:
    if ctx is None:
        return Conn(*await asyncio.open_connection("127.0.0.1", server.port))
    return Conn(*await asyncio.open_connection("127.0.0.1", server.port, ssl=ctx,
                                               server_hostname="localhost"))


def test_credentials_are_hashed_once_per_connection() -> None:
    async def body() -> None:
        edge = Edge(config({"keys": [{"id": "a", "sha256": sha("key-a"), "models": ["m*"]},
                                     {"id": "b", "sha256": sha("key-b"), "models": ["x"]}]}))
        store = edge.keys
        assert store is not None
        app = GatedApp(edge)
        server = HttpServer(app, ServerLimits())
        await server.start("127.0.0.1", 0)
        c = await connect(server)
        for _ in range(5):
            assert (await c.ask("/v1/models/m:predict", "x-api-key: key-a\r\n", b"{}"))[0] == 200
        assert store.lookups == 1                             # hashed once on this connection
        status, reply = await c.ask("/v1/models/m:predict", "x-api-key: key-b\r\n", b"{}")
        assert status == 403 and b"key 'b' may not call model 'm'" in reply
        assert (await c.ask("/v1/models/m:predict", "Authorization: Bearer key-a\r\n",
                            b"{}"))[0] == 200
        status, reply = await c.ask("/v1/models/m:predict", "", b"{}")
        assert status == 401 and b"WWW-Authenticate: Bearer" in reply
        assert (await c.ask("/healthz"))[0] == 200             # open by default
        assert (await c.ask("/v1/models/m"))[0] == 401         # status is not
        assert (await c.ask("/nope", "x-api-key: key-a\r\n"))[0] == 200   # the front's 404
        assert store.lookups == 4 and app.served == 8     # a, b, Bearer a, a: each a change
        # a reload: the memo of every connection is stale, the new keys decide
        new = config({"keys": [{"id": "a", "sha256": sha("key-a2"), "models": ["*"]}],
                      "open": ["health", "status"]})
        edge.apply(new, edge.prepare(new))
        assert (await c.ask("/v1/models/m:predict", "Authorization: Bearer key-a\r\n",
                            b"{}"))[0] == 401
        assert (await c.ask("/v1/models/m:predict", "x-api-key: key-a2\r\n", b"{}"))[0] == 200
        assert (await c.ask("/v1/models/m"))[0] == 200         # status opened
        principal = edge.keys.principals["a"] if edge.keys else None
        assert principal is not None and principal.allowed == 8 and principal.forbidden == 0
        assert edge.stats()["auth"]["by_key"]["a"]["allowed"] == 8     # kept across reload
        c.writer.close()
        await server.shutdown(1.0)
    run(body())


def test_a_client_certificate_stands_for_a_key(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    server_pair = ca.issue("server", "localhost")
    svc = ca.issue("svc", "svc-a", client=True, org="ml")
    other = ca.issue("other", "someone", client=True)

    async def body() -> None:
        edge = Edge(config({"keys": [{"id": "svc", "subject": "CN=svc-a,O=ml"},
                                     {"id": "k", "sha256": sha("key"), "models": ["m"]}]},
                           listen={"tls": {"cert": str(server_pair.cert),
                                           "key": str(server_pair.key),
                                           "client_ca": str(ca.path)}}))
        assert edge.tls is not None
        server = HttpServer(GatedApp(edge), ServerLimits())
        await server.start("127.0.0.1", 0, ssl=edge.tls.context)

        def ctx(pair: Any = None) -> ssl.SSLContext:
            c = ssl.create_default_context(cafile=str(ca.path))
            if pair is not None:
                c.load_cert_chain(pair.cert, pair.key)
            return c
        c = await connect(server, ctx(svc))
        assert (await c.ask("/v1/models/any:predict", "", b"{}"))[0] == 200
        # a key on the same connection is the key's identity, not the certificate's
        assert (await c.ask("/v1/models/any:predict", "x-api-key: key\r\n", b"{}"))[0] == 403
        assert (await c.ask("/v1/models/any:predict", "", b"{}"))[0] == 200
        c.writer.close()
        for pair in (None, other):       # no certificate, or one no key names: 401
            c = await connect(server, ctx(pair))
            status, reply = await c.ask("/v1/models/any:predict", "", b"{}")
            assert status == 401 and b"missing API key" in reply
            c.writer.close()
        await server.shutdown(1.0)
    run(body())


def test_budgets_refuse_with_retry_after_and_count_rows() -> None:
    async def body() -> None:
        edge = Edge(config({"keys": [
            {"id": "r", "sha256": sha("r"), "limits": {"requests_per_s": 2, "burst_s": 1}},
            {"id": "w", "sha256": sha("w"),
             "limits": {"rows_per_s": 10, "burst_s": 1, "per_model": True}}]}))
        app = GatedApp(edge)
        server = HttpServer(app, ServerLimits())
        await server.start("127.0.0.1", 0)
        c = await connect(server)
        codes = [(await c.ask("/v1/models/m", "x-api-key: r\r\n"))[0] for _ in range(4)]
        assert codes == [200, 200, 429, 429]
        status, reply = await c.ask("/v1/models/m", "x-api-key: r\r\n")
        assert status == 429 and b"Retry-After: 1\r\n" in reply
        assert b"rate limit of key 'r' exceeded" in reply
        rows6 = json.dumps({"instances": [[1.0]] * 6}).encode()
        predict = "/v1/models/{}:predict"
        assert (await c.ask(predict.format("m"), "x-api-key: w\r\n", rows6))[0] == 200
        assert (await c.ask(predict.format("m"), "x-api-key: w\r\n", rows6))[0] == 429
        assert (await c.ask(predict.format("n"), "x-api-key: w\r\n", rows6))[0] == 200  # per model
        assert (await c.ask(predict.format("m"), "x-api-key: w\r\n",
                            json.dumps({"instances": [[1.0]] * 4}).encode()))[0] == 200
        keys = edge.stats()["auth"]["by_key"]
        assert (keys["r"]["limited"], keys["w"]["limited"], app.served) == (3, 1, 5)
        c.writer.close()
        await server.shutdown(1.0)
    run(body())


def test_the_keys_file_is_watched(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"

    def write(doc: dict[str, Any]) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc))
        tmp.replace(path)
    write({"keys": [{"id": "f", "sha256": sha("one")}]})

    async def body() -> None:
        cfg = config({"keys_file": str(path)}, reload={"poll_s": 0.05})
        edge = Edge(cfg)
        assert edge.keys is not None and edge.keys.by_key(b"one") is not None
        tasks = [asyncio.create_task(coro, name=name) for coro, name in edge.tasks(lambda: cfg)]

        async def until(check: Any) -> None:
            for _ in range(100):
                if check():
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("not reached")
        write({"keys": [{"id": "f", "sha256": sha("two")}]})
        await until(lambda: edge.keys is not None and edge.keys.by_key(b"two") is not None)
        assert edge.keys is not None and edge.keys.by_key(b"one") is None
        write({"keys": [{"id": "f", "sha256": "the-plaintext-key"}]})
        await until(lambda: edge.keys_error is not None)
        assert "64 hex" in str(edge.keys_error) and "the-plaintext-key" not in str(edge.keys_error)
        assert edge.keys.by_key(b"two") is not None          # the keys in use stay
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    run(body())


def test_no_auth_no_gate() -> None:
    edge = Edge(parse_config({"nodes": NODE}))
    assert not edge.active and edge.keys is None
    with pytest.raises(ConfigError, match=r"auth\.keys"):
        parse_config({"nodes": NODE, "auth": {"keys": [{"id": "x"}]}})
