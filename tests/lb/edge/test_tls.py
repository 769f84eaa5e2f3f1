"""TLS on the fronts, in-process with real handshakes on uvloop: certificates made here
(`harness.certs`), the REST front's HttpServer with `ServerTls.context`, a gRPC server
with `ServerTls.grpc_credentials()`, the gate over real connections.

Covers: ALPN, versions, the cipher policy; a wrong CA and an expired certificate;
mTLS required and optional; garbage, plaintext HTTP and a cut handshake on the TLS
port (a clean close, no reply, no 5xx, no traceback); rotation (new handshakes get
the new pair, open connections carry on, a pair that does not match is not used).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import warnings
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import uvloop

from harness.certs import CA, Pair
from lb.edge.config import ListenTls
from lb.edge.tls import ServerTls, subject_of
from lb.errors import ConfigError
from lb.http.server import Exchange, HttpServer, ServerLimits

GET = b"GET /v1/models/m HTTP/1.1\r\nHost: t\r\n\r\n"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(asyncio.wait_for(coro, 30))


@dataclass
class Pki:
    ca: CA
    other: CA
    server: Pair
    client: Pair
    stranger: Pair          # a client certificate of another CA
    expired_server: Pair
    expired_client: Pair


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca, other = CA(tmp_path / "ca"), CA(tmp_path / "other", "other-ca")
    return Pki(ca, other, ca.issue("server", "localhost"),
               ca.issue("client", "svc-a", client=True, org="ml"),
               other.issue("stranger", "svc-a", client=True, org="ml"),
               ca.issue("old-server", "localhost", expired=True),
               ca.issue("old-client", "svc-a", client=True, org="ml", expired=True))


class Echo:
    """Answers 200 with the client certificate's subject (RFC 4514) or "-"."""

    def handle(self, ex: Exchange) -> None:
        subject = subject_of(ex.connection.peercert()) or "-"
        ex.respond(200, subject.encode(), b"text/plain")


async def serve(tls: ServerTls, app: Any = None) -> HttpServer:
    server = HttpServer(app or Echo(), ServerLimits())
    await server.start("127.0.0.1", 0, ssl=tls.context, handshake_timeout_s=2.0)
    return server


def client_ctx(ca: CA, pair: Pair | None = None,
               max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.path))
    ctx.set_alpn_protocols(["http/1.1"])
    if pair is not None:
        ctx.load_cert_chain(pair.cert, pair.key)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


async def fetch(port: int, ctx: ssl.SSLContext, raw: bytes = GET
                ) -> tuple[int, bytes, ssl.SSLObject]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   server_hostname="localhost")
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        size = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        body = await asyncio.wait_for(reader.readexactly(size), 5)
        return int(head.split(b" ")[1]), body, writer.get_extra_info("ssl_object")
    finally:
        writer.close()


def test_alpn_versions_and_cipher_policy(pki: Pki) -> None:
    async def body() -> None:
        tls = ServerTls(ListenTls(cert=str(pki.server.cert), key=str(pki.server.key)))
        server = await serve(tls)
        status, _b, obj = await fetch(server.port, client_ctx(pki.ca))
        assert status == 200 and obj.selected_alpn_protocol() == "http/1.1"
        assert obj.version() == "TLSv1.3"
        tls12 = client_ctx(pki.ca, max_version=ssl.TLSVersion.TLSv1_2)
        _s, _b, obj = await fetch(server.port, tls12)
        cipher = obj.cipher()
        assert obj.version() == "TLSv1.2" and cipher and cipher[0].startswith("ECDHE-ECDSA-")
        with warnings.catch_warnings():                  # TLS 1.0/1.1 are deprecated
            warnings.simplefilter("ignore", DeprecationWarning)
            old = client_ctx(pki.ca, max_version=ssl.TLSVersion.TLSv1_1)
            old.minimum_version = ssl.TLSVersion.TLSv1
        old.set_ciphers("ALL:@SECLEVEL=0")
        with pytest.raises((ssl.SSLError, ConnectionError)):    # below TLS 1.2: refused
            await fetch(server.port, old)
        await server.shutdown(1.0)
        narrow = ServerTls(ListenTls(cert=str(pki.server.cert), key=str(pki.server.key),
                                     ciphers="ECDHE-ECDSA-AES256-GCM-SHA384"))
        server = await serve(narrow)
        _s, _b, obj = await fetch(server.port, tls12)
        cipher = obj.cipher()
        assert cipher and cipher[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"
        await server.shutdown(1.0)
        only13 = ServerTls(ListenTls(cert=str(pki.server.cert), key=str(pki.server.key),
                                     min_version="1.3"))
        server = await serve(only13)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await fetch(server.port, client_ctx(pki.ca, max_version=ssl.TLSVersion.TLSv1_2))
        assert (await fetch(server.port, client_ctx(pki.ca)))[0] == 200
        await server.shutdown(1.0)
    run(body())


def test_wrong_ca_and_expired_certificate_fail_the_handshake(pki: Pki) -> None:
    async def body() -> None:
        server = await serve(ServerTls(ListenTls(cert=str(pki.server.cert),
                                                 key=str(pki.server.key))))
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            await fetch(server.port, client_ctx(pki.other))
        await server.shutdown(1.0)
        server = await serve(ServerTls(ListenTls(cert=str(pki.expired_server.cert),
                                                 key=str(pki.expired_server.key))))
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
            await fetch(server.port, client_ctx(pki.ca))
        await server.shutdown(1.0)
    run(body())


async def refused(port: int, ctx: ssl.SSLContext) -> bool:
    """True when the server refuses the handshake (TLS 1.3: seen at the first read)."""
    try:
        await fetch(port, ctx)
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return True
    return False


def test_mtls_required_and_optional(pki: Pki) -> None:
    async def body() -> None:
        required = ServerTls(ListenTls(cert=str(pki.server.cert), key=str(pki.server.key),
                                       client_ca=str(pki.ca.path), require_client_cert=True))
        server = await serve(required)
        status, who, _o = await fetch(server.port, client_ctx(pki.ca, pki.client))
        assert status == 200 and who == b"CN=svc-a,O=ml"
        assert await refused(server.port, client_ctx(pki.ca))                  # no cert
        assert await refused(server.port, client_ctx(pki.ca, pki.stranger))    # other CA
        assert await refused(server.port, client_ctx(pki.ca, pki.expired_client))
        assert server.stats()["requests"] == 1
        await server.shutdown(1.0)
        optional = ServerTls(ListenTls(cert=str(pki.server.cert), key=str(pki.server.key),
                                       client_ca=str(pki.ca.path)))
        server = await serve(optional)
        assert (await fetch(server.port, client_ctx(pki.ca)))[1] == b"-"
        assert (await fetch(server.port, client_ctx(pki.ca, pki.client)))[1] == b"CN=svc-a,O=ml"
        assert await refused(server.port, client_ctx(pki.ca, pki.stranger))    # sent: verified
        await server.shutdown(1.0)
    run(body())


@pytest.mark.parametrize("raw", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",                 # plaintext HTTP on the TLS port
    b"\x16\x03\x01\x00\x05hello",                         # a record that is no ClientHello
    bytes(range(256)) * 4,                                # garbage
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",       # a ClientHello cut short
])
def test_bad_bytes_on_the_tls_port_are_closed_cleanly(pki: Pki, raw: bytes,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    async def body() -> None:
        server = await serve(ServerTls(ListenTls(cert=str(pki.server.cert),
                                                 key=str(pki.server.key),
                                                 handshake_timeout_s=0.5)))
        with caplog.at_level(logging.DEBUG):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(raw)
            got = b""
            try:
                while chunk := await asyncio.wait_for(reader.read(65536), 3.0):
                    got += chunk
            except ConnectionResetError:
                pass
            writer.close()
            # nothing HTTP comes back (at most a TLS alert record), and the server lives on
            assert b"HTTP/" not in got and (not got or got[0] == 0x15)
            assert (await fetch(server.port, client_ctx(pki.ca)))[0] == 200
        stats = server.stats()
        assert stats["requests"] == 1 and stats["errors_500"] == 0
        assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
        await server.shutdown(1.0)
    run(body())


def rewrite(dst: Pair, src: Pair, order: tuple[str, ...] = ("key", "cert")) -> None:
    """Replace the files of `dst` with those of `src` (atomic renames, one file at a
    time, as a Secret update or an editor would leave them in between)."""
    for part in order:
        target: Path = getattr(dst, part)
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(getattr(src, part).read_bytes())
        os.replace(tmp, target)


def peer_cn(port: int, ca: CA, alpn: str = "http/1.1") -> str:
    ctx = ssl.create_default_context(cafile=str(ca.path))
    ctx.set_alpn_protocols([alpn])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
            ctx.wrap_socket(sock, server_hostname="localhost") as tls:
        cert = tls.getpeercert()
    assert cert is not None
    names = {str(rdn[0][0]): str(rdn[0][1]) for rdn in cert["subject"]}
    return names["commonName"]


def test_rotation_new_handshakes_get_the_new_pair(pki: Pki, tmp_path: Path) -> None:
    live = Pair(tmp_path / "tls.crt", tmp_path / "tls.key")
    rewrite(live, pki.server)
    fresh = pki.ca.issue("fresh", "rotated", hosts=("localhost",))

    async def body() -> None:
        tls = ServerTls(ListenTls(cert=str(live.cert), key=str(live.key)))
        server = await serve(tls)
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, ssl=client_ctx(pki.ca), server_hostname="localhost")
        assert await loop.run_in_executor(None, peer_cn, server.port, pki.ca) == "localhost"
        assert not await tls.check()                     # nothing changed
        rewrite(live, fresh, order=("cert",))            # the cert first: no match yet
        assert not await tls.check() and tls.failures == 1 and "cannot be used" in str(
            tls.last_error)
        assert await loop.run_in_executor(None, peer_cn, server.port, pki.ca) == "localhost"
        rewrite(live, fresh, order=("key",))             # now the pair matches
        assert await tls.check() and tls.rotations == 1 and tls.last_error is None
        assert await loop.run_in_executor(None, peer_cn, server.port, pki.ca) == "rotated"
        for _ in range(3):                               # the open connection carries on
            writer.write(GET)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r")[0]))
        writer.close()
        await server.shutdown(1.0)
    run(body())


def test_a_pair_that_cannot_be_used_at_start_names_the_field(pki: Pki) -> None:
    with pytest.raises(ConfigError, match=r"listen\.tls: .* cannot be used together"):
        ServerTls(ListenTls(cert=str(pki.server.cert), key=str(pki.client.key)))
    with pytest.raises(ConfigError, match=r"listen\.tls: .*No such file"):
        ServerTls(ListenTls(cert="/nonexistent.crt", key=str(pki.server.key)))


async def _echo_peer(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
    subject = (context.auth_context() or {}).get("x509_subject") or [b"-"]
    return bytes(subject[0])


def test_grpc_credentials_mtls_and_rotation(pki: Pki, tmp_path: Path) -> None:
    live = Pair(tmp_path / "g.crt", tmp_path / "g.key")
    rewrite(live, pki.server)
    fresh = pki.ca.issue("gfresh", "rotated", hosts=("localhost",))

    async def body() -> None:
        tls = ServerTls(ListenTls(cert=str(live.cert), key=str(live.key),
                                  client_ca=str(pki.ca.path), require_client_cert=True))
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "t.S", {"E": grpc.unary_unary_rpc_method_handler(_echo_peer)}),))
        port = server.add_secure_port("127.0.0.1:0", tls.grpc_credentials())
        await server.start()
        target = f"127.0.0.1:{port}"
        opts = [("grpc.ssl_target_name_override", "localhost")]

        def creds(pair: Pair | None) -> grpc.ChannelCredentials:
            return grpc.ssl_channel_credentials(
                pki.ca.pem, pair.key.read_bytes() if pair else None,
                pair.cert.read_bytes() if pair else None)
        first = grpc.aio.secure_channel(target, creds(pki.client), options=opts)
        assert await first.unary_unary("/t.S/E")(b"", timeout=5) == b"CN=svc-a,O=ml"
        for pair in (None, pki.stranger):
            async with grpc.aio.secure_channel(target, creds(pair), options=opts) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await ch.unary_unary("/t.S/E")(b"", timeout=5)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        rewrite(live, fresh)
        assert await tls.check()
        async with grpc.aio.secure_channel(target, creds(pki.client), options=opts) as ch:
            assert await ch.unary_unary("/t.S/E")(b"", timeout=5) == b"CN=svc-a,O=ml"
        assert tls._grpc_served == tls.version                # gRPC took the new pair
        assert await first.unary_unary("/t.S/E")(b"", timeout=5) == b"CN=svc-a,O=ml"
        await first.close()
        await server.stop(0.5)
    run(body())
