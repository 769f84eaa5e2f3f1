"""Fixtures of the HTTP layer's tests: each runs on both asyncio and uvloop (and the
server's raw-socket tests over plaintext and over TLS: `tls_contexts`)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from tests.certs import CA

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Runs a test coroutine on a fresh loop of the parametrized kind, bounded to 30 s."""
    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as r:
            return r.run(asyncio.wait_for(coro, 30))
    return runner


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
