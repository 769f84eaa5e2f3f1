"""`tfserving-lb serve`: build the proxy from a config, run it, shut it down in order.

Called by `lb.cli`. Start-up: config → cache store → node pool → first
health round (bounded by the probe timeout) → listen. Shutdown on SIGTERM or
SIGINT, in a fixed order: stop accepting → let in-flight requests finish
(grace period) → cancel the health task → close the cache and node pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass

from aiohttp import web

from cache.result_cache import ResultCache
from cache.store import make_store
from lb.admin import make_admin_app, stats_doc
from lb.config import Config, load_config, split_hostport
from lb.errors import ConfigError
from lb.grpc_front import GrpcFront
from lb.health import HealthChecker
from lb.history import history_for
from lb.nodes import NodePool
from lb.observe import configure_access_log
from lb.outlier import outlier_policy
from lb.proxy import Proxy
from lb.reload import Reloader
from lb.rest import make_app
from lb.upstream import Upstream

log = logging.getLogger("lb.server")

GRACE_S = 10.0


def build_cache(cfg: Config) -> ResultCache | None:
    c = cfg.cache
    if c.backend == "none":
        return None
    max_entry = int(c.max_entry_kb * 1024)
    store = make_store(c.backend, redis_url=c.redis_url, memory_bytes=int(c.memory_mb * 2**20),
                       max_entry_bytes=max_entry, timeout_s=c.redis_timeout_ms / 1000.0,
                       cluster=c.redis_cluster)
    return ResultCache(store, ttl_s=c.ttl_s, max_entry_bytes=max_entry)


@dataclass
class Running:
    proxy: Proxy
    health: HealthChecker
    runners: list[web.AppRunner]
    tasks: list[asyncio.Task[None]]
    grpc: GrpcFront | None = None
    reloader: Reloader | None = None

    async def stop(self, grace_s: float = GRACE_S) -> None:
        if self.grpc is not None:            # stops accepting, lets calls finish
            await self.grpc.stop(grace_s)
        for runner in self.runners:          # stops accepting, waits for handlers
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner.cleanup(), grace_s)
        if self.reloader is not None:
            await self.reloader.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.proxy.close()


async def start(cfg: Config, config_path: str | None = None) -> Running:
    """Build and start everything; the returned handle stops it. With
    `config_path`, SIGHUP and changes of that file reload it (`lb.reload`)."""
    configure_access_log(cfg.log)
    pool = NodePool(cfg.nodes, cfg.policy, outlier=outlier_policy(cfg.outlier, cfg.policy))
    upstream = Upstream(cfg.upstream)
    health = HealthChecker(cfg.health, pool, upstream, list(cfg.models))
    proxy = Proxy(cfg, pool, upstream, build_cache(cfg), learn=health.learn)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(cfg.health.timeout_s * 2):
            await health.probe_all()
    tasks = [asyncio.create_task(health.run(), name="health")]
    tasks.append(asyncio.create_task(history_for(proxy).run(lambda: stats_doc(proxy)),
                                     name="history"))
    reloader = Reloader(proxy, health, config_path)
    tasks += reloader.start()
    runners = []
    for app, addr in ((make_app(proxy), cfg.listen.rest),
                      (make_admin_app(proxy, reloader), cfg.listen.admin)):
        lim = cfg.limits
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=GRACE_S,
                               keepalive_timeout=lim.keepalive_s, max_line_size=lim.max_url_bytes,
                               max_field_size=lim.max_header_bytes, max_headers=lim.max_headers)
        await runner.setup()
        host, port = split_hostport(addr)
        await web.TCPSite(runner, host, port, backlog=1024, reuse_port=True).start()
        runners.append(runner)
    grpc_front = GrpcFront(proxy) if cfg.listen.grpc else None
    if grpc_front is not None and cfg.listen.grpc:
        await grpc_front.start(cfg.listen.grpc)
    log.info("listening: rest %s, grpc %s, admin %s; %d nodes, cache %s", cfg.listen.rest,
             cfg.listen.grpc, cfg.listen.admin, len(cfg.nodes), cfg.cache.backend)
    return Running(proxy, health, runners, tasks, grpc_front, reloader)


async def _serve(cfg: Config, config_path: str | None = None) -> None:
    running = await start(cfg, config_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await running.stop()


def run(coro_factory: object) -> None:
    """Run on uvloop when available."""
    try:
        import uvloop
    except ImportError:          # pragma: no cover - uvloop is a dependency
        asyncio.run(coro_factory())  # type: ignore[operator]
        return
    uvloop.run(coro_factory())  # type: ignore[operator]


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve_main(config_path: str) -> int:
    setup_logging()
    try:
        cfg = load_config(config_path)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    run(lambda: _serve(cfg, config_path))
    return 0
