"""lb.grpc.pbwire and lb.grpc.messages against messages built by the real tensorflow_serving.apis.

The test process may import TensorFlow; the proxy never does (see
test_grpc_conformance.py::test_health_check_and_no_tensorflow_in_the_proxy).
"""

from __future__ import annotations

import contextlib

import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)

from harness.grpcwire import predict_bytes
from lb.errors import BadRequest
from lb.grpc import pbwire
from lb.grpc.messages import health_reply, health_service, predict_key, read_request


def _predict(x: list[float], *, version: int | None = None, label: str = "", sig: str = "",
             filters: tuple[str, ...] = ()) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "hp2"
    if version is not None:
        req.model_spec.version.value = version
    if label:                          # version and version_label are one oneof
        req.model_spec.version_label = label
    req.model_spec.signature_name = sig
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(x, shape=[len(x), 1], dtype=tf.float32))
    req.output_filter.extend(filters)
    return req


def test_model_spec_fields() -> None:
    r = read_request("Predict", _predict([1.0, 2.0, 3.0], version=123, sig="s").SerializeToString())
    assert (r.spec.name, r.spec.version, r.spec.label, r.spec.signature_name) == (
        "hp2", 123, None, "s")
    assert r.rows == 3 and [a for a, _ in r.inputs] == ["x"]
    r = read_request("Predict", _predict([1.0], label="canary").SerializeToString())
    assert (r.spec.version, r.spec.label) == (None, "canary")
    # version 0 is set (Int64Value present) and is not "no version"
    assert read_request("Predict", _predict([1.0], version=0).SerializeToString()).spec.version == 0


def test_tensor_content_and_scalar_rows() -> None:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "m"
    req.inputs["a"].CopyFrom(tf.make_tensor_proto([[1, 2]] * 7, dtype=tf.int64))
    req.inputs["b"].CopyFrom(tf.make_tensor_proto(5.0))
    assert read_request("Predict", req.SerializeToString()).rows == 7   # the batch, not the scalar


@pytest.mark.parametrize("cls,method", [(classification_pb2.ClassificationRequest, "Classify"),
                                        (regression_pb2.RegressionRequest, "Regress")])
def test_examples_rows(cls: type, method: str) -> None:
    req = cls()
    req.model_spec.name = "m"
    for v in (1.0, 2.0):
        req.input.example_list.examples.add().features.feature["x"].float_list.value.append(v)
    assert read_request(method, req.SerializeToString()).rows == 2
    req = cls()
    req.model_spec.name = "m"
    req.input.example_list_with_context.examples.add()
    assert read_request(method, req.SerializeToString()).rows == 1


def test_multi_inference_reads_the_first_task() -> None:
    req = inference_pb2.MultiInferenceRequest()
    for sig in ("c", "r"):
        task = req.tasks.add(method_name="tensorflow/serving/classify")
        task.model_spec.name = "hp2"
        task.model_spec.signature_name = sig
        task.model_spec.version.value = 124
    for _ in range(3):
        req.input.example_list.examples.add()
    r = read_request("MultiInference", req.SerializeToString())
    assert (r.spec.name, r.spec.version, r.spec.signature_name, r.rows) == ("hp2", 124, "c", 3)


def test_status_and_metadata_requests() -> None:
    s = get_model_status_pb2.GetModelStatusRequest()
    s.model_spec.name = "m"
    assert read_request("GetModelStatus", s.SerializeToString()).spec.name == "m"
    m = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    m.model_spec.name = "m"
    m.model_spec.version.value = 7
    r = read_request("GetModelMetadata", m.SerializeToString())
    assert (r.spec.version, r.rows) == (7, 0)


def test_missing_spec_is_bad_request() -> None:
    with pytest.raises(BadRequest):
        read_request("Predict", predict_pb2.PredictRequest().SerializeToString())
    with pytest.raises(BadRequest):
        read_request("MultiInference", b"")


def test_predict_key_is_stable_and_discriminating() -> None:
    def key(req: predict_pb2.PredictRequest, version: int = 123) -> str:
        return predict_key(read_request("Predict", req.SerializeToString()), version)

    base = key(_predict([1.0, 2.0]))
    assert base == key(_predict([1.0, 2.0]))
    assert base.startswith("tfslb:v1:hp2:123:")
    assert base == key(_predict([1.0, 2.0], sig="serving_default"))   # default signature
    assert base == key(_predict([1.0, 2.0], version=123))             # spec version is not hashed
    others = {key(_predict([1.0, 2.5])), key(_predict([1.0, 2.0]), 124),
              key(_predict([1.0, 2.0], sig="other")), key(_predict([1.0, 2.0], filters=("y",)))}
    assert base not in others and len(others) == 4
    assert key(_predict([1.0], filters=("a", "b"))) == key(_predict([1.0], filters=("b", "a")))


def test_hand_written_request_matches_the_real_classes() -> None:
    real = predict_pb2.PredictRequest.FromString(predict_bytes("half_plus_two", 2.5))
    assert real.model_spec.name == "half_plus_two"
    assert tf.make_ndarray(real.inputs["x"]).tolist() == [2.5]


def test_health_messages() -> None:
    assert health_reply(1) == b"\x08\x01" and health_reply(0) == b""
    assert health_service(pbwire.len_field(1, "tensorflow.serving.ModelService")) == (
        "tensorflow.serving.ModelService")


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_varint_round_trip(value: int) -> None:
    data = pbwire.encode_varint(value)
    assert pbwire.read_varint(memoryview(data), 0) == (value, len(data))


@given(st.binary(max_size=64))
def test_garbage_is_bad_request_or_parsed(data: bytes) -> None:
    for method in ("Predict", "Classify", "MultiInference", "GetModelStatus"):
        with contextlib.suppress(BadRequest):
            read_request(method, data)
