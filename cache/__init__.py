"""Result cache for tfserving-lb: keys, stores (memory, Redis, tiered), admission.

Imported by the proxy (lb/); never imports lb/ or TensorFlow. Entry points:
`request_key` / `row_keys` (cache.keys), `make_store` (cache.store),
`ResultCache` (cache.result_cache) with its `AdaptiveController`
(cache.adaptive: per-model bypass). Coalescing of misses lives in the proxy
(lb.flights), beside the request flow it belongs to. The memory
tier is W-TinyLFU (cache.tinylfu) or LRU (cache.memory), with a miss-ratio
curve (cache.mrc). Errors: cache.errors (one tree, rooted at CacheError).
"""

from cache.adaptive import AdaptiveController, AdaptiveParams, Decision
from cache.errors import CacheError, CacheUnavailable, InvalidKeyInput, UnknownBackend
from cache.keys import DTypes, key_mode, request_key, row_keys
from cache.memory import MemoryStore
from cache.redis_store import RedisStore
from cache.result_cache import ResultCache
from cache.store import Store, make_store, memory_store
from cache.tiered import TieredStore
from cache.tinylfu import TinyLfuStore

__all__ = [
    "AdaptiveController", "AdaptiveParams", "CacheError", "CacheUnavailable",
    "DTypes", "Decision", "InvalidKeyInput", "MemoryStore", "RedisStore", "ResultCache", "Store",
    "TieredStore", "TinyLfuStore", "UnknownBackend", "key_mode", "make_store", "memory_store",
    "request_key", "row_keys",
]
