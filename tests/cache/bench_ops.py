"""Micro benchmark of the cache's per-request operations (not a test; not collected).

    .venv/bin/python -m tests.cache.bench_ops [--keys-only]

Prints CPU µs per operation (process time: other load on the machine slows it
less than wall time), best of several repeats:
* memory tier: a hit (get; keys drawn uniformly, and Zipf(0.9)), and a miss
  with its fill (get + set, evicting) in a full store, for LRU and W-TinyLFU,
  each without and with the miss-ratio curve (defaults: 8192 keys, rate 0.1);
* keys: `request_key` for one 784-float row (MNIST), in tensor mode (dtypes
  known) and JSON mode, with the floats spelled as floats, as ints, and mixed;
  `row_keys` for 32 such rows.
Run it against another checkout's `cache` package with PYTHONPATH=<that>:. to
compare. Absolute figures depend on the machine and its load: compare ratios
from one run.
"""

from __future__ import annotations

import random
import sys
import time
import timeit
from collections.abc import Callable
from typing import Any

import orjson

from cache.keys import request_key, row_keys

REPEAT = 5


def best_us(fn: Callable[[], object], number: int) -> float:
    """CPU time of this process per call (process_time: other load on the machine
    slows it less than wall time), best of REPEAT."""
    times = timeit.repeat(fn, number=number, repeat=REPEAT, timer=time.process_time)
    return min(times) / number * 1e6


def fresh(keys: list[str]) -> list[str]:
    """Equal strings in new objects: their hash is not cached yet, as for a request's key."""
    return [k[:-1] + k[-1] for k in keys]


def bench_memory(n_keys: int = 5000, ops: int = 2000, rounds: int = 15) -> None:
    """Stores of ~n_keys entries of 250 bytes, warmed with Zipf traffic; the stores
    take turns round by round (so load on the machine hits all alike), best round."""
    from cache.memory import MemoryStore
    budget = n_keys * 250
    makers: dict[str, Callable[[], Any]] = {
        "lru": lambda: MemoryStore(budget, 10**6),
        "lru+mrc": lambda: MemoryStore(budget, 10**6, mrc_keys=8192, mrc_rate=0.1)}
    try:
        from cache.tinylfu import TinyLfuStore
        makers["tinylfu"] = lambda: TinyLfuStore(budget, 10**6)
        makers["tinylfu+mrc"] = lambda: TinyLfuStore(budget, 10**6, mrc_keys=8192,
                                                     mrc_rate=0.1)
    except ImportError:                 # an older checkout
        pass
    value = b"v" * 200
    base = [f"tfslb:v1:m:1:{i:032x}" for i in range(n_keys)]
    rng = random.Random(1)
    weights = [1 / (i + 1) ** 0.9 for i in range(n_keys)]
    stores: dict[str, Any] = {}
    for name, make in makers.items():
        try:
            store = make()
        except TypeError:               # an older checkout: no miss-ratio curve
            continue
        for k in base:
            store.set_now(k, value, 1e9)
        for k in rng.choices(base, weights, k=4 * n_keys):
            store.get_now(k)
        stores[name] = store
    best: dict[str, dict[str, float]] = {n: {} for n in stores}
    fresh_key = iter(range(n_keys, 10**9))
    for _ in range(rounds):
        for name, store in stores.items():
            runs = {"hit": fresh([base[rng.randrange(n_keys)] for _ in range(ops)]),
                    "zipf hit": fresh(rng.choices(base, weights, k=ops)),
                    "miss+fill": [f"tfslb:v1:m:1:{next(fresh_key):032x}" for _ in range(ops)]}
            for what, keys in runs.items():
                us = _run(store, keys, value) / ops * 1e6
                best[name][what] = min(us, best[name].get(what, us))
    for name, figures in best.items():
        print(f"memory {name:12s} " + "  ".join(f"{w} {us:5.2f} µs" for w, us in figures.items()))


def _run(store: Any, keys: list[str], value: bytes) -> float:
    """CPU seconds to get every key, filling the misses."""
    get, put = store.get_now, store.set_now
    start = time.process_time()
    for k in keys:
        if get(k) is None:
            put(k, value, 1e9)
    return time.process_time() - start


def bench_keys() -> None:
    rng = random.Random(1)
    floats = [rng.random() for _ in range(784)]
    spellings = {
        "floats": floats,
        "ints": [rng.randrange(256) for _ in range(784)],
        "mixed": [0 if v < 0.8 else v for v in floats],       # JSON.stringify's 0.0 -> 0
    }
    for name, row in spellings.items():
        body = orjson.loads(orjson.dumps({"instances": [row]}))
        for mode, dtypes in (("tensor", {"x": "DT_FLOAT"}), ("json", None)):
            def key(b: Any = body, d: dict[str, str] | None = dtypes) -> str:
                return request_key("m", "1", "predict", b, d)

            us = best_us(key, 300)
            print(f"key {mode:6s} 784 {name:6s} {us:8.1f} µs")
    rows = orjson.loads(orjson.dumps({"instances": [floats] * 32}))
    us = best_us(lambda: row_keys("m", "1", None, rows, {"x": "DT_FLOAT"}), 30)
    print(f"row_keys 32×784 floats  {us:8.1f} µs ({us / 32:.1f} µs per row)")


if __name__ == "__main__":
    bench_keys()
    if "--keys-only" not in sys.argv:
        bench_memory()
