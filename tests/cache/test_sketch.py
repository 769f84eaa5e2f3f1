"""cache.sketch.FrequencySketch: never below a key's count, ages, grows without loss."""

from __future__ import annotations

import random

from cache.sketch import MAX_WIDTH, FrequencySketch


def hashes(n: int, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    return [rng.getrandbits(64) - 2**63 for _ in range(n)]      # like hash(): signed 64 bits


def test_never_below_the_true_count_and_capped() -> None:
    sketch = FrequencySketch(256)
    keys = hashes(200)
    counts = {h: i % 20 for i, h in enumerate(keys)}
    for h, n in counts.items():
        for _ in range(n):
            sketch.increment(h)
    assert all(sketch.frequency(h) >= min(n, 15) for h, n in counts.items())
    assert max(sketch.frequency(h) for h in keys) == 15
    # with 4 rows, most keys are estimated exactly although 200 keys share 256 slots
    exact = sum(sketch.frequency(h) == min(n, 15) for h, n in counts.items())
    assert exact > 150


def test_unseen_keys_are_mostly_zero() -> None:
    sketch = FrequencySketch(1024)
    for h in hashes(300):
        sketch.increment(h)
    assert sum(sketch.frequency(h) > 0 for h in hashes(1000, seed=2)) < 50


def test_aging_halves_every_sample() -> None:
    sketch = FrequencySketch(64)
    hot = hashes(1)[0]
    for _ in range(12):
        sketch.increment(hot)
    sketch.age()
    assert sketch.frequency(hot) == 6 and sketch.epoch == 1
    # the sample is 10 × width increments that change a counter (as in Caffeine)
    sketch = FrequencySketch(64)
    for _ in range(100):
        sketch.increment(hot)
    others = hashes(10 * 64, seed=3)
    for h in others[:10 * 64 - 16]:
        sketch.increment(h)
    assert sketch.frequency(hot) == 15 and sketch.epoch == 0
    for h in others[10 * 64 - 16:]:
        sketch.increment(h)
    assert sketch.frequency(hot) == 7 and sketch.epoch == 1


def test_increment_says_when_the_counters_are_saturated() -> None:
    sketch = FrequencySketch(1024)
    h = hashes(1)[0]
    said = [sketch.increment(h) for _ in range(16)]
    assert said == [False] * 14 + [True, True]      # 15 is the cap
    assert sketch.frequency(h) == 15
    sketch.age()
    assert not sketch.increment(h) and sketch.frequency(h) == 8


def test_grow_keeps_every_estimate() -> None:
    sketch = FrequencySketch(64)
    keys = hashes(100)
    for i, h in enumerate(keys):
        for _ in range(i % 7):
            sketch.increment(h)
    before = [sketch.frequency(h) for h in keys]
    sketch.grow(1000)
    assert sketch.width == 1024
    assert [sketch.frequency(h) for h in keys] == before
    sketch.grow(10 * MAX_WIDTH)
    assert sketch.width == MAX_WIDTH
