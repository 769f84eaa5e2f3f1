"""lb.admin.history: the per-second ring behind /history, driven with explicit times."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import pytest

from lb.admin.history import MAX_EVENTS, RESERVOIR, WINDOW, History, node_state

T0 = 1_700_000_000.0


def stats(nodes: dict[str, str] | None = None, inflight: dict[str, int] | None = None,
          hits: int = 0, misses: int = 0, reloads: int = 0, failures: int = 0,
          last_error: str | None = None) -> dict[str, Any]:
    """A /stats document with the keys History reads (README "/stats")."""
    nodes = {"a": "healthy", "b": "healthy"} if nodes is None else nodes
    inflight = inflight or {}
    return {
        "nodes": [{"name": n, "state": s, "healthy": s != "unhealthy",
                   "inflight": inflight.get(n, 0)} for n, s in nodes.items()],
        "cache": {"backend": "memory", "hits": hits, "misses": misses},
        "config": {"reloads": reloads, "failures": failures, "last_error": last_error},
    }


def test_empty_history() -> None:
    doc = History().doc()
    assert doc["points"] == [] and doc["events"] == [] and doc["now"] is None
    assert doc["window_s"] == WINDOW * 1.0 and isinstance(doc["pid"], int)


def test_second_rates_and_exact_percentiles() -> None:
    h = History()
    for ms in range(1, 101):                       # 1..100 ms
        h.observe("a", ms / 1000.0, 200)
    h.observe("a", 0.5, 503)                       # a failure
    h.observe("a", 0.5, 404)                       # the client's error, not ours
    p = h.tick(T0, stats())
    assert p["t"] == T0 and p["rps"] == 102.0 and p["eps"] == 1.0
    assert p["p50_ms"] == 51.0 and p["p99_ms"] == 500.0    # nearest rank over 102 samples
    a = p["nodes"]["a"]
    assert a["rps"] == 102.0 and a["eps"] == 1.0 and a["p50_ms"] == 51.0
    assert p["nodes"]["b"] == {"rps": 0.0, "eps": 0.0, "p50_ms": None, "p99_ms": None,
                               "share": 0.0, "inflight": 0, "state": "healthy"}


def test_percentiles_on_a_plain_second() -> None:
    h = History()
    for ms in random.Random(1).sample(range(1, 101), 100):
        h.observe("b", ms / 1000.0, 200)
    p = h.tick(T0, stats())
    assert (p["p50_ms"], p["p99_ms"]) == (50.0, 99.0)


def test_a_second_is_closed_and_rates_use_the_real_gap() -> None:
    h = History()
    h.tick(T0, stats())
    for _ in range(10):
        h.observe("a", 0.01, 200)
    p = h.tick(T0 + 2.0, stats())                  # the loop was late: 10 requests in 2 s
    assert p["rps"] == 5.0 and p["nodes"]["a"]["rps"] == 5.0
    p = h.tick(T0 + 3.0, stats())                  # nothing carried over
    assert p["rps"] == 0.0 and p["p50_ms"] is None and p["nodes"]["a"]["rps"] == 0.0
    p = h.tick(T0 + 1000.0, stats())               # a gap past MAX_GAP_S: the interval
    assert p["rps"] == 0.0


def test_per_node_share_inflight_state_and_direct_answers() -> None:
    h = History()
    for _ in range(30):
        h.observe("a", 0.01, 200)
    for _ in range(10):
        h.observe("b", 0.02, 200)
    for _ in range(60):
        h.observe("", 0.0001, 200)                 # cache hits: no node
    p = h.tick(T0, stats({"a": "healthy", "b": "ejected"}, inflight={"a": 3, "b": 1}))
    assert p["rps"] == 100.0 and p["direct_rps"] == 60.0
    assert "" not in p["nodes"]
    assert p["nodes"]["a"]["share"] == 0.75 and p["nodes"]["b"]["share"] == 0.25
    assert p["nodes"]["a"]["inflight"] == 3 and p["nodes"]["b"]["state"] == "ejected"


def test_a_removed_node_finishing_its_requests_is_still_shown() -> None:
    h = History()
    h.tick(T0, stats({"a": "healthy", "b": "healthy"}))
    h.observe("b", 0.05, 200)
    p = h.tick(T0 + 1, stats({"a": "healthy"}))
    assert p["nodes"]["b"]["rps"] == 1.0
    assert p["nodes"]["b"]["state"] is None and p["nodes"]["b"]["inflight"] is None
    p = h.tick(T0 + 2, stats({"a": "healthy"}))
    assert set(p["nodes"]) == {"a"}


def test_samples_are_bounded_and_stay_representative() -> None:
    random.seed(7)
    h = History()
    n = 50_000
    for i in range(n):
        h.observe("a", i / 1000.0, 200)            # 0 .. 49.999 s, uniform
    assert len(h._total.samples) == RESERVOIR and len(h._by_node["a"].samples) == RESERVOIR
    p = h.tick(T0, stats())
    assert p["rps"] == float(n)                    # counts are exact, only latency is sampled
    assert p["p50_ms"] == pytest.approx(25_000.0, rel=0.08)
    assert p["p99_ms"] == pytest.approx(49_500.0, rel=0.02)


def test_cache_hit_rate_of_each_second() -> None:
    h = History()
    assert h.tick(T0, stats(hits=100, misses=100))["hit_rate"] is None   # no previous second
    assert h.tick(T0 + 1, stats(hits=130, misses=110))["hit_rate"] == 0.75
    assert h.tick(T0 + 2, stats(hits=130, misses=110))["hit_rate"] is None   # no lookups
    assert h.tick(T0 + 3, stats(hits=130, misses=120))["hit_rate"] == 0.0


def test_events_state_changes_nodes_and_reloads() -> None:
    h = History()
    h.tick(T0, stats({"a": "healthy", "b": "healthy"}))
    assert h.doc()["events"] == []                 # the first tick is the baseline
    h.tick(T0 + 1, stats({"a": "healthy", "b": "ejected"}))
    h.tick(T0 + 2, stats({"a": "healthy", "b": "healthy", "c": "unhealthy"}, reloads=1))
    h.tick(T0 + 3, stats({"a": "healthy", "c": "healthy"}, reloads=2))
    h.tick(T0 + 4, stats({"a": "healthy", "c": "healthy"}, reloads=2, failures=1,
                         last_error="nodes: must not be empty"))
    events = [(e["t"] - T0, e["kind"], e["node"], e["state"]) for e in h.doc()["events"]]
    assert events == [
        (1, "state", "b", "ejected"),
        (2, "reload", None, None), (2, "state", "b", "healthy"), (2, "added", "c", "unhealthy"),
        (3, "reload", None, None), (3, "state", "c", "healthy"), (3, "removed", "b", None),
        (4, "reload_failed", None, None),
    ]
    texts = [e["text"] for e in h.doc()["events"]]
    assert texts[0] == "b: healthy → ejected"
    assert texts[-1] == "config reload rejected: nodes: must not be empty"


def test_ring_keeps_five_minutes_and_their_events() -> None:
    h = History()
    for i in range(WINDOW + 100):
        state = "ejected" if i % 2 else "healthy"  # flapping: one event a second
        h.tick(T0 + i, stats({"a": state}))
    doc = h.doc()
    assert len(doc["points"]) == WINDOW
    assert doc["points"][0]["t"] == T0 + 100 and doc["now"] == T0 + WINDOW + 99
    assert all(e["t"] >= T0 + 100 for e in doc["events"])
    assert len(doc["events"]) == WINDOW <= MAX_EVENTS


def test_doc_since_returns_only_newer_points_and_events() -> None:
    h = History()
    for i in range(5):
        h.tick(T0 + i, stats({"a": "healthy" if i < 3 else "unhealthy"}))
    doc = h.doc(since=T0 + 2)
    assert [p["t"] for p in doc["points"]] == [T0 + 3, T0 + 4]
    assert [e["t"] for e in doc["events"]] == [T0 + 3]
    assert h.doc(since=T0 + 4)["points"] == []
    assert len(h.doc(since=None)["points"]) == 5


def test_node_state_of_entries_without_state() -> None:
    assert node_state({"healthy": True}) == "healthy"
    assert node_state({"healthy": False}) == "unhealthy"
    assert node_state({"healthy": True, "state": "ejected"}) == "ejected"


async def test_run_ticks_until_cancelled_and_survives_a_failing_stats() -> None:
    h = History()
    calls = 0
    enough = asyncio.Event()

    def stats_fn() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("stats failed once")
        if calls == 6:
            enough.set()
        return stats()

    task = asyncio.create_task(h.run(stats_fn, interval_s=0.02), name="history-test")
    try:
        await asyncio.wait_for(enough.wait(), 5.0)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    points = h.doc()["points"]
    assert len(points) >= 5 and h.interval_s == 0.02       # six ticks, one of them failed
    assert all(b["t"] > a["t"] for a, b in itertools.pairwise(points))
