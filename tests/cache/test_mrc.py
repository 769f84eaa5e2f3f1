"""cache.mrc.MissRatioCurve (SHARDS): exact when every key is sampled, and within
5 points of an exact LRU simulation at 2× the budget when sampling."""

from __future__ import annotations

import random
from typing import cast

import numpy as np
import pytest

from cache.memory import MemoryStore
from cache.mrc import MissRatioCurve
from cache.tinylfu import TinyLfuStore


def zipf_trace(n_keys: int, n_refs: int, seed: int, s: float = 0.9) -> list[int]:
    rng = np.random.default_rng(seed)
    p = np.arange(1, n_keys + 1, dtype=float) ** -s
    return cast(list[int],
                rng.permutation(n_keys)[rng.choice(n_keys, size=n_refs, p=p / p.sum())].tolist())


def with_scans(trace: list[int], first_new: int, every: int = 10_000, scan: int = 5_000
               ) -> list[int]:
    """Every third block of `every` references is followed by `scan` one-off keys."""
    out: list[int] = []
    for block, start in enumerate(range(0, len(trace), every)):
        out += trace[start:start + every]
        if block % 3 == 1:
            out += range(first_new, first_new + scan)
            first_new += scan
    return out


def sizes(n: int, seed: int = 2) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, 2000) for _ in range(n)]


def run(store: MemoryStore, trace: list[int], size: list[int]) -> float:
    """Every reference a get, filled on a miss (as the proxy does); the hit rate."""
    hits = 0
    for i in trace:
        key = f"k{i}"
        if store.get_now(key) is None:
            store.set_now(key, b"x" * (size[i % len(size)] - len(key)), 1e9)
        else:
            hits += 1
    return hits / len(trace)


def test_every_key_sampled_gives_the_exact_lru_curve() -> None:
    trace = zipf_trace(2000, 30_000, seed=3)
    size = sizes(2000)
    budget = 100_000
    store = MemoryStore(budget, 10**6, mrc_keys=10**6, mrc_rate=1.0)
    run(store, trace, size)
    curve = store.stats()["mrc"]
    for name, factor in (("0.5", 0.5), ("1", 1), ("2", 2), ("4", 4)):
        exact = run(MemoryStore(int(budget * factor), 10**6), trace, size)
        assert curve[name] == pytest.approx(exact, abs=0.005), name
    assert store.stats()["mrc_sampling"] == {"rate": 1.0, "keys": len(set(trace)),
                                             "lookups": 30_000}


@pytest.mark.parametrize("scans", [False, True], ids=["zipf0.9", "zipf0.9+scan"])
def test_sampled_curve_within_5_points_of_lru_at_2x(scans: bool) -> None:
    n_keys = 30_000
    trace = zipf_trace(n_keys, 200_000, seed=1)
    if scans:
        trace = with_scans(trace, first_new=n_keys)
    size = sizes(n_keys)
    budget = int(0.1 * n_keys * 1050)            # a tenth of the keys' bytes
    store = TinyLfuStore(budget, 10**6, mrc_keys=8192, mrc_rate=0.1)   # the defaults
    tinylfu = run(store, trace, size)
    estimate = store.stats()["mrc"]
    exact_2x = run(MemoryStore(2 * budget, 10**6), trace, size)
    assert abs(estimate["2"] - exact_2x) < 0.05
    assert 0.01 < store.stats()["mrc_sampling"]["rate"] <= 0.1
    # the curve estimates LRU: TinyLFU at 1× hits at least as often on this traffic
    assert tinylfu > estimate["1"] - 0.05
    assert estimate["0.5"] <= estimate["1"] <= estimate["2"] <= estimate["4"]


def test_fixed_size_bounds_the_tracked_keys() -> None:
    mrc = MissRatioCurve(10_000, max_keys=1024, rate=1.0)
    rng = random.Random(5)
    for _ in range(100_000):                 # nothing repeats
        h = rng.getrandbits(64)
        mrc.refs += 1
        if h & 0xFFFFFFFF < mrc.threshold:
            mrc.reference(h, 100)
    assert len(mrc) == 1024 and 0.008 < mrc.rate < 0.012
    # SHARDS_adj counts the sample's shortfall against the true count as hits: a
    # few points of noise at this sample size, not more
    assert mrc.curve()["4"] < 0.05


def test_sizes_learned_from_fills_and_history_decays() -> None:
    mrc = MissRatioCurve(1000, max_keys=16, rate=1.0)
    for _ in range(3):
        for h in (1, 2, 3):
            mrc.refs += 1
            mrc.reference(h, 0)          # a miss: size unknown until the fill
            mrc.resize(h, 400)
    # every re-reference sees the two other keys (800 bytes) above it: 1200 > 1000
    assert mrc.curve() == {"0.5": 0.0, "1": 0.0, "2": 0.6667, "4": 0.6667}
    for _ in range(16 * 16):             # the horizon: old samples count half
        mrc.refs += 1
        mrc.reference(1, 400)
    assert mrc.curve()["0.5"] > 0.9
