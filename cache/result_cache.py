"""ResultCache: the proxy's view of the cache — decisions, lookups, fills and counters.

Called by the proxy (lb/) on every cacheable request: `decide` first (USE,
BYPASS or SAMPLE, from the adaptive controller, cache.adaptive); for USE,
`lookup` before forwarding and `fill` after an HTTP 200; for SAMPLE,
`sampled` with the key (no lookup, no fill); `bypass` when Cache-Control
skips the cache. `stats()` feeds GET /stats, `model_states()` /metrics.

Guarantees: never raises for store trouble (a failing store is a miss and an
error count); hits + misses == lookups, overall and per model; every BYPASS
or SAMPLE decision counts as a bypass (and as `adaptive`), so hits + misses +
bypasses == cacheable requests when the caller makes one of decide→lookup,
decide (not USE) or bypass() per request; at most `MAX_MODELS` distinct model
names are tracked (the rest are counted under "(other)"), so a client cannot
grow the stats without bound. `decide` and `sampled` are O(1), never await.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from cache.adaptive import USE, AdaptiveController, Decision
from cache.store import Store

log = logging.getLogger("cache")
T = TypeVar("T")
MAX_MODELS = 256
OTHER_MODEL = "(other)"


@dataclass(slots=True)
class _Counts:
    hits: int = 0
    misses: int = 0
    bypasses: int = 0
    adaptive: int = 0           # bypasses decided by the adaptive controller (with samples)
    coalesced: int = 0
    partial: int = 0
    rows_hit: int = 0
    rows_missed: int = 0
    stores: int = 0
    too_large: int = 0
    errors: int = 0
    lookup_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        lookups = self.hits + self.misses
        return {
            "hits": self.hits, "misses": self.misses,
            "hit_rate": self.hits / lookups if lookups else 0.0,
            "bypasses": self.bypasses, "adaptive_bypasses": self.adaptive,
            "coalesced": self.coalesced, "partial": self.partial,
            "rows_hit": self.rows_hit, "rows_missed": self.rows_missed, "stores": self.stores,
            "too_large": self.too_large,
            "errors": self.errors,
            "lookup_ms_avg": 1000.0 * self.lookup_s / lookups if lookups else 0.0,
        }


class ResultCache:
    """Counts and guards every use of a Store for the proxy; see module docstring."""

    def __init__(self, store: Store, ttl_s: float, max_entry_bytes: int,
                 adaptive: AdaptiveController | None = None) -> None:
        self.backend: str = store.name
        self._store = store
        self._ttl_s = ttl_s
        self._max_entry_bytes = max_entry_bytes
        self._total = _Counts()
        self._by_model: dict[str, _Counts] = {}
        self.adaptive = adaptive

    def decide(self, model: str) -> Decision:
        """USE, BYPASS or SAMPLE for one cacheable request of `model`; BYPASS and
        SAMPLE are counted as bypasses here (the caller must not call bypass())."""
        if self.adaptive is None:
            return USE
        decision = self.adaptive.decide(model)
        if decision:
            for c in (self._total, self._model(model)):
                c.bypasses += 1
                c.adaptive += 1
        return decision

    def sampled(self, model: str, key: str) -> None:
        """The key of a SAMPLE request: remembered by the controller, no store access."""
        if self.adaptive is not None:
            self.adaptive.sampled(model, key)

    def sampled_rows(self, model: str, keys: Sequence[str]) -> None:
        """The row keys of a SAMPLE request of a row-cached model."""
        if self.adaptive is not None:
            for key in keys:
                self.adaptive.sampled(model, key)

    async def _read(self, model: str, op: str, call: Callable[[], Awaitable[T]],
                    on_error: T) -> T:
        """A store read; a store that raises (it should not) is a miss, counted."""
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("cache store %s %s failed; treated as a miss", self.backend, op)
            self._count(model, "errors")
            return on_error

    def peek(self, key: str, model: str) -> bytes | None:
        """A hit from the in-process tier, synchronously, counted like `lookup`'s hits;
        None (and nothing counted) otherwise: the caller then does a full `lookup`.
        Only for models the adaptive controller has on (`using`)."""
        peek = getattr(self._store, "peek", None)
        value: bytes | None = peek(key) if peek is not None else None
        if value is None:
            return None
        self._total.hits += 1
        self._model(model).hits += 1
        if self.adaptive is not None:
            self.adaptive.observe(model, True)
        return value

    def using(self, model: str) -> bool:
        """Whether requests of `model` use the cache now (no counting)."""
        return self.adaptive is None or self.adaptive.using(model)

    async def lookup(self, key: str, model: str) -> bytes | None:
        """The stored body for `key`, or None (miss, or store trouble)."""
        start = time.perf_counter()
        value = await self._read(model, "get", lambda: self._store.get(key), None)
        elapsed = time.perf_counter() - start
        for c in (self._total, self._model(model)):
            c.lookup_s += elapsed
            if value is None:
                c.misses += 1
            else:
                c.hits += 1
        if self.adaptive is not None:
            self.adaptive.observe(model, value is not None)
        return value

    async def lookup_rows(self, keys: Sequence[str], model: str) -> list[bytes | None]:
        """Row-level lookup with one MGET. Counts the request once (all rows hit: a
        hit; otherwise a miss, and a partial hit when some rows hit) and every row."""
        start = time.perf_counter()
        misses: list[bytes | None] = [None] * len(keys)
        values = await self._read(model, "mget", lambda: self._store.mget(keys), misses)
        elapsed = time.perf_counter() - start
        found = sum(v is not None for v in values)
        for c in (self._total, self._model(model)):
            c.lookup_s += elapsed
            c.rows_hit += found
            c.rows_missed += len(values) - found
            if found == len(values):
                c.hits += 1
            else:
                c.misses += 1
                c.partial += found > 0
        if self.adaptive is not None:
            self.adaptive.observe(model, found, len(values))
        return values

    async def fill_many(self, items: Sequence[tuple[str, bytes]], model: str) -> None:
        """Store several 200-derived entries concurrently (row-level cache)."""
        await asyncio.gather(*(self.fill(k, model, v) for k, v in items))

    async def fill(self, key: str, model: str, body: bytes) -> None:
        """Store a 200 response body; skips bodies over max_entry_bytes."""
        if len(body) > self._max_entry_bytes:
            self._count(model, "too_large")
            return
        try:
            await self._store.set(key, body, self._ttl_s)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("cache store %s set failed; entry dropped", self.backend)
            self._count(model, "errors")
            return
        self._count(model, "stores")

    def bypass(self, model: str) -> None:
        """Count a cacheable request that skipped the cache (Cache-Control)."""
        self._count(model, "bypasses")

    def coalesced(self, model: str) -> None:
        """Count a miss that shared another request's backend call (also a miss)."""
        self._count(model, "coalesced")

    def stats(self) -> dict[str, Any]:
        """{"backend", "hits", "misses", "hit_rate", …, "by_model": {…}, "store": {…},
        "mrc", "mrc_simulated", "mrc_sampling" (memory tiers with a curve: the
        estimate, the miniatures' own rates, and which policy at which sampling
        rate, cache.mrc)}; by_model[m] adds the adaptive state
        ("state", "since", "pinned", "window_hit_rate", "window_estimated", …)."""
        store_stats = self._store.stats()
        out: dict[str, Any] = {"backend": self.backend, **self._total.as_dict()}
        out["errors"] += int(store_stats.get("errors", 0))
        by_model = {m: c.as_dict() for m, c in self._by_model.items()}
        for m, state in self.model_states().items():
            by_model.setdefault(m, _Counts().as_dict()).update(state)
        out["by_model"] = by_model
        out["store"] = store_stats
        tier = store_stats if "mrc" in store_stats else store_stats.get("memory", {})
        if tier.get("mrc"):
            for key in ("mrc", "mrc_simulated", "mrc_sampling"):
                out[key] = tier[key]
        return out

    def model_states(self) -> dict[str, dict[str, Any]]:
        """Adaptive state per model seen by `decide` (cheap: no store call), for /metrics."""
        return self.adaptive.states() if self.adaptive is not None else {}

    async def close(self) -> None:
        await self._store.close()

    def _model(self, model: str) -> _Counts:
        counts = self._by_model.get(model)
        if counts is None:
            if len(self._by_model) >= MAX_MODELS:
                model = OTHER_MODEL
            counts = self._by_model.setdefault(model, _Counts())
        return counts

    def _count(self, model: str, field: str) -> None:
        for c in (self._total, self._model(model)):
            setattr(c, field, getattr(c, field) + 1)
