"""lb.rollout.compare in-process: REST replies as TF Serving writes them, PredictResponses
built by the real tensorflow_serving.apis (the test process may import TensorFlow; the
proxy never does)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from lb.grpc import pbwire
from lb.rollout.compare import compare, grpc_outputs, rest_outputs


def rest(doc: object) -> bytes:
    return orjson.dumps(doc)


def test_rest_row_format_argmax_agreement_and_differences() -> None:
    a = rest({"predictions": [[0.1, 0.9], [0.8, 0.2], [0.5, 0.4]]})
    b = rest({"predictions": [[0.2, 0.8], [0.3, 0.7], [0.45, 0.55]]})
    pa, pb = rest_outputs(a), rest_outputs(b)
    assert pa is not None and pb is not None
    c = compare(pa, pb)
    assert (c.rows, c.class_rows, c.agreed) == (3, 3, 1)
    assert c.disagreeing == [1, 2]
    assert (c.primary_classes, c.shadow_classes) == ([0, 0], [1, 1])
    assert c.max_abs == pytest.approx(0.5)
    assert c.sum_abs / c.values == pytest.approx((0.1 * 2 + 0.5 * 2 + 0.05 + 0.15) / 6)
    assert c.mismatch is None


def test_rest_named_outputs_and_columnar() -> None:
    rows = rest({"predictions": [{"scores": [0.1, 0.9], "value": 3.0},
                                 {"scores": [0.7, 0.3], "value": 1.0}]})
    cols = rest({"outputs": {"scores": [[0.1, 0.9], [0.7, 0.3]], "value": [3.5, 1.0]}})
    a, b = rest_outputs(rows), rest_outputs(cols)
    assert a is not None and b is not None and set(a) == {"scores", "value"}
    c = compare(a, b)
    assert (c.class_rows, c.agreed) == (2, 2) and c.max_abs == pytest.approx(0.5)


def test_regression_outputs_have_differences_but_no_agreement() -> None:
    a = rest_outputs(rest({"predictions": [2.5, 3.0]}))
    b = rest_outputs(rest({"predictions": [2.5, 3.25]}))
    assert a is not None and b is not None
    c = compare(a, b)
    assert (c.rows, c.class_rows) == (2, 0) and c.max_abs == pytest.approx(0.25)


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"error": "x"}',
                                  b'{"predictions": [["a", "b"]]}',
                                  b'{"predictions": [[1, 2], [3]]}'])
def test_unreadable_replies_are_none(body: bytes) -> None:
    assert rest_outputs(body) is None


def test_shapes_or_names_that_differ_are_a_mismatch() -> None:
    a = rest_outputs(rest({"predictions": [[0.1, 0.9]]}))
    b = rest_outputs(rest({"predictions": [[0.1, 0.8, 0.1]]}))
    named = rest_outputs(rest({"outputs": {"x": [[0.1, 0.9]]}}))
    assert a is not None and b is not None and named is not None
    assert compare(a, b).mismatch is not None and compare(a, b).class_rows == 0
    assert "outputs differ" in (compare(a, named).mismatch or "")


def _response(outputs: dict[str, np.ndarray]) -> bytes:
    reply = predict_pb2.PredictResponse()
    reply.model_spec.name = "mnist"
    reply.model_spec.version.value = 1
    for name, value in outputs.items():
        reply.outputs[name].CopyFrom(tf.make_tensor_proto(value))
    return bytes(reply.SerializeToString())


def test_grpc_outputs_read_what_tensorflow_writes() -> None:
    probs = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]], dtype=np.float32)
    ids = np.array([[1], [0]], dtype=np.int64)
    out = grpc_outputs(_response({"probabilities": probs, "ids": ids,
                                  "d": probs.astype(np.float64)}))
    assert out is not None
    np.testing.assert_array_equal(out["probabilities"], probs)
    np.testing.assert_array_equal(out["ids"], ids)
    assert out["d"].dtype == np.float64
    # REST and gRPC answers of the same model compare alike
    rest_side = rest_outputs(rest({"outputs": {"probabilities": probs.tolist(),
                                               "ids": ids.tolist(),
                                               "d": probs.tolist()}}))
    assert rest_side is not None
    c = compare(out, rest_side)
    assert (c.class_rows, c.agreed) == (2, 2) and c.max_abs < 1e-6


def test_grpc_typed_fields_and_splat() -> None:
    proto = tf.make_tensor_proto([0.25] * 4, shape=[2, 2], dtype=tf.float32)
    proto.ClearField("tensor_content")
    proto.float_val.extend([0.25])                    # one value for the whole shape
    entry = pbwire.len_field(1, "x") + pbwire.len_field(2, proto.SerializeToString())
    out = grpc_outputs(pbwire.len_field(1, entry))
    assert out is not None
    np.testing.assert_array_equal(out["x"], np.full((2, 2), 0.25, dtype=np.float32))
    ints = tf.make_tensor_proto([3, -2, 7], dtype=tf.int32)
    ints.ClearField("tensor_content")
    ints.int_val.extend([3, -2, 7])
    entry = pbwire.len_field(1, "i") + pbwire.len_field(2, ints.SerializeToString())
    got = grpc_outputs(pbwire.len_field(1, entry))
    assert got is not None and got["i"].tolist() == [3, -2, 7]


@pytest.mark.parametrize("body", [b"", b"\x0a\x03\x0a\x01x", b"\xff\xff",
                                  pbwire.len_field(1, pbwire.len_field(1, "s") + pbwire.len_field(
                                      2, tf.make_tensor_proto(["a"]).SerializeToString()))])
def test_grpc_unreadable_replies_are_none(body: bytes) -> None:
    assert grpc_outputs(body) is None
