"""cache.adaptive.AdaptiveController: bypass on low hit rates, back on by itself, pins."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cache.adaptive import (
    BYPASS,
    MAX_MODELS,
    SAMPLE,
    USE,
    AdaptiveController,
    AdaptiveParams,
    Decision,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def controller(pin: object = None, **params: object) -> tuple[AdaptiveController, Clock]:
    clock = Clock()
    p = AdaptiveParams(**{"window": 100, "sample_every": 4, **params})  # type: ignore[arg-type]
    return AdaptiveController(p, pin=pin, clock=clock, seed=1), clock  # type: ignore[arg-type]


def miss_windows(c: AdaptiveController, model: str, windows: int, window: int = 100) -> None:
    for _ in range(windows * window):
        assert c.decide(model) == USE
        c.observe(model, 0)


def requests(c: AdaptiveController, model: str, keys: list[str],
             hits: Callable[[int], bool] = lambda i: False) -> list[Decision]:
    """One request per key: what a caller does with each decision; a lookup of
    the i-th request hits if hits(i)."""
    out = []
    for i, key in enumerate(keys):
        d = c.decide(model)
        if d == SAMPLE:
            c.sampled(model, key)
        elif d == USE:
            c.observe(model, hits(i))
        out.append(d)
    return out


def state(c: AdaptiveController, model: str) -> str:
    s = c.state(model)
    assert s is not None
    return str(s["state"])


def test_low_hit_rate_turns_bypass_after_patience_windows() -> None:
    c, clock = controller()
    assert c.decide("m") == USE and state(c, "m") == "on"
    miss_windows(c, "m", 1)
    assert state(c, "m") == "on"                    # one low window: maybe a cold cache
    clock.now = 2000.0
    miss_windows(c, "m", 1)
    s = c.state("m")
    assert s is not None and s["state"] == "bypass" and s["since"] == 2000.0
    assert s["window_hit_rate"] == 0.0 and s["window_estimated"] is False  # what caused it
    assert s["pinned"] is False
    assert c.decide("m") in (BYPASS, SAMPLE)


def test_a_window_that_hits_resets_the_strikes() -> None:
    c, _ = controller()
    for window in range(6):                         # low, good, low, good, …
        for i in range(100):
            c.decide("m")
            c.observe("m", window % 2 == 1 and i < 5)
    assert state(c, "m") == "on"
    assert c.state("m")["window_hit_rate"] == 0.05  # type: ignore[index]


def test_row_lookups_count_every_row() -> None:
    c, _ = controller()
    for _ in range(20):
        c.decide("m")
        c.observe("m", 0, lookups=10)               # 200 row lookups: two windows
    assert state(c, "m") == "bypass"


def test_bypassed_model_samples_one_in_k_and_stays_off_without_reuse() -> None:
    c, _ = controller()
    miss_windows(c, "m", 2)
    decisions = requests(c, "m", [f"unique-{i}" for i in range(40_000)])
    samples = decisions.count(SAMPLE)
    assert 9_000 < samples < 11_000                 # 1 in 4 on average
    assert decisions.count(BYPASS) == 40_000 - samples
    assert state(c, "m") == "bypass"                # ~100 verdicts, none saw a repeat
    assert c.state("m")["window_hit_rate"] == 0.0   # type: ignore[index]


def test_reuse_turns_the_cache_back_on_by_itself() -> None:
    c, clock = controller(window=1000)
    miss_windows(c, "m", 2, window=1000)
    requests(c, "m", [f"unique-{i}" for i in range(8000)])
    assert state(c, "m") == "bypass"
    clock.now = 5000.0
    hot = [f"hot-{i % 50}" for i in range(400)]     # 50 keys asked again and again
    requests(c, "m", hot)
    s = c.state("m")
    assert s is not None and s["state"] == "on" and s["since"] == 5000.0
    assert s["window_estimated"] is True and s["window_hit_rate"] >= 0.01


def test_thinly_sampled_pairs_probe_and_real_hits_keep_it_on() -> None:
    # every key sent twice in a row: a real hit rate of 1/2, but with 1 in 4
    # sampled the sampled reuse is ~1/8 of it, under min_hit_rate=0.2
    c, _ = controller(min_hit_rate=0.2)
    miss_windows(c, "m", 2)
    pairs = [f"k{i // 2}" for i in range(4000)]
    decisions = requests(c, "m", pairs, hits=lambda i: i % 2 == 1)
    first_use = decisions.index(USE)                 # a probe turned the cache on …
    assert first_use >= 400                          # … after a full window of samples
    assert set(decisions[first_use:]) == {USE}       # and the real hits keep it on
    s = c.state("m")
    assert s is not None and s["state"] == "on" and s["probe_backoff"] == 1
    assert s["window_hit_rate"] == 0.5 and s["window_estimated"] is False


def test_failed_probes_back_off() -> None:
    c, _ = controller(min_hit_rate=0.2)
    miss_windows(c, "m", 2)
    pairs = [f"k{i // 2}" for i in range(100_000)]   # sampled reuse, but the real cache
    backoffs = []                                    # misses (a TTL too short, say)
    for key in pairs:
        d = c.decide("m")
        if d == SAMPLE:
            c.sampled("m", key)
        elif d == USE:
            c.observe("m", 0)
            if state(c, "m") == "bypass":
                backoffs.append(c.state("m")["probe_backoff"])  # type: ignore[index]
    assert backoffs[:5] == [2, 4, 8, 16, 16]
    # 250 verdicts of 400 requests: without the back-off each would start a probe
    assert 10 < len(backoffs) < 20


@pytest.mark.parametrize("pin", [{"a": "on", "b": "off"},
                                 lambda m: {"a": "on", "b": "off"}.get(m, "auto")])
def test_pins(pin: object) -> None:
    c, _ = controller(pin)
    miss_windows(c, "a", 5)
    assert state(c, "a") == "on" and c.state("a")["pinned"] is True  # type: ignore[index]
    assert {c.decide("b") for _ in range(1000)} == {BYPASS}        # never even sampled
    assert state(c, "b") == "bypass" and c.state("b")["pinned"] is True  # type: ignore[index]
    assert c.decide("c") == USE and c.state("c")["pinned"] is False  # type: ignore[index]


def test_reconfigure_repins_and_disables() -> None:
    pins = {"b": "off"}
    c, clock = controller(pins)
    assert c.decide("b") == BYPASS
    clock.now = 3000.0
    c.reconfigure(pin={"b": "auto"})
    s = c.state("b")
    assert s is not None and s["state"] == "on" and s["since"] == 3000.0 and not s["pinned"]
    miss_windows(c, "b", 2)
    assert state(c, "b") == "bypass"
    c.reconfigure(AdaptiveParams(enabled=False, window=100, sample_every=4))
    assert state(c, "b") == "on"
    miss_windows(c, "b", 5)                          # disabled: auto never bypasses
    assert state(c, "b") == "on"


def test_model_cardinality_is_bounded() -> None:
    c, _ = controller()
    for i in range(MAX_MODELS + 10):
        c.decide(f"m{i}")
    assert len(c.states()) == MAX_MODELS
    assert c.decide("one-more") == USE and c.state("one-more") is None


def test_samples_and_lookups_in_the_wrong_state_are_ignored() -> None:
    c, _ = controller()
    c.decide("m")
    c.sampled("m", "k")                              # ON: nothing to record
    c.observe("unknown", 1)                          # never decided: no state
    assert c.state("unknown") is None and state(c, "m") == "on"
    with pytest.raises(ValueError):
        AdaptiveParams(min_hit_rate=2)
