"""Budgets shared by every replica: GCRA in Redis, one Lua script, one round trip.

Built by `lb.edge.gate.Edge` when `rate_limit.shared: redis`; called by the gate
for each request of a key with limits (`take`). Guarantees:
* One budget for all proxies: the script runs the same GCRA as
  `lb.edge.ratelimit` (its clock is Redis' own TIME, so the replicas' clocks
  need not agree), atomically, and charges a request only when both its buckets
  (requests, rows) let it through. Bucket keys expire once full again.
* One round trip per loop turn: the checks made during one pass of the event
  loop go to Redis together (one EVALSHA), under `rate_limit.redis_timeout_ms`.
* Failing open: a Redis error or timeout decides those checks with the local
  buckets (`lb.edge.ratelimit`, each proxy on its own then), and for
  `rate_limit.retry_s` after it every check is local without trying Redis; then
  one check probes Redis again (`cache.breaker`). `stats()` says which is in use
  ("state": "redis" or "local") and counts the errors, as /stats and /metrics do.
A request is never refused because Redis is gone.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from cache.breaker import CLOSED, CircuitBreaker
from lb.edge.config import RateLimit, RateLimitConfig
from lb.edge.ratelimit import Budget

log = logging.getLogger("lb.ratelimit")

PREFIX = "tfslb:rl:"
# KEYS: two per check (its requests and rows buckets). ARGV: six per check, for each
# bucket interval (s per unit; 0: no such bucket), depth (s), cost (units). Returns the
# wait of each check in microseconds (0: let through, and charged).
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local out = {}
for c = 0, #KEYS / 2 - 1 do
  local wait = 0
  local new = {}
  for b = 1, 2 do
    local a = c * 6 + (b - 1) * 3
    local interval = tonumber(ARGV[a + 1])
    if interval > 0 then
      local depth = tonumber(ARGV[a + 2])
      local inc = math.min(tonumber(ARGV[a + 3]) * interval, depth)
      local tat = tonumber(redis.call('GET', KEYS[c * 2 + b]) or '0')
      local at = math.max(tat, now) + inc
      if at - now - depth > wait then wait = at - now - depth end
      new[b] = at
    end
  end
  if wait <= 0 then
    for b = 1, 2 do
      if new[b] then
        redis.call('SET', KEYS[c * 2 + b], string.format('%.6f', new[b]),
                   'PX', math.ceil((new[b] - now) * 1000) + 1000)
      end
    end
  end
  out[#out + 1] = math.ceil(wait * 1000000)
end
return out
"""

Check = tuple[str, RateLimit, int, Budget, "asyncio.Future[float]"]


def _bucket_args(rate: float | None, burst_s: float, cost: float) -> list[float]:
    if rate is None:
        return [0.0, 0.0, 0.0]
    interval = 1.0 / rate
    return [interval, max(burst_s, interval), cost]


class SharedLimiter:
    """GCRA buckets in Redis for every replica; see the module docstring."""

    def __init__(self, cfg: RateLimitConfig) -> None:
        self.cfg = cfg
        timeout = cfg.redis_timeout_ms / 1000.0
        self._timeout = timeout
        self._redis = aioredis.Redis.from_url(cfg.redis_url, socket_timeout=timeout,
                                              socket_connect_timeout=timeout)
        self._script = self._redis.register_script(GCRA)
        self.breaker = CircuitBreaker(failures_to_open=1, reset_s=cfg.retry_s)
        self._pending: list[Check] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.round_trips = 0
        self.checks = 0
        self.local = 0          # checks decided by the local buckets (Redis out of reach)
        self.errors = 0
        self.last_error: str | None = None

    def take(self, name: str, limits: RateLimit, rows: int, budget: Budget,
             now: float) -> float | asyncio.Future[float]:
        """The wait of one request (0.0: through): at once from the local `budget`
        while Redis is out of reach, else a future resolved after the round trip."""
        if not self.breaker.allow():
            self.local += 1
            return budget.take(now, rows)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[float] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((name, limits, rows, budget, fut))
        return fut

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.get_running_loop().create_task(self._ask(batch), name="ratelimit")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _ask(self, batch: list[Check]) -> None:
        keys: list[str] = []
        args: list[float] = []
        for name, limits, rows, _budget, _fut in batch:
            keys += [f"{PREFIX}{name}:req", f"{PREFIX}{name}:rows"]
            args += _bucket_args(limits.requests_per_s, limits.burst_s, 1.0)
            args += _bucket_args(limits.rows_per_s, limits.burst_s, float(rows))
        try:
            async with asyncio.timeout(self._timeout):
                waits: Any = await self._script(keys=keys, args=args)
            if len(waits) != len(batch):
                raise RedisError(f"script answered {len(waits)} for {len(batch)} checks")
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(batch, exc)
            return
        except asyncio.CancelledError:
            self._failed(batch, RedisError("cancelled"))
            raise
        if self.breaker.record_success():
            log.info("rate limits: Redis answers again; budgets are shared")
        self.round_trips += 1
        self.checks += len(batch)
        for (_n, _l, _r, _b, fut), wait in zip(batch, waits, strict=True):
            if not fut.done():
                fut.set_result(int(wait) / 1e6)

    def _failed(self, batch: list[Check], exc: BaseException) -> None:
        """Decide the batch locally (fail open) and stop asking Redis for a while."""
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.breaker.record_failure():
            log.warning("rate limits: Redis out of reach (%s); each proxy uses its own "
                        "buckets until it answers again", self.last_error)
        now = asyncio.get_running_loop().time()
        for _n, _l, rows, budget, fut in batch:
            self.local += 1
            if not fut.done():
                fut.set_result(budget.take(now, rows))

    def stats(self) -> dict[str, Any]:
        return {"shared": "redis",
                "state": "redis" if self.breaker.state == CLOSED else "local",
                "round_trips": self.round_trips, "checks": self.checks,
                "local_decisions": self.local, "errors": self.errors,
                "last_error": self.last_error}

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._redis.aclose()
