"""cache.store: the factory loads the Redis client library only for Redis backends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_a_proxy_without_redis_does_not_load_the_redis_client() -> None:
    """About 10 MB of idle RSS and 0.1 s of start-up for a proxy that never uses it."""
    _run("import sys\n"
         "from lb.config import parse_config\n"
         "from lb.server import Proxy\n"
         "from cache import make_store\n"
         "cfg = parse_config({'listen': {'grpc': None}, 'cache': {'backend': 'memory'},\n"
         "                    'nodes': [{'name': 'n', 'rest': 'http://127.0.0.1:9'}]})\n"
         "Proxy(cfg)\n"
         "make_store('memory', redis_url='', memory_bytes=1 << 20, max_entry_bytes=1024,\n"
         "           timeout_s=0.1)\n"
         "assert 'redis' not in sys.modules, 'the Redis client was imported'\n")


def test_redis_backends_load_it_when_built() -> None:
    _run("import sys, cache\n"
         "from cache import make_store\n"
         "store = make_store('tiered', redis_url='redis://127.0.0.1:1', memory_bytes=1 << 20,\n"
         "                   max_entry_bytes=1024, timeout_s=0.1)\n"
         "assert type(store) is cache.TieredStore and 'redis' in sys.modules\n"
         "assert cache.RedisStore.__module__ == 'cache.redis_store'\n")
