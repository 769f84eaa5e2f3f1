"""Fixtures of the HTTP layer's tests: each runs on both asyncio and uvloop; the
raw-socket tests of the server and of the node client also on uvloop over TLS
(`run_tls`: what the proxy ships, with real handshakes)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

from harness.certs import CA

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
Runner = Callable[[Coroutine[Any, Any, Any]], Any]
# (server, client) SSL contexts while a test runs over TLS (`run_tls`), else None
TLS: list[tuple[ssl.SSLContext, ssl.SSLContext] | None] = [None]


def runner(loop: str) -> Runner:
    """Runs a test coroutine on a fresh loop of that kind, bounded to 30 s."""
    def run(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=LOOPS[loop]) as r:
            return r.run(asyncio.wait_for(coro, 30))
    return run


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Runner:
    """Runs a test coroutine on a fresh loop of the parametrized kind, bounded to 30 s."""
    return runner(request.param)


@pytest.fixture(params=["asyncio", "uvloop", "uvloop-tls"])
def run_tls(request: pytest.FixtureRequest,
            tls_contexts: tuple[ssl.SSLContext, ssl.SSLContext]) -> Iterator[Runner]:
    """`run`, and uvloop over TLS: then `TLS[0]` holds the contexts, for the module's
    servers and clients to use."""
    TLS[0] = tls_contexts if request.param.endswith("-tls") else None
    yield runner(request.param.removesuffix("-tls"))
    TLS[0] = None


@pytest.fixture(scope="session")
def tls_contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext,
                                                                    ssl.SSLContext]:
    """(server, client) contexts: a server certificate for localhost from a CA made here,
    and a client that trusts only that CA (real handshakes, TLS 1.2+, ALPN http/1.1)."""
    ca = CA(Path(tmp_path_factory.mktemp("http-tls")))
    pair = ca.issue("server", "localhost")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    server.set_alpn_protocols(["http/1.1"])
    server.load_cert_chain(pair.cert, pair.key)
    client = ssl.create_default_context(cafile=str(ca.path))
    client.set_alpn_protocols(["http/1.1"])
    return server, client
