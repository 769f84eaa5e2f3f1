"""Redis store (redis.asyncio; hiredis parser when installed), fail-open.

Called by `ResultCache` (backend "redis") and by `TieredStore` as its back.
Shared by every proxy replica and worker process.

Guarantees:
- every command runs under `asyncio.timeout(timeout_s)` (plus socket and
  connect timeouts of the same length), so a slow or dead Redis costs a
  request at most ~timeout_s;
- no method raises for backend trouble: errors and timeouts are counted and
  answered as a miss (get/mget) or a no-op (set);
- after `breaker_failures` consecutive failures Redis is not called for
  `breaker_reset_s`; then one probe goes through and its success closes the
  breaker, so a restarted Redis is picked up without intervention.
URLs: redis://, rediss://, unix:// with password/db in the URL. With
`cluster=True` the URL names any node of a Redis Cluster (redis.asyncio.cluster
discovers the rest); MGET is then split by slot (`mget_nonatomic`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import TimeoutError as RedisTimeoutError

from cache.breaker import CircuitBreaker
from cache.errors import CacheUnavailable

log = logging.getLogger("cache")
T = TypeVar("T")
_CLOSE_TIMEOUT_S = 1.0


@dataclass(slots=True)
class _RedisCounters:
    calls: int = 0
    errors: int = 0
    timeouts: int = 0
    skipped: int = 0


class RedisStore:
    """Fail-open Redis store with a deadline per call and a circuit breaker."""

    name = "redis"

    def __init__(self, url: str, timeout_s: float = 0.05, breaker_failures: int = 5,
                 breaker_reset_s: float = 2.0, cluster: bool = False) -> None:
        self._url = redact_url(url)
        self._timeout_s = timeout_s
        self._cluster = cluster
        # One immediate retry covers a pooled connection that went stale when
        # Redis restarted; it still has to fit in the same deadline.
        self._client: Any
        if cluster:
            self._client = RedisCluster.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 1))
        else:
            self._client = aioredis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                retry=Retry(NoBackoff(), 1), health_check_interval=0,
            )
        self._breaker = CircuitBreaker(breaker_failures, breaker_reset_s)
        self._counters = _RedisCounters()

    async def get(self, key: str) -> bytes | None:
        try:
            value = await self._guarded("GET", lambda: self._client.get(key))
        except CacheUnavailable:
            return None
        return cast(bytes | None, value)  # decode_responses=False: bytes

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            mget = self._client.mget_nonatomic if self._cluster else self._client.mget
            values = await self._guarded("MGET", lambda: mget(list(keys)))
        except CacheUnavailable:
            return [None] * len(keys)
        return cast(list[bytes | None], values)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if ttl_s <= 0:
            return
        px = max(1, int(ttl_s * 1000))
        try:
            await self._guarded("SET", lambda: self._client.set(key, value, px=px))
        except CacheUnavailable:
            return

    async def ping(self) -> bool:
        """True when Redis answers within the deadline (for health/readiness output)."""
        try:
            return bool(await self._guarded("PING", self._client.ping))
        except CacheUnavailable:
            return False

    async def close(self) -> None:
        """Close the pool; bounded by a deadline, never raises for Redis trouble."""
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self._client.aclose()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("closing redis store %s: %r", self._url, exc)

    async def _guarded(self, op: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run one command under the deadline and the breaker.

        The one place that translates redis/OS/timeout errors: they become
        CacheUnavailable (counted); cancellation is re-raised untouched.
        """
        if not self._breaker.allow():
            self._counters.skipped += 1
            raise CacheUnavailable(f"redis {op} skipped: breaker open")
        self._counters.calls += 1
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await call()
        except asyncio.CancelledError:
            self._breaker.release()
            raise
        except Exception as exc:
            self._on_failure(op, exc)
            raise CacheUnavailable(f"redis {op} failed: {exc!r}") from exc
        if self._breaker.record_success():
            log.info("redis %s reachable again; breaker closed", self._url)
        return result

    def _on_failure(self, op: str, exc: Exception) -> None:
        if isinstance(exc, TimeoutError | RedisTimeoutError):
            self._counters.timeouts += 1
        else:
            self._counters.errors += 1
        log.debug("redis %s %s failed: %r", self._url, op, exc)
        if self._breaker.record_failure():
            log.warning("redis %s: %s consecutive failures (last: %s %r); breaker open for %ss",
                        self._url, self._breaker.consecutive_failures, op, exc,
                        self._breaker.reset_s)

    @property
    def breaker_state(self) -> str:
        return self._breaker.state

    def stats(self) -> dict[str, Any]:
        c, b = self._counters, self._breaker
        return {
            "name": self.name, "url": self._url, "calls": c.calls,
            "errors": c.errors + c.timeouts, "timeouts": c.timeouts, "skipped": c.skipped,
            "breaker": b.state, "breaker_opens": b.opens,
            "consecutive_failures": b.consecutive_failures,
        }


def redact_url(url: str) -> str:
    """The URL without its password, for logs and /stats."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + host))
