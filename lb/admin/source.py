"""What the admin side reads of a running proxy, and the hook it reloads through.

`lb.admin.app` (/stats, the admin and metrics ports), `lb.admin.metrics` (the
scrape-time collector) and `lb.fleet.control` (a worker's control socket) take a
`ProxySource` and a `ReloadHook`, never the composition root: `lb.server.Proxy`
satisfies the first and `lb.reload.Reloader` the second, and `lb.server` wires them
(mypy checks both where it passes them). Everything here is read at request or
scrape time; nothing is copied. `ConfigStatus` is the record of config loads that
`lb.reload` writes and /stats and /metrics report.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aiohttp import web

    from cache.result_cache import ResultCache
    from lb.admin.history import History
    from lb.admin.metrics import Metrics
    from lb.config import Config
    from lb.edge.gate import Edge
    from lb.pool.discovery import DnsDiscovery
    from lb.pool.nodes import NodePool
    from lb.request.core import Core
    from lb.request.dispatch import Dispatcher
    from lb.request.observe import Recorder
    from lb.rollout.service import Rollouts


@dataclass(slots=True)
class ConfigStatus:
    """Config loads as /stats ("config") and /metrics report them; `lb.reload` writes it."""

    path: str | None = None
    reloads: int = 0                 # successful reloads since start
    failures: int = 0                # rejected reloads (the old config kept serving)
    last_error: str | None = None    # message of the latest rejected reload
    last_result: str = "started"     # started | ok | failed
    loaded_at: float = field(default_factory=time.time)   # wall time of the config in use
    version: str | None = None       # lb.config.config_version of the config in use

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "reloads": self.reloads, "failures": self.failures,
                "last_error": self.last_error, "last_result": self.last_result,
                "loaded_at": self.loaded_at, "version": self.version}


class Stats(Protocol):
    def stats(self) -> Any: ...


class KeyModes(Protocol):
    @property
    def key_modes(self) -> dict[str, str]: ...


class Channels(Protocol):
    @property
    def channels(self) -> Any: ...


class ProxySource(Protocol):
    """The running proxy as the admin side reads it (read-only views)."""

    @property
    def cfg(self) -> Config: ...
    @property
    def pool(self) -> NodePool: ...
    @property
    def cache(self) -> ResultCache | None: ...
    @property
    def core(self) -> Core: ...
    @property
    def dispatcher(self) -> Dispatcher: ...
    @property
    def recorder(self) -> Recorder: ...
    @property
    def history(self) -> History: ...
    @property
    def metrics(self) -> Metrics: ...
    @property
    def status(self) -> ConfigStatus: ...
    @property
    def signatures(self) -> Stats: ...
    @property
    def keys(self) -> KeyModes: ...
    @property
    def rest_upstream(self) -> Stats: ...
    @property
    def grpc_upstream(self) -> Channels: ...
    @property
    def discovery(self) -> DnsDiscovery | None: ...
    @property
    def rollouts(self) -> Rollouts: ...
    @property
    def edge(self) -> Edge: ...

    async def serve_admin(self, app: web.Application, address: str | None = None,
                          unix: str | None = None) -> None: ...

    def add_task(self, coro: Awaitable[Any], name: str) -> None: ...


class ReloadHook(Protocol):
    """Reload the config (the file, or `text` as the supervisor read it): (applied,
    message). `status` is the record it keeps."""

    @property
    def status(self) -> ConfigStatus: ...

    async def reload(self, reason: str, text: str | None = None) -> tuple[bool, str]: ...
