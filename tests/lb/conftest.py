"""A pool of real TensorFlow workers shared by the proxy's end-to-end tests."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.procs import Proc, get_json, http, start_workers

FAST_MS = 50.0
SLOW_MS = 200.0
SPREAD_DELAY_MS = 200.0      # for weight-spread tests (see worker_delay)


@dataclass
class Pool:
    """Four half_plus_two workers: three at FAST_MS, one at SLOW_MS."""

    procs: list[Proc]
    fast: list[str]     # URLs of the three equal workers
    slow: str


@pytest.fixture(scope="session")
def hp2_pool(logs_dir: Path, test_models: Path) -> Iterator[Pool]:
    models = {"half_plus_two": test_models / "half_plus_two_cpu",
              "half_plus_two_2v": test_models / "half_plus_two_2_versions"}
    specs = [{"models": models, "delay_ms": FAST_MS, "name": f"fast-{i}"} for i in range(3)]
    specs.append({"models": models, "delay_ms": SLOW_MS, "name": "slow"})
    started = start_workers(logs_dir, specs)
    procs = [p for p, _ in started]
    urls = [u for _, u in started]
    yield Pool(procs, urls[:3], urls[3])
    for p in procs:
        p.stop()


@contextlib.contextmanager
def worker_delay(urls: list[str], delay_ms: float) -> Iterator[None]:
    """Set the workers' deliberate delay live (PUT /_worker/delay), restore it after.

    Weight-spread tests need node latency that does not depend on node load: a
    delay far above any CPU contention on a busy 2-core box gives that."""
    before = {u: get_json(f"{u}/_worker/stats")["delay_ms"] for u in urls}
    try:
        for u in urls:
            assert http("PUT", f"{u}/_worker/delay", {"delay_ms": delay_ms})[0] == 200
        yield
    finally:
        for u, ms in before.items():
            http("PUT", f"{u}/_worker/delay", {"delay_ms": ms})


def assert_weight_shares(counts: Counter[str], label: str) -> None:
    """Nodes w3, w1a, w1b weighted 3:1:1 got about 0.6 / 0.2 / 0.2 of the requests."""
    total = sum(counts.values())
    shares = {k: v / total for k, v in counts.items()}
    print(f"{label} 3:1:1 shares", shares)
    assert set(counts) == {"w3", "w1a", "w1b"}, shares
    assert shares["w3"] == pytest.approx(0.6, abs=0.08), shares
    assert shares["w1a"] == pytest.approx(0.2, abs=0.06), shares
    assert shares["w1b"] == pytest.approx(0.2, abs=0.06), shares
