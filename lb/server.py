"""`tfserving-lb serve`: the composition root — build the components, run, reconfigure, stop.

Called by `lb.cli` (`serve_main`) and by the demo. `Proxy` owns every
component of one proxy process and is the only object that knows them all:
config → node pool → upstreams (REST pools, gRPC channels) → health checks →
dispatcher → cache → core → rollouts (groups, shadows) → fronts, plus the
recorder, metrics and reloader, and the edge (`lb.edge`: the fronts' TLS pair,
API keys and budgets, checked first).
Components never assign into each other: a new config (a reload, or nodes
found by DNS discovery) reaches each through its own `reconfigure`.

Start-up: first health round (bounded by the probe timeout) → listen.
Shutdown on SIGTERM or SIGINT, in a fixed order: readiness turns 503 → stop
accepting → let in-flight requests finish (`limits.drain_s`) → cancel what is
left and the background tasks → close the cache and the node pools.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from cache.adaptive import AdaptiveController, AdaptiveParams
from cache.result_cache import ResultCache
from cache.store import make_store
from lb import native
from lb.admin.app import LocalView, make_admin_app, make_metrics_app, stats_doc, warn_if_exposed
from lb.admin.history import History
from lb.admin.metrics import Metrics
from lb.admin.source import ConfigStatus
from lb.config import Config, NodeConfig, config_version, load_config, split_hostport
from lb.edge.gate import Edge
from lb.errors import ConfigError, LbError
from lb.fleet import control
from lb.grpc.batch import GrpcBatchCodec
from lb.grpc.front import GrpcFront
from lb.grpc.upstream import GrpcTransport, GrpcUpstream
from lb.http.server import HttpServer, ServerLimits
from lb.pool.discovery import DnsDiscovery
from lb.pool.health import HealthChecker
from lb.pool.nodes import NodePool
from lb.pool.outlier import outlier_policy
from lb.reload import Reloader
from lb.request.core import Core
from lb.request.dispatch import Dispatcher
from lb.request.observe import Recorder, configure_access_log
from lb.rest.batch import RestBatchCodec
from lb.rest.front import RestFront
from lb.rest.keys import RestKeys
from lb.rest.rowcache import RowCache
from lb.rest.signatures import Signatures
from lb.rest.upstream import RestPayload, RestTransport, RestUpstream
from lb.rollout.service import Rollouts

log = logging.getLogger("lb.server")

# Sections a running proxy cannot change: sockets, the cache store, pool sizes, limits.
RESTART_ONLY = ("listen", "cache", "upstream", "limits", "grpc", "rate_limit")


def build_cache(cfg: Config, pin: Callable[[str], str]) -> ResultCache | None:
    """The configured store behind a ResultCache with its adaptive controller; `pin`
    reads a model's `cache: auto|on|off` from the live config."""
    c = cfg.cache
    if c.backend == "none":
        return None
    max_entry = int(c.max_entry_kb * 1024)
    store = make_store(c.backend, redis_url=c.redis_url, memory_bytes=int(c.memory_mb * 2**20),
                       max_entry_bytes=max_entry, timeout_s=c.redis_timeout_ms / 1000.0,
                       cluster=c.redis_cluster, admission=c.admission, mrc_keys=c.mrc_keys,
                       mrc_rate=c.mrc_rate)
    adaptive = AdaptiveController(AdaptiveParams(**c.adaptive.model_dump()), pin=pin)
    return ResultCache(store, ttl_s=c.ttl_s, max_entry_bytes=max_entry, adaptive=adaptive)


def server_limits(cfg: Config) -> ServerLimits:
    lim = cfg.limits
    return ServerLimits(max_body_bytes=int(lim.max_body_mb * 2**20),
                        max_url_bytes=lim.max_url_bytes, max_header_bytes=lim.max_header_bytes,
                        max_headers=lim.max_headers, header_timeout_s=lim.body_timeout_s,
                        body_timeout_s=lim.body_timeout_s, keepalive_s=lim.keepalive_s)


class Proxy:
    """Every component of one proxy process (see the module docstring)."""

    def __init__(self, cfg: Config, config_path: str | None = None) -> None:
        self.cfg = cfg
        self.static_nodes = list(cfg.nodes)
        self.discovered: list[NodeConfig] = []
        self.pool = NodePool(cfg.nodes, cfg.policy, outlier=outlier_policy(cfg.outlier, cfg.policy))
        self.rest_upstream = RestUpstream(cfg.upstream)
        self.grpc_upstream = GrpcUpstream(cfg.grpc, cfg.upstream.tls)
        self.health = HealthChecker(cfg.health, self.pool, self.rest_upstream, list(cfg.models))
        self.pool.on_refusal = self.health.recheck
        self.dispatcher = Dispatcher(cfg, self.pool)
        self.cache = build_cache(cfg, lambda model: self.cfg.model(model).cache)
        self.core = Core(cfg, self.pool, self.dispatcher, self.cache, self.health)
        self.core.rows = RowCache(self.core) if self.cache is not None else None
        self.rest_transport = RestTransport(self.rest_upstream, RestBatchCodec())
        self.signatures = Signatures(self._fetch_metadata)
        self.keys = RestKeys(self.signatures, self.config)
        self.history = History()
        self.recorder = Recorder(cfg.log, self.history)
        self.rollouts = Rollouts(cfg, self.pool, self._load)
        self.rest = RestFront(self.core, self.rest_transport, self.keys, self.recorder,
                              self.pool, self.rollouts)
        self.grpc: GrpcFront | None = None
        if cfg.listen.grpc:
            grpc_transport = GrpcTransport(self.grpc_upstream)
            grpc_transport.codec = GrpcBatchCodec()
            self.grpc = GrpcFront(self.core, grpc_transport, self.recorder,
                                  self.config, self.pool, self.rollouts)
        self.edge = Edge(cfg)     # TLS pair, keys, budgets (lb.edge)
        self.edge.bind_rest(self.rest.serve_exchange, self.rest.refuse)
        self._hook_edge()
        self.status = ConfigStatus(path=config_path, version=config_version(cfg))
        self.metrics = Metrics(self)
        self.started = time.time()
        self._http: HttpServer | None = None
        self._admin: list[web.AppRunner] = []     # admin, metrics or control sites
        self._tasks: list[asyncio.Task[Any]] = []
        self._closers: list[Callable[[], Awaitable[None]]] = []     # after the tasks
        self.discovery: DnsDiscovery | None = None
        self._discovery_task: asyncio.Task[None]

    def config(self) -> Config:
        return self.cfg

    def _load(self) -> tuple[int, int, int]:
        """What shadows read to go first when the proxy sheds (`lb.rollout.service`)."""
        return self.core.inflight, self.cfg.limits.max_inflight, self.core.shed
    def _hook_edge(self) -> None:
        """The fronts call the edge's gate while `auth` is configured (none otherwise)."""
        gate = self.edge if self.edge.active else None
        self.rest.gate = gate
        if self.grpc is not None:
            self.grpc.gate = gate

    # -- reconfiguration ----------------------------------------------------------

    def reconfigure(self, new: Config) -> Config:
        """Apply a validated config in one synchronous step; returns what is applied.

        Sections in RESTART_ONLY keep their running value (logged). Nodes whose
        name stays keep their counters, τ and health; new ones slow-start once
        their models are AVAILABLE; removed ones get no new requests, and their
        pools and channels close once the requests in flight on them are done.
        """
        old = self.cfg
        keep = {name: getattr(old, name) for name in RESTART_ONLY
                if getattr(new, name) != getattr(old, name)}
        for name in keep:
            log.warning("config %r changed; it takes effect at the next restart "
                        "(the running value stays)", name)
        cfg = new.model_copy(update=keep) if keep else new
        keys = self.edge.prepare(cfg)          # first: they may refuse (ConfigError)
        self._rediscover(cfg)
        self.static_nodes = list(cfg.nodes)
        self._apply(cfg.model_copy(update={"nodes": self._merged()}))
        self.edge.apply(cfg, keys)
        self._hook_edge()
        return self.cfg

    def _rediscover(self, cfg: Config) -> None:
        """Start, stop or reconfigure DNS discovery for a reloaded config."""
        if cfg.discovery is None:
            if self.discovery is not None:
                self._discovery_task.cancel()
                self.discovery, self.discovered = None, []
        elif self.discovery is None:
            self._start_discovery(DnsDiscovery(cfg.discovery, self.set_discovered))
        else:
            self.discovery.reconfigure(cfg.discovery)

    def _start_discovery(self, discovery: DnsDiscovery) -> None:
        self.discovery = discovery
        self._discovery_task = asyncio.create_task(discovery.run(), name="dns-discovery")
        self._tasks.append(self._discovery_task)

    def set_discovered(self, nodes: list[NodeConfig]) -> None:
        """Nodes found by DNS discovery, beside the static ones: the same path as a reload."""
        self.discovered = list(nodes)
        self._apply(self.cfg.model_copy(update={"nodes": self._merged()}))

    def _merged(self) -> list[NodeConfig]:
        names = {n.name for n in self.static_nodes}
        return self.static_nodes + [n for n in self.discovered if n.name not in names]

    def _apply(self, cfg: Config) -> None:
        wanted = {n.name: n.rest for n in cfg.nodes}
        leaving = [n for n in self.pool if wanted.get(n.name) != n.rest]
        self.pool.reconfigure(cfg.nodes, cfg.policy, outlier_policy(cfg.outlier, cfg.policy))
        self.rest_upstream.reconfigure(leaving)
        self.grpc_upstream.reconfigure(leaving)
        self.cfg = cfg
        self.dispatcher.reconfigure(cfg)
        self.core.reconfigure(cfg)
        self.rollouts.reconfigure(cfg)
        self.health.reconfigure(cfg.health, list(cfg.models))
        self.recorder.reconfigure(cfg.log)
        configure_access_log(cfg.log)

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """First DNS resolution and health round (each bounded), then listen."""
        cfg = self.cfg
        configure_access_log(cfg.log)
        if cfg.discovery is not None:            # resolve once before listening
            discovery = DnsDiscovery(cfg.discovery, self.set_discovered)
            await discovery.refresh()               # bounded by discovery.timeout_s
            self._start_discovery(discovery)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(cfg.health.timeout_s * 2):
                await self.health.probe_all()
        self._tasks.append(asyncio.create_task(self.health.run(), name="health"))
        self._http = HttpServer(self.rest, server_limits(cfg))
        host, port = split_hostport(cfg.listen.rest)
        tls = self.edge.tls
        await self._http.start(host, port, ssl=tls.context if tls else None,
                               handshake_timeout_s=tls.cfg.handshake_timeout_s if tls else 10.0)
        if self.grpc is not None and cfg.listen.grpc:
            await self.grpc.start(cfg.listen.grpc, tls.grpc_credentials() if tls else None)
        for coro, name in self.edge.tasks(self.config):
            self.add_task(coro, name)
        log.info("listening: rest %s, grpc %s, admin %s%s; %d nodes, cache %s; data path %s",
                 cfg.listen.rest, cfg.listen.grpc, cfg.listen.admin, " (TLS)" if tls else "",
                 len(cfg.nodes), cfg.cache.backend, native.kind())
        native.log_status()     # a warning, with the reason, when it runs as Python unasked

    async def serve_admin(self, app: web.Application, address: str | None = None,
                          unix: str | None = None) -> None:
        """Serve `app` on `address` (host:port; default listen.admin) or a Unix socket;
        `stop` closes it."""
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._admin.append(runner)
        if unix is not None:
            await web.UnixSite(runner, unix, backlog=128).start()
            return
        host, port = split_hostport(address or self.cfg.listen.admin)
        await web.TCPSite(runner, host, port, backlog=128, reuse_port=True).start()

    def on_stop(self, close: Callable[[], Awaitable[None]]) -> None:
        """`close` runs in `stop`, once the tasks are cancelled (e.g. `Reloader.close`)."""
        self._closers.append(close)

    def add_task(self, coro: Awaitable[Any], name: str) -> None:
        self._tasks.append(asyncio.ensure_future(coro))
        self._tasks[-1].set_name(name)

    async def stop(self) -> None:
        """The shutdown order of the module docstring."""
        grace = self.cfg.limits.drain_s
        self.rest.draining = True
        stops: list[Awaitable[None]] = []
        if self._http is not None:
            stops.append(self._http.shutdown(grace))
        if self.grpc is not None:
            stops.append(self.grpc.stop(grace))
        await asyncio.gather(*stops, return_exceptions=True)
        await self.rest.close()
        for runner in self._admin:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(runner.cleanup(), 2.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for close in self._closers:
            with contextlib.suppress(Exception):
                await close()
        await self.health.close()
        await self.dispatcher.close()
        if self.core.rows is not None:
            await self.core.rows.close()      # type: ignore[attr-defined]
        if self.cache is not None:
            await self.cache.close()
        await self.rest_upstream.close()
        await self.grpc_upstream.close()
        await self.edge.close()

    async def _fetch_metadata(self, model: str, version: int) -> bytes | None:
        """Signature metadata of one model version, from any node serving it."""
        from lb.request.call import Call, Deadline

        path = f"/v1/models/{model}/versions/{version}/metadata"
        call = Call(model=model, version=version, pinned=True, units=0.0,
                    deadline=Deadline.after(self.cfg.health.timeout_s * 2),
                    payload=RestPayload("GET", path))
        try:
            out = await self.core.passthrough(call, self.rest_transport)
        except LbError:
            return None
        return out.answer.body if out.answer.status == 200 else None


async def start(cfg: Config, config_path: str | None = None) -> Proxy:
    """Build and start a proxy with its admin side (`serve_admin_side`: the admin and
    metrics ports, history and reloader; under a supervisor, the worker's control
    socket instead) and discovery."""
    proxy = Proxy(cfg, config_path)
    await proxy.start()
    proxy.add_task(proxy.rollouts.run(), "rollouts")
    await serve_admin_side(proxy, config_path)
    return proxy


async def serve_admin_side(proxy: Proxy, config_path: str | None) -> None:
    """A proxy process's admin side: history, reloader, admin and metrics ports; or,
    for a worker of `serve --workers N`, its control socket for the supervisor."""
    socket_path = control.supervised()
    if socket_path is not None:
        reloader = Reloader(proxy, config_path, follow=False)
        reloader.start()
        proxy.on_stop(reloader.close)
        control.die_with_supervisor()
        await proxy.serve_admin(control.make_control_app(proxy, reloader), unix=socket_path)
        return
    proxy.add_task(proxy.history.run(lambda: stats_doc(proxy)), "history")
    reloader = Reloader(proxy, config_path)
    for task in reloader.start():
        proxy.add_task(task, task.get_name())
    proxy.on_stop(reloader.close)
    view = LocalView(proxy, reloader)
    warn_if_exposed(proxy.cfg.listen.admin, proxy.cfg.admin.token)
    await proxy.serve_admin(make_admin_app(view))
    if proxy.cfg.listen.metrics:
        await proxy.serve_admin(make_metrics_app(view), proxy.cfg.listen.metrics)


async def _serve(cfg: Config, config_path: str | None = None) -> None:
    proxy = await start(cfg, config_path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down: draining for up to %.0f s", proxy.cfg.limits.drain_s)
    await proxy.stop()


def run(coro_factory: Callable[[], Awaitable[None]]) -> None:
    """Run on uvloop when available."""
    try:
        import uvloop
    except ImportError:          # pragma: no cover - uvloop is a dependency
        asyncio.run(coro_factory())  # type: ignore[arg-type]
        return
    uvloop.run(coro_factory())  # type: ignore[arg-type]


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve_main(config_path: str) -> int:
    setup_logging()
    try:        # a worker of `--workers N` reads the text its supervisor validated
        cfg = control.worker_config(config_path) if control.supervised() else \
            load_config(config_path)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    run(lambda: _serve(cfg, config_path))
    return 0
