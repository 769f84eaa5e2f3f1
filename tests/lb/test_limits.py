"""Client-facing limits of the real proxy: body size, URL and header sizes, slow
bodies, in-flight cap. Every answer is TF Serving's {"error": ...} shape."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.lb.conftest import Pool
from tests.procs import ProxyProc, http, node


@pytest.fixture(scope="module")
def proxy(logs_dir: Path, hp2_pool: Pool) -> Iterator[ProxyProc]:
    p = ProxyProc(logs_dir, [node("slow", hp2_pool.slow)], name="proxy-limits",
                  cache={"backend": "none"},
                  limits={"max_body_mb": 0.01, "max_inflight": 4, "body_timeout_s": 0.5,
                          "max_url_bytes": 512, "max_header_bytes": 512, "max_headers": 20})
    yield p
    p.stop()


def _error(raw: bytes) -> str:
    doc = json.loads(raw)
    assert set(doc) == {"error"}
    return str(doc["error"])


def test_body_over_the_limit_is_413(proxy: ProxyProc) -> None:
    body = json.dumps({"instances": [1.0] * 5000}).encode()
    status, _, raw = http("POST", f"{proxy.url}/v1/models/half_plus_two:predict", body)
    assert status == 413 and _error(raw)


def test_long_url_and_big_headers_are_refused(proxy: ProxyProc) -> None:
    status, _, _ = http("GET", f"{proxy.url}/v1/models/{'m' * 2000}")
    assert status in (400, 414)
    status, _, _ = http("GET", f"{proxy.url}/v1/models/half_plus_two",
                        headers={"X-Big": "v" * 2000})
    assert status in (400, 431)
    assert http("GET", f"{proxy.url}/v1/models/half_plus_two")[0] == 200   # still serving


def test_slow_body_gets_408_and_frees_the_slot(proxy: ProxyProc) -> None:
    port = int(proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST /v1/models/half_plus_two:predict HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"inst")
        start = time.monotonic()
        reply = s.recv(4096)
        assert time.monotonic() - start < 3
    assert reply.startswith(b"HTTP/1.1 408") and b'"error"' in reply


def test_past_max_inflight_requests_get_503_with_retry_after(proxy: ProxyProc) -> None:
    async def burst() -> list[tuple[int, str | None, bytes]]:
        async with aiohttp.ClientSession() as s:
            async def one(i: int) -> tuple[int, str | None, bytes]:
                async with s.post(f"{proxy.url}/v1/models/half_plus_two:predict",
                                  json={"instances": [float(i)]}) as r:
                    return r.status, r.headers.get("Retry-After"), await r.read()
            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(12))), 30)

    results = asyncio.run(burst())
    ok = [r for r in results if r[0] == 200]
    shed = [r for r in results if r[0] == 503]
    assert len(ok) >= 4 and len(shed) >= 1 and len(ok) + len(shed) == 12
    assert all(r[1] == "1" and _error(r[2]) for r in shed)
