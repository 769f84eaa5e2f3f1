"""A naive aiohttp reverse proxy, the floor that scripts/bench_raw.py measures against.

    python scripts/naive_proxy.py --port P http://127.0.0.1:A http://127.0.0.1:B ...

Started by scripts/bench_raw.py on 127.0.0.1. One ClientSession, round robin;
forwards method, path, query, body and content type; nothing else (no health
checks, retries, limits or cache). It runs on uvloop like the proxy, so the
comparison is about what the proxy does per request, not about the event loop.
"""

import argparse
import itertools

import aiohttp
import uvloop
from aiohttp import web

SESSION = web.AppKey("session", aiohttp.ClientSession)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("upstreams", nargs="+")
    args = parser.parse_args()
    upstreams = itertools.cycle(args.upstreams)

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        async with request.app[SESSION].request(
                request.method, next(upstreams) + request.path_qs, data=body or None,
                headers={"Content-Type": request.content_type}) as r:
            return web.Response(status=r.status, body=await r.read(),
                                content_type=r.content_type)

    async def session(app: web.Application):  # type: ignore[no-untyped-def]
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
        yield
        await app[SESSION].close()

    app = web.Application(client_max_size=64 << 20)
    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None,
                loop=uvloop.new_event_loop())


if __name__ == "__main__":
    main()
