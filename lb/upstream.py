"""Forwarding to nodes over pooled keep-alive connections, with per-phase deadlines.

Called by the fronts and by `lb.health`. One `aiohttp.ClientSession` per node,
each with an explicitly sized pool (`upstream.pool_size`, not aiohttp's
default of 100, which would queue requests inside the proxy where the
least-load counters cannot see them). This module is the one boundary where
aiohttp and OS errors become `lb.errors.UpstreamError`s; it guarantees that a
call either returns a `Reply` or raises an `LbError` within its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from lb.config import UpstreamConfig
from lb.errors import UpstreamConnectError, UpstreamError, UpstreamTimeout

log = logging.getLogger("lb.upstream")

# Headers a client may send that a node should see; hop-by-hop ones are dropped.
_FORWARD_HEADERS = ("Content-Type", "Accept", "Accept-Encoding")


@dataclass(slots=True, frozen=True)
class Reply:
    """A node's complete response."""

    status: int
    body: bytes
    content_type: str


class Upstream:
    """Connection pools to the nodes, created on first use, closed by `close()`."""

    def __init__(self, cfg: UpstreamConfig) -> None:
        self._cfg = cfg
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=cfg.connect_timeout_s, sock_connect=cfg.connect_timeout_s,
            sock_read=cfg.read_timeout_s)

    def _session(self, base_url: str) -> aiohttp.ClientSession:
        session = self._sessions.get(base_url)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._cfg.pool_size, limit_per_host=self._cfg.pool_size,
                keepalive_timeout=self._cfg.keepalive_s, ttl_dns_cache=60,
                enable_cleanup_closed=True)
            session = aiohttp.ClientSession(
                base_url=base_url, connector=connector, timeout=self._timeout,
                auto_decompress=False, skip_auto_headers=("User-Agent",))
            self._sessions[base_url] = session
        return session

    async def request(self, node_name: str, base_url: str, method: str, path: str,
                      body: bytes | None = None, headers: dict[str, str] | None = None,
                      timeout_s: float | None = None) -> Reply:
        """Send one request to a node and read the whole response.

        Raises UpstreamConnectError when the node could not be reached or
        dropped the connection before answering, UpstreamTimeout when a
        per-phase deadline or `timeout_s` passed. Any HTTP status is a Reply.
        """
        session = self._session(base_url)
        try:
            async with asyncio.timeout(timeout_s), session.request(
                method, path, data=body, headers=headers, allow_redirects=False,
            ) as resp:
                data = await resp.read()
                return Reply(resp.status, data, resp.content_type or "application/json")
        except TimeoutError as exc:
            raise UpstreamTimeout(node_name, "timed out") from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise UpstreamConnectError(node_name, f"{type(exc).__name__}: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(node_name, f"{type(exc).__name__}: {exc}") from exc

    def retire(self, base_url: str, drained: Callable[[], bool], timeout_s: float = 60.0) -> None:
        """Close the pool of a node that left the config, once `drained()` says its
        requests in flight are done (or after `timeout_s`). Called by `lb.reload`."""
        session = self._sessions.get(base_url)
        if session is None:
            return

        async def close_when_drained() -> None:
            deadline = time.monotonic() + timeout_s
            # The in-flight count is a plain counter (no event to wait on); the poll is
            # bounded by the deadline.
            while not drained() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            if self._sessions.get(base_url) is session:
                del self._sessions[base_url]
            await session.close()
            log.info("closed the connection pool of %s", base_url)

        task = asyncio.create_task(close_when_drained(), name=f"retire:{base_url}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


def forward_headers(headers: object) -> dict[str, str]:
    """The subset of client headers that is passed to nodes."""
    get = getattr(headers, "get", None)
    if get is None:
        return {}
    return {h: v for h in _FORWARD_HEADERS if (v := get(h)) is not None}
