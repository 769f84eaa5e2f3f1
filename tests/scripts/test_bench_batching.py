"""The pieces scripts/bench_batching.py relies on: `burst` keeps the order of its
bodies and reports what failed, the workers' counters follow requests and rows,
replies are read in row and columnar form, the chart is written. A real
half_plus_two worker on a free port."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from harness.loadgen import burst
from scripts.batching_check import first_row
from scripts.benchenv import settle_workers, worker_counts
from scripts.charts import latency_chart
from tests.procs import TEST_MODELS, free_port, start_worker


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_worker(tmp_path_factory.mktemp("batching-logs"),
                             {"half_plus_two": TEST_MODELS / "half_plus_two_cpu"})
    try:
        yield url
    finally:
        proc.stop()


def test_burst_keeps_order_and_the_workers_count_requests_and_rows(worker: str) -> None:
    before = settle_workers([worker])
    bodies = [orjson.dumps({"instances": [float(i), float(i), 1.0]}) for i in range(40)]
    bodies[7] = b'{"instances": "not a tensor"}'
    done = asyncio.run(burst(f"{worker}/v1/models/half_plus_two:predict", bodies, limit=16))
    assert [s for s, _ in done] == [400 if i == 7 else 200 for i in range(40)]
    for i, (status, raw) in enumerate(done):
        if status == 200:
            assert orjson.loads(raw)["predictions"] == [i / 2 + 2, i / 2 + 2, 2.5]
    after = settle_workers([worker])
    assert after == worker_counts([worker])
    assert after[0] - before[0] == 40                     # every POST, the bad one too
    assert after[1] - before[1] == 39 * 3                 # rows of the successful ones


def test_burst_reports_no_reply_as_status_0() -> None:
    done = asyncio.run(burst(f"http://127.0.0.1:{free_port()}/v1/models/m:predict",
                             [b"{}"] * 3, limit=2, timeout_s=5.0))
    assert [s for s, _ in done] == [0, 0, 0]
    with pytest.raises(ValueError):
        asyncio.run(burst("http://10.1.2.3/v1/models/m:predict", [b"{}"], limit=1))


def test_first_row_reads_row_and_columnar_replies() -> None:
    row = orjson.dumps({"predictions": [[0.25, 0.75]]})
    assert first_row(200, row, "predictions") == [0.25, 0.75]
    assert first_row(200, row, "outputs") is None                # the wrong format
    assert first_row(500, row, "predictions") is None
    assert first_row(200, b"not json", "predictions") is None
    assert first_row(200, orjson.dumps({"outputs": [[1.0, 0.0]]}), "outputs") == [1.0, 0.0]
    named = orjson.dumps({"outputs": {"probabilities": [[0.5, 0.5]]}})
    assert first_row(200, named, "outputs") == [0.5, 0.5]
    extra = orjson.dumps({"predictions": [[1.0]], "error": "x"})
    assert first_row(200, extra, "predictions") is None


def test_latency_chart_writes_a_png(tmp_path: Path) -> None:
    path = latency_chart(tmp_path / "c.png", "t",
                         {"a": [(100.0, 1.0, 3.0), (50.0, 0.8, 2.0)], "b": [(80.0, 2.0, 9.0)]},
                         p99_limit_ms=50.0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
