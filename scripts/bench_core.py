"""The proxy's own Python cost per request, without sockets: µs per request.

Drives the real REST front (`lb.rest.front.RestFront`), core, dispatcher,
policy, cache and recorder of a `lb.server.Proxy` in one process, with the
node side replaced by a transport whose futures are already answered and the
client side by an exchange that only keeps the reply. What it measures is the
per-request work the proxy adds on top of reading and writing sockets — the
part `py-spy` cannot separate from syscalls on a loaded box. CPU time, best of
several rounds; run it before and after a change to the request path.

    .venv/bin/python scripts/bench_core.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson

from lb.config import parse_config
from lb.http.client import Response
from lb.http.exchange import Request
from lb.pool.nodes import Node
from lb.request.call import Call
from lb.server import Proxy

BODY = orjson.dumps({"instances": [[round(i / 784, 4) for i in range(784)]]})
REPLY = Response(200, b'{"predictions": [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]]}',
                 "application/json")
STATUS = Response(200, b'{"model_version_status": [{"version": "1", "state": "AVAILABLE"}]}',
                  "application/json")


class FakeExchange:
    __slots__ = ("done_fut", "on_abort", "request", "status")

    def __init__(self, request: Request, fut: asyncio.Future[None]) -> None:
        self.request = request
        self.on_abort = None
        self.status = 0
        self.done_fut = fut

    def respond(self, status: int, body: bytes, content_type: bytes = b"",
                headers: bytes = b"") -> None:
        self.status = status
        self.done_fut.set_result(None)


def instant_send(node: Node, call: Call, timeout_s: float,
                 on_done: Callable[[asyncio.Future[Response]], object]) -> asyncio.Future[Response]:
    fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
    fut.set_result(REPLY if call.payload.method == "POST" else STATUS)
    fut.add_done_callback(on_done)
    return fut


async def run(kind: str, n: int) -> float:
    cache = "memory" if kind == "hit" else "none"
    cfg = parse_config({"listen": {"grpc": None},
                        "nodes": [{"name": f"n{i}", "rest": f"http://127.0.0.1:{9 + i}"}
                                  for i in range(3)],
                        "cache": {"backend": cache}, "hedge": {"enabled": False}})
    proxy = Proxy(cfg)
    proxy.rest_transport.send = instant_send           # type: ignore[method-assign]
    for node in proxy.pool:
        proxy.pool.set_versions(node, {"mnist": frozenset({1})}, {})
    method, path = ("GET", "/v1/models/mnist") if kind == "get" else (
        "POST", "/v1/models/mnist:predict")
    loop = asyncio.get_running_loop()

    raw = bytearray(BODY)

    async def one() -> None:
        body = bytes(raw) if method == "POST" else b""     # a new object, as off the wire
        req = Request(method, path, b"", [(b"host", b"x"), (b"content-type", b"application/json"),
                                          (b"content-length", b"%d" % len(body))], body)
        fut = loop.create_future()
        proxy.rest.handle(FakeExchange(req, fut))      # type: ignore[arg-type]
        await fut

    for _ in range(200):
        await one()
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        for _ in range(n):
            await one()
        best = min(best, (time.process_time() - start) / n)
    return best * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=5000)
    args = ap.parse_args(argv)
    import uvloop
    for kind in ("get", "post", "hit"):
        us: Any = uvloop.run(run(kind, args.requests))
        print(f"{kind:5s} {us:7.1f} µs CPU per request (proxy's own Python, no sockets)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
