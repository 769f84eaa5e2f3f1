"""The Store interface and the factory that picks an implementation.

Called by the proxy at startup (`make_store`) and by `ResultCache` on every
lookup/fill. One file per implementation (memory.py, redis_store.py,
tiered.py); this module only names the contract and chooses.

Contract every Store keeps:
- `get`/`mget` return None for a miss and also for any backend trouble
  (fail-open); they never raise for an unreachable or slow backend.
- `set` never raises for backend trouble; ttl_s <= 0 stores nothing.
- every backend call is bounded by a deadline.
- `stats()` is cheap and synchronous (for /stats and /metrics).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from cache.errors import UnknownBackend
from cache.memory import MemoryStore
from cache.tinylfu import TinyLfuStore

BACKENDS = ("memory", "redis", "tiered")
ADMISSIONS = ("tinylfu", "lru")


@runtime_checkable
class Store(Protocol):
    """A byte-value cache with per-entry TTL. See the module docstring for guarantees."""

    name: str

    async def get(self, key: str) -> bytes | None: ...

    async def mget(self, keys: Sequence[str]) -> list[bytes | None]: ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def close(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


def make_store(backend: str, *, redis_url: str, memory_bytes: int, max_entry_bytes: int,
               timeout_s: float, cluster: bool = False, admission: str = "tinylfu",
               mrc_keys: int = 8192, mrc_rate: float = 0.1) -> Store:
    """Build the configured store ("memory" | "redis" | "tiered"); raise UnknownBackend.

    Called once by the proxy at startup. Creating a RedisStore does not
    connect: the first command does, so startup never waits on Redis. The Redis
    client library is imported only for the backends that use it (it costs
    about 10 MB of RSS and 0.1 s of start-up).
    `admission` picks the memory tier's policy ("tinylfu" | "lru");
    `mrc_keys` > 0 gives it a miss-ratio curve (cache.mrc).
    """
    if backend == "memory":
        return memory_store(admission, memory_bytes, max_entry_bytes, mrc_keys, mrc_rate)
    if backend == "redis":
        from cache.redis_store import RedisStore
        return RedisStore(redis_url, timeout_s=timeout_s, cluster=cluster)
    if backend == "tiered":
        from cache.redis_store import RedisStore
        from cache.tiered import TieredStore
        return TieredStore(memory_store(admission, memory_bytes, max_entry_bytes, mrc_keys,
                                        mrc_rate),
                           RedisStore(redis_url, timeout_s=timeout_s, cluster=cluster))
    raise UnknownBackend(f"unknown cache backend {backend!r}; expected one of {BACKENDS}")


def memory_store(admission: str, max_bytes: int, max_entry_bytes: int, mrc_keys: int = 0,
                 mrc_rate: float = 0.1) -> MemoryStore:
    """The memory tier: W-TinyLFU ("tinylfu") or plain LRU ("lru"); raise UnknownBackend."""
    if admission == "tinylfu":
        return TinyLfuStore(max_bytes, max_entry_bytes, mrc_keys=mrc_keys, mrc_rate=mrc_rate)
    if admission == "lru":
        return MemoryStore(max_bytes, max_entry_bytes, mrc_keys=mrc_keys, mrc_rate=mrc_rate)
    raise UnknownBackend(f"unknown admission {admission!r}; expected one of {ADMISSIONS}")
