"""TF Serving's own gRPC (and REST) cases, with the real tensorflow-serving-api client.

One module-wide pool of two real workers (gRPC and REST) serving the shared
models, and one proxy with both fronts in front of them. The gRPC cases run
twice: straight at a worker (its gRPC surface, backends/grpc_api.py) and
through the proxy; the REST cases run through the same proxy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.procs import Proc, ProxyProc, get_json, http, scrape, start_workers

HP2, TWO, BROKEN = "half_plus_two", "half_plus_two_2_versions", "half_plus_three"
TIMEOUT = 10.0


@pytest.fixture(scope="module")
def workers(logs_dir: Path, test_models: Path) -> Iterator[list[tuple[Proc, str]]]:
    models = {HP2: test_models / "half_plus_two_cpu", TWO: test_models / TWO,
              BROKEN: test_models / BROKEN}
    started = start_workers(logs_dir, [{"models": models, "name": f"conf-{i}"}
                                       for i in range(2)])
    yield started
    for proc, _ in started:
        proc.stop()


@pytest.fixture(scope="module")
def proxy(logs_dir: Path, workers: list[tuple[Proc, str]]) -> Iterator[ProxyProc]:
    nodes = [{"name": f"c{i}", "rest": url, "grpc": proc.grpc}
             for i, (proc, url) in enumerate(workers)]
    p = ProxyProc(logs_dir, nodes, name="proxy-grpc", grpc=True, models={HP2: {"cost": 1.0}})
    yield p
    p.stop()


@pytest.fixture(scope="module", params=["worker", "proxy"])
def channel(request: pytest.FixtureRequest, workers: list[tuple[Proc, str]],
            proxy: ProxyProc) -> Iterator[grpc.Channel]:
    target = workers[0][0].grpc if request.param == "worker" else proxy.grpc
    assert target
    with grpc.insecure_channel(target, options=[
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20)]) as ch:
        yield ch


def predict_stub(ch: grpc.Channel) -> Any:
    return prediction_service_pb2_grpc.PredictionServiceStub(ch)


def predict_request(model: str = HP2, x: Any = (2.0,), version: int | None = None
                    ) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    if version is not None:
        req.model_spec.version.value = version
    values = list(x)
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(values, shape=[len(values)],
                                                  dtype=tf.float32))
    return req


def examples_request(cls: Any, sig: str) -> Any:
    req = cls()
    req.model_spec.name = HP2
    req.model_spec.signature_name = sig
    req.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    return req


# -- TF Serving's cases, at a worker and through the proxy ------------------------

@pytest.mark.parametrize("output_filter", [[], ["y"]])
def test_predict(channel: grpc.Channel, output_filter: list[str]) -> None:
    req = predict_request()
    req.output_filter.extend(output_filter)
    resp = predict_stub(channel).Predict(req, timeout=TIMEOUT)
    assert tf.make_ndarray(resp.outputs["y"]).tolist() == [3.0]
    assert resp.model_spec.name == HP2 and resp.model_spec.version.value == 123
    assert set(resp.outputs) == {"y"}


def test_classify_and_regress(channel: grpc.Channel) -> None:
    stub = predict_stub(channel)
    c = stub.Classify(examples_request(classification_pb2.ClassificationRequest,
                                       "classify_x_to_y"), timeout=TIMEOUT)
    assert c.result.classifications[0].classes[0].score == pytest.approx(3.0)
    assert c.model_spec.version.value == 123
    r = stub.Regress(examples_request(regression_pb2.RegressionRequest, "regress_x_to_y"),
                     timeout=TIMEOUT)
    assert r.result.regressions[0].value == pytest.approx(3.0)


def test_multi_inference_with_both_tasks(channel: grpc.Channel) -> None:
    req = inference_pb2.MultiInferenceRequest()
    for sig, method in (("classify_x_to_y", "tensorflow/serving/classify"),
                        ("regress_x_to_y", "tensorflow/serving/regress")):
        task = req.tasks.add(method_name=method)
        task.model_spec.name = HP2
        task.model_spec.signature_name = sig
    req.input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    resp = predict_stub(channel).MultiInference(req, timeout=TIMEOUT)
    assert len(resp.results) == 2
    classes = resp.results[0].classification_result.classifications[0].classes
    assert classes[0].score == pytest.approx(3.0)
    assert resp.results[1].regression_result.regressions[0].value == pytest.approx(3.0)


def test_model_status(channel: grpc.Channel) -> None:
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = HP2
    resp = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(req, timeout=TIMEOUT)
    (status,) = resp.model_version_status
    assert status.version == 123
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert status.status.error_code == 0 and status.status.error_message == ""


def test_model_metadata_signature_def(channel: grpc.Channel) -> None:
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = HP2
    req.metadata_field.append("signature_def")
    resp = predict_stub(channel).GetModelMetadata(req, timeout=TIMEOUT)
    assert resp.model_spec.name == HP2 and resp.model_spec.version.value == 123
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert resp.metadata["signature_def"].Unpack(sig_map)
    serving = sig_map.signature_def["serving_default"]
    assert serving.inputs["x"].dtype == tf.float32.as_datatype_enum
    assert "classify_x_to_y" in sig_map.signature_def


@pytest.mark.parametrize("version", [123, 124])
def test_two_versions_addressed_by_version(channel: grpc.Channel, version: int) -> None:
    resp = predict_stub(channel).Predict(predict_request(TWO, version=version), timeout=TIMEOUT)
    assert resp.model_spec.version.value == version
    assert tf.make_ndarray(resp.outputs["y"]).tolist() == [3.0]


def test_unknown_model_is_not_found(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as err:
        predict_stub(channel).Predict(predict_request("nope"), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in (err.value.details() or "")


def test_broken_model_is_reported_not_fatal(channel: grpc.Channel) -> None:
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = BROKEN
    resp = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(req, timeout=TIMEOUT)
    (status,) = resp.model_version_status
    assert status.state == get_model_status_pb2.ModelVersionStatus.END
    assert status.status.error_code != 0 and status.status.error_message
    with pytest.raises(grpc.RpcError) as err:
        predict_stub(channel).Predict(predict_request(BROKEN), timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert predict_stub(channel).Predict(predict_request(), timeout=TIMEOUT).outputs["y"]


def test_bad_input_is_invalid_argument(channel: grpc.Channel) -> None:
    req = predict_request()
    req.inputs["nope"].CopyFrom(req.inputs["x"])
    with pytest.raises(grpc.RpcError) as err:
        predict_stub(channel).Predict(req, timeout=TIMEOUT)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_messages_above_4mb(channel: grpc.Channel) -> None:
    x = np.arange(1_500_000, dtype=np.float32)          # 6 MB each way
    req = predict_pb2.PredictRequest()
    req.model_spec.name = HP2
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(x, shape=[x.size]))
    resp = predict_stub(channel).Predict(req, timeout=30)
    assert np.allclose(tf.make_ndarray(resp.outputs["y"]), 0.5 * x + 2.0)


# -- the same cases over REST through the proxy -------------------------------------

def post(url: str, body: object) -> tuple[int, Any]:
    status, _, raw = http("POST", url, body)
    return status, json.loads(raw)


def test_rest_cases_through_the_proxy(proxy: ProxyProc) -> None:
    base = f"{proxy.url}/v1/models"
    assert post(f"{base}/{HP2}:predict", {"instances": [1.0, 2.0, 5.0]}) == (
        200, {"predictions": [2.5, 3.0, 4.5]})
    assert post(f"{base}/{HP2}:predict", {"inputs": [2.0, 3.0, 4.0]}) == (
        200, {"outputs": [3.0, 3.5, 4.0]})
    assert post(f"{base}/{HP2}:classify", {"signature_name": "classify_x_to_y",
                                           "examples": [{"x": 2.0}]}) == (
        200, {"results": [[["", 3.0]]]})
    assert post(f"{base}/{HP2}:regress", {"signature_name": "regress_x_to_y",
                                          "examples": [{"x": 2.0}]}) == (200, {"results": [3.0]})
    assert get_json(f"{base}/{HP2}") == {"model_version_status": [
        {"version": "123", "state": "AVAILABLE",
         "status": {"error_code": "OK", "error_message": ""}}]}
    meta = get_json(f"{base}/{HP2}/metadata")
    assert "serving_default" in meta["metadata"]["signature_def"]["signature_def"]
    for v in (123, 124):
        assert post(f"{base}/{TWO}/versions/{v}:predict", {"instances": [2.0]}) == (
            200, {"predictions": [3.0]})
    assert http("POST", f"{base}/nope:predict", {"instances": [1.0]})[0] == 404
    broken = get_json(f"{base}/{BROKEN}")["model_version_status"][0]
    assert broken["state"] == "END" and broken["status"]["error_message"]


# -- the proxy's own behaviour on the gRPC front ------------------------------------

def _metadata(call: Any) -> dict[str, str]:
    return {k: v for k, v in call.initial_metadata()}


def test_predict_is_cached_apart_from_rest(proxy: ProxyProc) -> None:
    assert proxy.grpc
    before = proxy.stats()["cache"]
    with grpc.insecure_channel(proxy.grpc) as ch:
        stub = predict_stub(ch)
        first, call1 = stub.Predict.with_call(predict_request(x=(7.25,)), timeout=TIMEOUT)
        second, call2 = stub.Predict.with_call(predict_request(x=(7.25,)), timeout=TIMEOUT)
    assert _metadata(call1)["x-cache"] == "MISS" and _metadata(call1)["x-node"] in {"c0", "c1"}
    assert _metadata(call2) == {"x-cache": "HIT"}
    assert first == second and tf.make_ndarray(second.outputs["y"]).tolist() == [5.625]
    after = proxy.stats()["cache"]
    assert after["hits"] - before["hits"] == 1 and after["misses"] - before["misses"] == 1
    # The same tensor over REST is its own entry (gRPC keys have their own tag).
    status, headers, _ = http("POST", f"{proxy.url}/v1/models/{HP2}:predict",
                              {"instances": [7.25]})
    assert status == 200 and headers["X-Cache"] == "MISS"


def test_calls_are_balanced_and_counted_per_node(proxy: ProxyProc) -> None:
    assert proxy.grpc
    before = sum(n["requests"] for n in proxy.stats()["nodes"])
    with grpc.insecure_channel(proxy.grpc) as ch:
        stub = predict_stub(ch)
        for i in range(10):
            req = predict_request(x=(100.0 + i,))
            stub.Predict(req, timeout=TIMEOUT, metadata=[("cache-control", "no-store")])
    nodes = proxy.stats()["nodes"]
    assert sum(n["requests"] for n in nodes) - before == 10
    assert all(n["inflight"] == 0 for n in nodes)


def test_grpc_calls_are_in_the_request_metrics(proxy: ProxyProc) -> None:
    assert proxy.grpc

    def counted(code: str) -> float:
        fams = scrape(proxy.admin)
        return sum(s.value for s in fams["tfslb_requests"].samples
                   if s.name == "tfslb_requests_total" and s.labels["code"] == code)

    ok0, missing0 = counted("200"), counted("404")
    with grpc.insecure_channel(proxy.grpc) as ch:
        stub = predict_stub(ch)
        for i in range(5):
            stub.Predict(predict_request(x=(500.0 + i,)), timeout=TIMEOUT)
        with pytest.raises(grpc.RpcError):
            stub.Predict(predict_request(model="nope"), timeout=TIMEOUT)
    assert counted("200") - ok0 == 5
    assert counted("404") - missing0 == 1     # the unknown model, as TF Serving's 404


def test_health_check_and_no_tensorflow_in_the_proxy(proxy: ProxyProc) -> None:
    assert proxy.grpc
    with grpc.insecure_channel(proxy.grpc) as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check")
        assert check(b"", timeout=TIMEOUT) == b"\x08\x01"            # status: SERVING
        with pytest.raises(grpc.RpcError) as err:
            check(b"\x0a\x04nope", timeout=TIMEOUT)                   # service: "nope"
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        watch = ch.unary_stream("/grpc.health.v1.Health/Watch")(b"", timeout=TIMEOUT)
        assert next(iter(watch)) == b"\x08\x01"
        watch.cancel()
    maps = Path(f"/proc/{proxy.proc.pid}/maps").read_text().lower()
    assert "tensorflow" not in maps and "_pywrap_tensorflow" not in maps


def test_malformed_request_is_invalid_argument(proxy: ProxyProc) -> None:
    assert proxy.grpc
    with grpc.insecure_channel(proxy.grpc) as ch:
        raw = ch.unary_unary("/tensorflow.serving.PredictionService/Predict")
        for body in (b"\x0a\x05\x0a\x03", b"\xff", b""):
            with pytest.raises(grpc.RpcError) as err:
                raw(body, timeout=TIMEOUT)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
