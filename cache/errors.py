"""The one exception tree of the `cache` package.

    CacheError                  base of everything raised on purpose by cache/
    ├── InvalidKeyInput         (also ValueError) the request body cannot be keyed:
    │                           not a JSON object, or not canonicalisable JSON
    ├── TensorDecodeError       (also ValueError) a body does not decode to the
    │                           signature's dtypes; internal: keys.py falls back to
    │                           a JSON key, callers never see it
    ├── CacheUnavailable        a store backend failed, timed out or is behind an
    │                           open breaker; internal to the stores, which turn it
    │                           into a miss (fail-open), callers never see it
    └── UnknownBackend          (also ValueError) make_store() got a backend name
                                it does not know

Library errors (redis, OSError, TimeoutError) are translated into
CacheUnavailable at exactly one boundary: `RedisStore._guarded`.
"""

from __future__ import annotations


class CacheError(Exception):
    """Base class of every error raised on purpose by the cache package."""


class InvalidKeyInput(CacheError, ValueError):
    """The body cannot be turned into a cache key; the proxy answers without the cache."""


class TensorDecodeError(CacheError, ValueError):
    """A JSON value does not decode to the signature's dtype/shape rules."""


class CacheUnavailable(CacheError):
    """The store backend is unreachable, too slow, or skipped by the breaker."""


class UnknownBackend(CacheError, ValueError):
    """make_store() was asked for a backend that does not exist."""
