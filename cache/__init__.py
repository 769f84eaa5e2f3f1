"""Result cache for tfserving-lb: keys, stores (memory, Redis, tiered), admission.

Imported by the proxy (lb/); never imports lb/ or TensorFlow. Entry points:
`request_key` / `row_keys` (cache.keys), `make_store` (cache.store),
`ResultCache` (cache.result_cache) with its `AdaptiveController`
(cache.adaptive: per-model bypass). Coalescing of misses lives in the proxy
(lb.request.flights), beside the request flow it belongs to. The memory
tier is W-TinyLFU (cache.tinylfu) or LRU (cache.memory), with a miss-ratio
curve (cache.mrc). Errors: cache.errors (one tree, rooted at CacheError).
"""

from typing import Any

from cache.adaptive import AdaptiveController, AdaptiveParams, Decision
from cache.errors import CacheError, CacheUnavailable, InvalidKeyInput, UnknownBackend
from cache.keys import DTypes, key_mode, request_key, row_keys
from cache.memory import MemoryStore
from cache.result_cache import ResultCache
from cache.store import Store, make_store, memory_store
from cache.tinylfu import TinyLfuStore

__all__ = [
    "AdaptiveController", "AdaptiveParams", "CacheError", "CacheUnavailable",
    "DTypes", "Decision", "InvalidKeyInput", "MemoryStore", "RedisStore", "ResultCache", "Store",
    "TieredStore", "TinyLfuStore", "UnknownBackend", "key_mode", "make_store", "memory_store",
    "request_key", "row_keys",
]


def __getattr__(name: str) -> Any:
    """RedisStore and TieredStore on first use: the Redis client library is not
    loaded by a proxy whose cache does not use Redis."""
    if name == "RedisStore":
        from cache.redis_store import RedisStore
        return RedisStore
    if name == "TieredStore":
        from cache.tiered import TieredStore
        return TieredStore
    raise AttributeError(f"module 'cache' has no attribute {name!r}")
