"""Unit tests of the TensorFlow-free parts of backends/: tensors, registry, CLI parsing."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backends.errors import InvalidInput, ModelNotFound, NotReady, WorkerError, http_status
from backends.registry import AVAILABLE, END, LOADING, Registry
from backends.tensors import format_predict, parse_predict, signature_infos
from backends.worker import build_parser, model_specs, parse_label
from tests.procs import ROOT


def _spec(dtype: str, *dims: int) -> dict[str, object]:
    return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(d)} for d in dims]}}


SIGS = signature_infos({
    "serving_default": {"inputs": {"x": _spec("DT_FLOAT", -1, 1)},
                        "outputs": {"y": _spec("DT_FLOAT", -1, 1)},
                        "method_name": "tensorflow/serving/predict"},
    "two": {"inputs": {"a": _spec("DT_INT64", -1), "s": _spec("DT_STRING", -1)},
            "outputs": {"p": _spec("DT_FLOAT", -1), "q_bytes": _spec("DT_STRING", -1)},
            "method_name": "tensorflow/serving/predict"},
    "any": {"inputs": {"t": {"dtype": "DT_STRING", "tensor_shape": {"unknown_rank": True}}},
            "outputs": {"o": _spec("DT_FLOAT", -1)}, "method_name": "m"},
})


def test_scalar_instances_get_the_signature_rank_and_lose_it_again() -> None:
    feeds = parse_predict({"instances": [1.0, 2.0, 5.0]}, SIGS)
    assert feeds.tensors["x"].shape == (3, 1) and feeds.tensors["x"].dtype == np.float32
    assert feeds.added_dims == 1 and feeds.rows == 3 and not feeds.columnar
    out = {"y": np.array([[2.5], [3.0], [4.5]], np.float32)}
    reply = format_predict(feeds, out)
    assert reply["predictions"].tolist() == [2.5, 3.0, 4.5]


def test_full_rank_instances_keep_their_dims() -> None:
    feeds = parse_predict({"instances": [[1.0], [2.0]]}, SIGS)
    assert feeds.added_dims == 0
    reply = format_predict(feeds, {"y": np.array([[2.5], [3.0]], np.float32)})
    assert reply["predictions"].tolist() == [[2.5], [3.0]]


def test_columnar_single_and_multi_output() -> None:
    feeds = parse_predict({"inputs": [2.0, 3.0, 4.0]}, SIGS)
    reply = format_predict(feeds, {"y": np.array([[3.0], [3.5], [4.0]], np.float32)})
    assert reply["outputs"].tolist() == [3.0, 3.5, 4.0]
    feeds = parse_predict({"signature_name": "two", "inputs": {
        "a": [1, 2], "s": ["x", {"b64": base64.b64encode(b"\xff").decode()}]}}, SIGS)
    assert feeds.tensors["a"].dtype == np.int64
    assert feeds.tensors["s"].tolist() == [b"x", b"\xff"]
    reply = format_predict(feeds, {"p": np.array([1.0, 2.0], np.float32),
                                   "q_bytes": np.array([b"hi", b"\xff"], dtype=object)})
    assert reply["outputs"]["p"].tolist() == [1.0, 2.0]
    assert reply["outputs"]["q_bytes"] == [{"b64": "aGk="}, {"b64": "/w=="}]


def test_row_format_with_named_inputs_gives_one_object_per_row() -> None:
    feeds = parse_predict({"signature_name": "two", "instances": [
        {"a": 1, "s": "u"}, {"a": 2, "s": "v"}]}, SIGS)
    reply = format_predict(feeds, {"p": np.array([1.0, 2.0], np.float32),
                                   "q_bytes": np.array([b"a", b"b"], dtype=object)})
    assert [r["p"] for r in reply["predictions"]] == [1.0, 2.0]
    assert reply["predictions"][0]["q_bytes"] == {"b64": "YQ=="}


def test_unknown_rank_inputs_are_fed_as_given() -> None:
    feeds = parse_predict({"signature_name": "any", "inputs": "abc"}, SIGS)
    assert feeds.tensors["t"].shape == () and feeds.added_dims == 0


@pytest.mark.parametrize("body", [
    [1, 2],
    {},
    {"instances": [1.0], "inputs": [1.0]},
    {"instances": []},
    {"instances": [{"z": 1.0}]},
    {"instances": ["a"]},
    {"instances": [[1.0, 2.0]]},
    {"instances": [[1.0], [2.0, 3.0]]},
    {"signature_name": "nope", "instances": [1.0]},
    {"signature_name": "two", "instances": [{"a": 1.5, "s": "x"}]},
    {"signature_name": "two", "instances": [{"a": 1}]},
    {"signature_name": "two", "instances": [{"a": 1, "s": {"b64": "!!"}}]},
    {"signature_name": "two", "inputs": [1]},
    {"instances": [1.0, 1e39]},                 # beyond DT_FLOAT: TF Serving rejects it
])
def test_bad_requests_are_invalid_input(body: object) -> None:
    with pytest.raises(InvalidInput):
        parse_predict(body, SIGS)


def test_error_codes_map_to_tf_serving_statuses() -> None:
    assert http_status(InvalidInput("x")) == 400
    assert http_status(ModelNotFound("x")) == 404
    assert http_status(NotReady("x")) == 503
    assert http_status(WorkerError("x", code="RESOURCE_EXHAUSTED")) == 429
    assert http_status(WorkerError("x")) == 500


def _fake_model(tmp_path: Path) -> Path:
    for name in ("00000123", "124", "not-a-version"):
        (tmp_path / name).mkdir()
    (tmp_path / "00000007").write_text("a file, not a version")
    return tmp_path


def test_registry_discovers_padded_versions_and_reports_failures(tmp_path: Path) -> None:
    registry = Registry()
    model = registry.add_model("m", _fake_model(tmp_path))
    assert sorted(model.versions) == [123, 124]
    assert registry.status("m")["model_version_status"][0]["state"] == LOADING
    with pytest.raises(NotReady):
        registry.resolve("m")

    def load(path: Path) -> object:
        if path.name == "124":
            raise ValueError("broken graph")
        return "servable"

    registry.load_all(load)
    assert registry.resolve("m").number == 123  # latest AVAILABLE, not latest on disk
    assert registry.status("m", 124) == {"model_version_status": [{
        "version": "124", "state": END,
        "status": {"error_code": "UNKNOWN", "error_message": "broken graph"}}]}
    assert registry.status("m", 123)["model_version_status"][0]["state"] == AVAILABLE
    with pytest.raises(ModelNotFound, match=r"Specific\(m, 124\)"):
        registry.resolve("m", 124)
    with pytest.raises(ModelNotFound, match=r"Latest\(other\)"):
        registry.resolve("other")


def test_registry_labels(tmp_path: Path) -> None:
    registry = Registry()
    registry.add_model("m", _fake_model(tmp_path))
    registry.add_label("m", "stable", 123)
    registry.load_all(lambda path: "servable")
    assert registry.resolve("m", label="stable").number == 123
    with pytest.raises(ModelNotFound, match="label"):
        registry.resolve("m", label="canary")
    with pytest.raises(ValueError):
        registry.add_label("m", "x", 999)


def test_cli_parsing() -> None:
    args = build_parser().parse_args(
        ["--model-name", "a", "--model-base-path", "/x", "--model", "b=/y", "--port", "1"])
    assert model_specs(args) == [("a", Path("/x")), ("b", Path("/y"))]
    assert parse_label("stable=3", "a") == ("a", "stable", 3)
    assert parse_label("b:canary=4", "a") == ("b", "canary", 4)
    with pytest.raises(ValueError):
        parse_label("stable=x", "a")
    with pytest.raises(ValueError):
        model_specs(build_parser().parse_args([]))


def test_proxy_side_modules_do_not_import_tensorflow() -> None:
    import backends.digits
    import backends.pool

    assert backends.pool.worker_cmd("m", "/p", 1)[1:4] == ["-m", "lb", "worker"]
    body = backends.digits.sample_request(2)
    assert len(body["instances"]) == 2 and len(body["instances"][0]) == 784
    assert all(0.0 <= v <= 1.0 for v in body["instances"][0])
    check = ("import sys, backends.pool, backends.digits; "
             "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'")
    subprocess.run([sys.executable, "-c", check], check=True, cwd=ROOT)
