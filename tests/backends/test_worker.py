"""The worker as a real process, checked against what TF Serving returns.

The expected values are those of tests/data/models/README.md.

Two workers per module: `worker` serves TF Serving's test models, a broken model and
a freshly exported MNIST model; `slow` (started with backends.pool) has a delay and
is stopped with SIGTERM by the last test.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backends.digits import sample_digits
from backends.pool import start_pool, stop_pool, wait_available
from tests.procs import free_port, get_json, http, start_worker

SLOW_MS = 300.0


def post(url: str, body: Any) -> tuple[int, Any]:
    status, _, raw = http("POST", url, body)
    return status, json.loads(raw)


@pytest.fixture(scope="module")
def worker(logs_dir: Path, test_models: Path, mnist_dir: Path) -> Iterator[str]:
    models = {
        "half_plus_two": test_models / "half_plus_two_cpu",
        "two": test_models / "half_plus_two_2_versions",
        "broken": test_models / "half_plus_three",
        "mnist": mnist_dir,
    }
    proc, url = start_worker(logs_dir, models, extra=["--label", "stable=123",
                                                      "--label", "two:canary=124"])
    try:
        wait_available(url, "mnist", 60.0, proc.popen)
        yield url
    finally:
        proc.stop()


@dataclass
class Slow:
    url: str
    procs: list[Any]
    first_state: str
    predict_while_loading: int | None
    seen: list[int] = field(default_factory=list)


def _first_answers(url: str, proc: Any) -> tuple[str, int | None]:
    """The first status state the worker answers with, and a predict status meanwhile."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            status, _, body = http("GET", f"{url}/v1/models/half_plus_two", timeout=2)
        except OSError:  # not listening yet
            status = 0
        if status == 200:
            state = json.loads(body)["model_version_status"][0]["state"]
            predict, _, _ = http("POST", f"{url}/v1/models/half_plus_two:predict",
                                 {"instances": [1.0]})
            return state, predict if state == "LOADING" else None
        time.sleep(0.02)
    raise TimeoutError("slow worker never answered")


@pytest.fixture(scope="module")
def slow(logs_dir: Path, test_models: Path) -> Iterator[Slow]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs = start_pool("half_plus_two", test_models / "half_plus_two_cpu", [port],
                       [SLOW_MS], log_dir=logs_dir)
    try:
        state, predict = _first_answers(url, procs[0])
        wait_available(url, "half_plus_two", 60.0, procs[0])
        yield Slow(url, procs, state, predict)
    finally:
        stop_pool(procs, timeout=10)


# --- the values TF Serving returns ------------------------------------------------------

def test_status_is_exactly_tf_servings(worker: str) -> None:
    assert get_json(f"{worker}/v1/models/half_plus_two") == {"model_version_status": [
        {"version": "123", "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}}]}


def test_predict_row_and_columnar(worker: str) -> None:
    url = f"{worker}/v1/models/half_plus_two:predict"
    assert post(url, {"instances": [1.0, 2.0, 5.0]}) == (200, {"predictions": [2.5, 3.0, 4.5]})
    assert post(url, {"inputs": [2.0, 3.0, 4.0]}) == (200, {"outputs": [3.0, 3.5, 4.0]})
    assert post(url, {"instances": [[1.0], [2.0]]}) == (200, {"predictions": [[2.5], [3.0]]})


def test_classify_and_regress(worker: str) -> None:
    base = f"{worker}/v1/models/half_plus_two"
    body: dict[str, Any] = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    assert post(f"{base}:classify", body) == (200, {"results": [[["", 3.0]]]})
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    assert post(f"{base}:regress", body) == (200, {"results": [3.0]})
    body = {"signature_name": "regress_x_to_y2", "examples": [{}], "context": {"x": 4.0}}
    assert post(f"{base}:regress", body) == (200, {"results": [5.0]})
    status, reply = post(f"{base}:classify", {"examples": [{"x": 2.0}]})
    assert status == 400 and "tensorflow/serving/classify" in reply["error"]


def test_metadata_has_tf_servings_shape(worker: str) -> None:
    meta = get_json(f"{worker}/v1/models/half_plus_two/metadata")
    assert meta["model_spec"] == {"name": "half_plus_two", "signature_name": "", "version": "123"}
    sigs = meta["metadata"]["signature_def"]["signature_def"]
    x = sigs["serving_default"]["inputs"]["x"]
    assert x["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in x["tensor_shape"]["dim"]] == ["-1", "1"]
    assert sigs["classify_x_to_y"]["method_name"] == "tensorflow/serving/classify"
    meta = get_json(f"{worker}/v1/models/two/versions/124/metadata")
    assert meta["model_spec"]["version"] == "124"


def test_versions_and_labels(worker: str) -> None:
    body = {"instances": [2.0]}
    assert post(f"{worker}/v1/models/half_plus_two/versions/123:predict", body)[0] == 200
    assert post(f"{worker}/v1/models/half_plus_two/labels/stable:predict", body)[0] == 200
    status, reply = post(f"{worker}/v1/models/half_plus_two/versions/999:predict", body)
    assert status == 404 and "Specific(half_plus_two, 999)" in reply["error"]
    for version in (123, 124):
        assert post(f"{worker}/v1/models/two/versions/{version}:predict", body) == (
            200, {"predictions": [3.0]})
    states = get_json(f"{worker}/v1/models/two")["model_version_status"]
    assert sorted(s["version"] for s in states) == ["123", "124"]
    assert get_json(f"{worker}/v1/models/two/labels/canary")["model_version_status"][0][
        "version"] == "124"
    assert http("GET", f"{worker}/v1/models/two/versions/999")[0] == 404
    assert http("GET", f"{worker}/v1/models/two/labels/nope")[0] == 404


def test_broken_model_is_reported_and_others_serve(worker: str) -> None:
    (status,) = get_json(f"{worker}/v1/models/broken")["model_version_status"]
    assert status["version"] == "123" and status["state"] == "END"
    assert status["status"]["error_code"] != "OK" and status["status"]["error_message"]
    code, reply = post(f"{worker}/v1/models/broken:predict", {"instances": [1.0]})
    assert code == 404 and "error" in reply
    assert post(f"{worker}/v1/models/half_plus_two:predict", {"instances": [1.0]})[0] == 200


@pytest.mark.parametrize(("path", "body", "want"), [
    ("/v1/models/nope:predict", {"instances": [1.0]}, 404),
    ("/v1/models/half_plus_two:predict", b'{"instances": [1.0', 400),
    ("/v1/models/half_plus_two:predict", {"instances": [{"z": 1.0}]}, 400),
    ("/v1/models/half_plus_two:predict", {"signature_name": "nope", "instances": [1.0]}, 400),
    ("/v1/models/half_plus_two:predict", {"nothing": 1}, 400),
    ("/v1/models/half_plus_two:predict", {"instances": [[1.0, 2.0]]}, 400),
    ("/v1/models/half_plus_two:predict", {"instances": ["text"]}, 400),
    ("/v1/models/half_plus_two:predict", b"\xff\xfe", 400),
    ("/v1/models/half_plus_two:explain", {"instances": [1.0]}, 400),
    ("/v1/models/half_plus_two/versions/abc:predict", {"instances": [1.0]}, 400),
])
def test_errors_are_json_with_tf_serving_codes(worker: str, path: str, body: Any,
                                               want: int) -> None:
    status, _, raw = http("POST", f"{worker}{path}", body)
    assert status == want, raw
    assert set(json.loads(raw)) == {"error"}


def test_unknown_model_status_is_404(worker: str) -> None:
    status, _, raw = http("GET", f"{worker}/v1/models/nope")
    assert status == 404 and "error" in json.loads(raw)
    assert http("GET", f"{worker}/_worker/healthz")[0] == 200


def test_stats_count_calls_that_reach_the_model(worker: str) -> None:
    before = get_json(f"{worker}/_worker/stats")
    post(f"{worker}/v1/models/two:predict", {"instances": [1.0, 2.0]})
    post(f"{worker}/v1/models/two/versions/123:predict", {"instances": [1.0]})
    post(f"{worker}/v1/models/two:regress",
         {"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]})
    post(f"{worker}/v1/models/nope:predict", {"instances": [1.0]})
    after = get_json(f"{worker}/_worker/stats")
    assert after["requests"] - before["requests"] == 4
    assert after["inferences"] - before["inferences"] == 3
    assert after["rows"] - before["rows"] == 4
    old = before["by_model"].get("two", {"predict": 0, "regress": 0})
    assert after["by_model"]["two"]["predict"] - old["predict"] == 2
    assert after["by_model"]["two"]["regress"] - old["regress"] == 1
    assert isinstance(after["pid"], int)


def test_exported_mnist_is_served(worker: str) -> None:
    meta = get_json(f"{worker}/v1/models/mnist/metadata")
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["images"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in sig["outputs"]["probabilities"]["tensor_shape"]["dim"]] == [
        "-1", "10"]
    images, labels = sample_digits(40)
    status, reply = post(f"{worker}/v1/models/mnist:predict", {"instances": images.tolist()})
    assert status == 200
    probs = np.array(reply["predictions"])
    assert probs.shape == (40, 10)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert (probs.argmax(axis=1) == labels).mean() >= 0.85


def test_loading_state_then_available(slow: Slow) -> None:
    assert slow.first_state == "LOADING"
    assert slow.predict_while_loading == 503


def test_delay_makes_the_worker_slower(worker: str, slow: Slow) -> None:
    def best(url: str) -> float:
        times = []
        for _ in range(3):
            start = time.monotonic()
            assert post(f"{url}/v1/models/half_plus_two:predict", {"instances": [1.0]})[0] == 200
            times.append(time.monotonic() - start)
        return min(times)

    fast_s, slow_s = best(worker), best(slow.url)
    assert slow_s >= SLOW_MS / 1000
    assert slow_s - fast_s >= 0.2


def test_sigterm_drains_in_flight_and_exits_0(slow: Slow) -> None:
    """Runs last: it stops the `slow` worker."""
    result: dict[str, Any] = {}

    def call() -> None:
        result["reply"] = post(f"{slow.url}/v1/models/half_plus_two:predict", {"instances": [2.0]})

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(SLOW_MS / 1000 / 3)  # the request is now sleeping inside the worker
    assert stop_pool(slow.procs, timeout=10) == [0]
    thread.join(5)
    assert result["reply"] == (200, {"predictions": [3.0]})
