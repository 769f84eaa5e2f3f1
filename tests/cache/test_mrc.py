"""cache.mrc.MissRatioCurve (miniature simulations): with every key sampled, each
point is the store itself run at that size; when sampling, the curve of the policy
that runs is within 3 points of it run at 0.5×, 1×, 2× and 4× on Zipf(0.9), with
and without scans; the miniatures' entries stay under `max_keys`."""

from __future__ import annotations

import random
from typing import cast

import numpy as np
import pytest

from cache.memory import MemoryStore
from cache.mrc import M32, SIZES, MissRatioCurve
from cache.tinylfu import TinyLfuStore

STORES = {"lru": MemoryStore, "w-tinylfu": TinyLfuStore}


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


@pytest.mark.parametrize("policy", list(STORES))
def test_every_key_sampled_runs_the_store_at_each_size(policy: str) -> None:
    trace = zipf_trace(2000, 20_000, seed=3)
    size = sizes(2000)
    budget = 100_000
    cls = STORES[policy]
    store = cls(budget, 10**6, mrc_keys=10**6, mrc_rate=1.0)
    measured = run(store, trace, size)
    stats = store.stats()
    for name, factor in SIZES.items():
        exact = run(cls(int(budget * factor), 10**6), trace, size)
        assert stats["mrc_simulated"][name] == pytest.approx(exact, abs=1e-4), name
        assert stats["mrc"][name] == pytest.approx(exact, abs=1e-4), name
    assert stats["mrc"]["1"] == pytest.approx(measured, abs=1e-4)
    sampling = stats["mrc_sampling"]
    assert sampling["policy"] == policy and sampling["method"] == "miniature"
    assert sampling["rate"] == 1.0 and sampling["lookups"] == 20_000
    assert sampling["hits"] == round(measured * 20_000)


@pytest.mark.parametrize("scans", [False, True], ids=["zipf0.9", "zipf0.9+scan"])
def test_sampled_curve_within_3_points_of_the_store_run_at_each_size(scans: bool) -> None:
    n_keys = 20_000
    trace = zipf_trace(n_keys, 80_000, seed=1)
    if scans:
        trace = with_scans(trace, first_new=n_keys)
    size = sizes(n_keys)
    budget = int(0.1 * n_keys * 1050)            # a tenth of the keys' bytes
    store = TinyLfuStore(budget, 10**6, mrc_keys=8192, mrc_rate=0.1)   # the defaults
    measured = run(store, trace, size)
    stats = store.stats()
    estimate, simulated = stats["mrc"], stats["mrc_simulated"]
    assert estimate["1"] == pytest.approx(measured, abs=1e-3)     # anchored: the store's own
    for name, factor in SIZES.items():
        exact = run(TinyLfuStore(int(budget * factor), 10**6), trace, size)
        print(f"{name}x: estimate {estimate[name]:.4f} simulated {simulated[name]:.4f} "
              f"store run at that size {exact:.4f}")
        assert abs(estimate[name] - exact) < 0.03, (name, estimate[name], exact)
        assert abs(simulated[name] - exact) < 0.08, (name, simulated[name], exact)
    assert 0.01 < stats["mrc_sampling"]["rate"] <= 0.1
    assert estimate["0.5"] <= estimate["1"] <= estimate["2"] <= estimate["4"]


def test_fixed_size_bounds_the_miniatures_entries() -> None:
    store = MemoryStore(1_000_000, 10**6, mrc_keys=256, mrc_rate=1.0)
    curve = store._mrc
    assert curve is not None
    for i in range(20_000):                      # nothing repeats
        key = f"one-off-{i}"
        store.get_now(key)
        store.set_now(key, b"v" * 90, 60.0)
        assert len(curve) <= 256
    assert curve.rate < 0.05
    minis = cast(list[MemoryStore], curve._minis)
    for factor, mini in zip(SIZES.values(), minis, strict=True):
        assert all(hash(k) & M32 < curve.threshold for k in mini._entries)
        assert mini._max_bytes == int(factor * 1_000_000 * curve.rate)
        assert mini._bytes <= mini._max_bytes
    assert max(store.stats()["mrc"].values()) < 0.05


def test_a_miss_fills_the_miniatures_at_the_stores_fill_and_history_decays() -> None:
    minis: list[MemoryStore] = []

    def make(max_bytes: int, _rate: float) -> MemoryStore:
        minis.append(MemoryStore(max_bytes, 10**6))
        return minis[-1]

    curve = MissRatioCurve(1000, make, max_keys=16, rate=1.0)
    for round_ in range(3):
        for key in ("a", "b", "c"):
            curve.refs += 1
            curve.reference(key, 0)              # a miss: size unknown until the fill
            assert round_ or all(key not in m for m in minis)
            curve.filled(key, 400, 60.0)
    # 3 × 400 bytes fit at 2× and 4× only; 0.5× (500 bytes) holds one, 1× two
    assert [len(m) for m in minis] == [1, 2, 3, 3]
    assert curve.simulated() == {"0.5": 0.0, "1": 0.0, "2": 0.6667, "4": 0.6667}
    assert curve.curve() == curve.simulated()    # the store counted no hits: none measured
    for _ in range(16 * 16):                     # the horizon: old samples count half
        curve.refs += 1
        curve.hits += 1
        curve.reference("a", 400)                # a hit in the store: misses fill at once
    assert curve.simulated()["0.5"] > 0.9 and "a" in minis[0]


def test_the_curve_follows_the_stores_policy_and_is_off_without_keys() -> None:
    for cls, policy in ((MemoryStore, "lru"), (TinyLfuStore, "w-tinylfu")):
        store = cls(50_000, 1000, mrc_keys=64, mrc_rate=0.5)
        curve = store._mrc
        assert curve is not None and curve.policy == policy
        assert all(type(m) is cls for m in curve._minis)
        assert store.stats()["mrc_sampling"]["policy"] == policy
    assert "mrc" not in MemoryStore(50_000, 1000).stats()
