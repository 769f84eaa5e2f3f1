"""Result cache for tfserving-lb: keys, stores (memory, Redis, tiered), coalescing.

Imported by the proxy (lb/); never imports lb/ or TensorFlow. Entry points:
`request_key` / `row_keys` (cache.keys), `make_store` (cache.store),
`ResultCache` (cache.result_cache), `Coalescer` (cache.coalesce). Errors:
cache.errors (one tree, rooted at CacheError).
"""

from cache.coalesce import Coalescer
from cache.errors import CacheError, CacheUnavailable, InvalidKeyInput, UnknownBackend
from cache.keys import DTypes, key_mode, request_key, row_keys
from cache.memory import MemoryStore
from cache.redis_store import RedisStore
from cache.result_cache import ResultCache
from cache.store import Store, make_store
from cache.tiered import TieredStore

__all__ = [
    "CacheError", "CacheUnavailable", "Coalescer", "DTypes", "InvalidKeyInput",
    "MemoryStore", "RedisStore", "ResultCache", "Store", "TieredStore", "UnknownBackend",
    "key_mode", "make_store", "request_key", "row_keys",
]
