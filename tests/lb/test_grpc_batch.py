"""lb.grpc.batch (and the pbwire writers it uses) against the real tensorflow_serving.apis.

Unit cases build requests and replies with the real generated classes and
`tf.make_tensor_proto`, run the codec on their bytes and read its output back
with the same classes. The end-to-end case sends concurrent Predict calls
through a real proxy with batching on to real gRPC workers and compares every
answer with a direct call's.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from lb.errors import BadRequest
from lb.grpc import pbwire
from lb.grpc.batch import PREDICT, GrpcBatchCodec
from lb.grpc.messages import read_request
from lb.grpc.upstream import OK, GrpcPayload, GrpcReply
from lb.request.call import Call, Deadline
from tests.procs import Proc, ProxyProc, start_workers

HP2 = "half_plus_two"
VERSION = 123
codec = GrpcBatchCodec()


# -- building calls the way the gRPC front does ----------------------------------

def request(inputs: dict[str, tensor_pb2.TensorProto], *, model: str = HP2,
            sig: str = "", filters: tuple[str, ...] = (), version: int | None = None,
            label: str = "") -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.model_spec.signature_name = sig
    if version is not None:
        req.model_spec.version.value = version
    if label:
        req.model_spec.version_label = label
    for alias, tensor in inputs.items():
        req.inputs[alias].CopyFrom(tensor)
    req.output_filter.extend(filters)
    return req


def call_of(req: predict_pb2.PredictRequest | bytes, *, resolved: int | None = VERSION,
            path: str = PREDICT, cost: float = 2.0, timeout: float = 10.0) -> Call:
    """A Call as lb.grpc.front builds it, with its version resolved to `resolved`
    (a label stays unresolved, as the core leaves it)."""
    raw = req if isinstance(req, bytes) else req.SerializeToString()
    parsed = read_request("Predict", raw)
    spec = parsed.spec
    version = spec.version if spec.version is not None else (
        None if spec.label else resolved)
    return Call(model=spec.name, version=version, label=spec.label,
                pinned=spec.version is not None, units=parsed.rows * cost,
                deadline=Deadline.after(timeout), payload=GrpcPayload(path, raw, parsed),
                rows=parsed.rows)


def packed(values: Any, dtype: int, field: str, shape: list[int]) -> tensor_pb2.TensorProto:
    """A TensorProto with its values in the repeated field `field` (packed on the wire)."""
    t = tensor_pb2.TensorProto(dtype=dtype)
    t.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in shape]))
    getattr(t, field).extend(np.asarray(values).ravel().tolist())
    return t


def merged_request(calls: list[Call]) -> tuple[Call, predict_pb2.PredictRequest]:
    merged = codec.merge(calls)
    return merged, predict_pb2.PredictRequest.FromString(merged.payload.raw)


# -- merge ------------------------------------------------------------------------

def test_merge_float_tensor_content_2d() -> None:
    arrays = [np.random.default_rng(i).random((r, 4), dtype=np.float32)
              for i, r in enumerate([1, 2, 3])]
    calls = [call_of(request({"x": tf.make_tensor_proto(a)}, sig="sig", filters=("y",)),
                     timeout=12.0 - i) for i, a in enumerate(arrays)]
    assert all(c.payload.request.inputs for c in calls)
    merged, req = merged_request(calls)
    assert merged.rows == 6 and merged.units == 12.0
    assert merged.deadline.at == calls[-1].deadline.at         # the earliest member's
    assert (merged.model, merged.version, merged.label, merged.pinned) == (HP2, 123, None, True)
    assert req.model_spec.name == HP2 and req.model_spec.version.value == VERSION
    assert req.model_spec.signature_name == "sig" and list(req.output_filter) == ["y"]
    assert req.inputs["x"].tensor_content                       # still tensor_content
    got = tf.make_ndarray(req.inputs["x"])
    assert got.dtype == np.float32 and np.array_equal(got, np.concatenate(arrays))
    # what the proxy itself reads of the merged call agrees
    assert merged.payload.request.rows == 6
    assert read_request("Predict", merged.payload.raw).inputs == merged.payload.request.inputs


@pytest.mark.parametrize(("dtype", "field", "np_type"), [
    (types_pb2.DT_FLOAT, "float_val", np.float32),
    (types_pb2.DT_DOUBLE, "double_val", np.float64),
    (types_pb2.DT_INT32, "int_val", np.int32),
    (types_pb2.DT_INT64, "int64_val", np.int64),
    (types_pb2.DT_BOOL, "bool_val", np.bool_),
    (types_pb2.DT_UINT32, "uint32_val", np.uint32),
    (types_pb2.DT_UINT64, "uint64_val", np.uint64),
])
def test_merge_repeated_value_fields(dtype: int, field: str, np_type: Any) -> None:
    rng = np.random.default_rng(7)
    arrays = []
    for rows in [1, 1, 2, 1, 3]:
        a: np.ndarray = rng.integers(-1000, 1000, size=(rows, 2, 3))
        if np_type == np.bool_:
            a = a > 0
        elif np.issubdtype(np_type, np.unsignedinteger):
            a = np.abs(a) * (1 << 20)
        arrays.append(a.astype(np_type))
    if np_type == np.int64:
        arrays[0][0, 0, 0] = -(1 << 62)                        # a 10-byte varint
    calls = [call_of(request({"x": packed(a, dtype, field, list(a.shape))})) for a in arrays]
    merged, req = merged_request(calls)
    x = req.inputs["x"]
    assert merged.rows == 8 and not x.tensor_content and len(getattr(x, field)) == 8 * 6
    assert np.array_equal(tf.make_ndarray(x), np.concatenate(arrays))


def test_merge_two_inputs_3d_and_1d() -> None:
    rng = np.random.default_rng(3)
    members = [(rng.random((r, 2, 2), dtype=np.float32), rng.integers(0, 9, size=r))
               for r in (2, 1, 4)]
    calls = [call_of(request({"img": tf.make_tensor_proto(a),
                              "ids": packed(b, types_pb2.DT_INT64, "int64_val", [len(b)])}))
             for a, b in members]
    _, req = merged_request(calls)
    assert set(req.inputs) == {"img", "ids"}
    assert np.array_equal(tf.make_ndarray(req.inputs["img"]),
                          np.concatenate([a for a, _ in members]))
    assert np.array_equal(tf.make_ndarray(req.inputs["ids"]),
                          np.concatenate([b for _, b in members]))


def _unpacked_floats(values: list[float]) -> bytes:
    """A TensorProto with float_val written unpacked (one I32 field per value), as
    some encoders do; protobuf parsers must accept both."""
    shape = pbwire.len_field(2, pbwire.varint_field(1, len(values)))
    out = pbwire.varint_field(1, types_pb2.DT_FLOAT) + pbwire.len_field(2, shape)
    for v in values:
        out += pbwire.encode_varint(5 << 3 | pbwire.I32) + struct.pack("<f", v)
    return out


def test_merge_reads_unpacked_and_packed_alike() -> None:
    unpacked = _unpacked_floats([1.5, 2.5])
    as_read = tensor_pb2.TensorProto.FromString(unpacked)        # valid for the real parser
    assert list(as_read.float_val) == [1.5, 2.5]
    raw = pbwire.len_field(1, pbwire.len_field(1, HP2)) + pbwire.len_field(
        2, pbwire.len_field(1, "x") + pbwire.len_field(2, unpacked))
    a = call_of(raw)
    b = call_of(request({"x": packed([3.5], types_pb2.DT_FLOAT, "float_val", [1])}))
    assert codec.group(a) == codec.group(b) is not None
    _, req = merged_request([a, b])
    assert list(req.inputs["x"].float_val) == [1.5, 2.5, 3.5]
    assert list(req.inputs["x"].tensor_shape.dim[0:1]) == [
        tensor_shape_pb2.TensorShapeProto.Dim(size=3)]


# -- split ------------------------------------------------------------------------

def _reply(outputs: dict[str, tensor_pb2.TensorProto], sig: str = "serving_default"
           ) -> GrpcReply:
    resp = predict_pb2.PredictResponse()
    resp.model_spec.name = HP2
    resp.model_spec.version.value = VERSION
    resp.model_spec.signature_name = sig
    for alias, tensor in outputs.items():
        resp.outputs[alias].CopyFrom(tensor)
    return GrpcReply(OK, resp.SerializeToString())


def _members(rows: list[int]) -> list[Call]:
    return [call_of(request({"x": packed(np.zeros(r), types_pb2.DT_FLOAT, "float_val", [r])}))
            for r in rows]


def test_split_real_response_per_member() -> None:
    rows = [1, 3, 2, 1]
    total = sum(rows)
    rng = np.random.default_rng(11)
    y = rng.random((total, 5), dtype=np.float32)                 # tensor_content
    ids = rng.integers(-5, 1 << 40, size=total)                  # int64_val (varints)
    flags = rng.random(total) > 0.5                              # bool_val
    names = np.array([f"row-{i}".encode() * (i + 1) for i in range(total)])   # string_val
    scores = rng.random((total, 2))                              # double_val
    reply = _reply({"y": tf.make_tensor_proto(y),
                    "ids": packed(ids, types_pb2.DT_INT64, "int64_val", [total]),
                    "flags": packed(flags, types_pb2.DT_BOOL, "bool_val", [total]),
                    "names": tf.make_tensor_proto(names),
                    "scores": packed(scores, types_pb2.DT_DOUBLE, "double_val", [total, 2])})
    parts = codec.split(reply, _members(rows))
    assert parts is not None and len(parts) == len(rows)
    start = 0
    for part, r in zip(parts, rows, strict=True):
        assert part.code == OK
        resp = predict_pb2.PredictResponse.FromString(part.body)
        assert resp.model_spec == predict_pb2.PredictResponse.FromString(
            reply.body).model_spec
        expected: dict[str, np.ndarray] = {"y": y, "ids": ids, "flags": flags, "names": names,
                                           "scores": scores}
        assert set(resp.outputs) == set(expected)
        for alias, whole in expected.items():
            got = tf.make_ndarray(resp.outputs[alias])
            assert got.shape == (r, *whole.shape[1:]), alias
            assert np.array_equal(got, whole[start:start + r]), alias
            assert resp.outputs[alias].dtype == predict_pb2.PredictResponse.FromString(
                reply.body).outputs[alias].dtype
        start += r


def test_split_keeps_dim_names_and_packed_floats() -> None:
    t = packed([1.0, 2.0, 3.0, 4.0], types_pb2.DT_FLOAT, "float_val", [2, 2])
    t.tensor_shape.dim[0].name = "batch"
    t.tensor_shape.dim[1].name = "feature"
    parts = codec.split(_reply({"y": t}), _members([1, 1]))
    assert parts is not None
    second = predict_pb2.PredictResponse.FromString(parts[1].body).outputs["y"]
    assert list(second.float_val) == [3.0, 4.0]
    assert [(d.size, d.name) for d in second.tensor_shape.dim] == [(1, "batch"),
                                                                  (2, "feature")]


@pytest.mark.parametrize("case", ["rows", "scalar", "broadcast", "no values", "unknown",
                                  "resource", "truncated", "not_ok"])
def test_split_refuses_what_it_cannot_slice(case: str) -> None:
    good = tf.make_tensor_proto(np.arange(4, dtype=np.float32))
    outputs = {"y": good}
    code = OK
    if case == "rows":                                  # the node answered 3 rows for 4
        outputs["z"] = tf.make_tensor_proto(np.arange(3, dtype=np.float32))
    elif case == "scalar":
        outputs["z"] = tf.make_tensor_proto(1.0)
    elif case == "broadcast":                           # one value standing for four
        outputs["z"] = packed([1.0], types_pb2.DT_FLOAT, "float_val", [1])
        outputs["z"].tensor_shape.dim[0].size = 4
    elif case == "no values":                           # shape [4], values left out
        outputs["z"] = packed([], types_pb2.DT_FLOAT, "float_val", [4])
    elif case == "unknown":
        outputs["z"] = packed([1.0] * 4, types_pb2.DT_FLOAT, "float_val", [4])
        outputs["z"].tensor_shape.unknown_rank = True
    elif case == "resource":
        outputs["z"] = packed([], types_pb2.DT_RESOURCE, "float_val", [4])
        outputs["z"].resource_handle_val.add(device="cpu")
    else:
        code = grpc.StatusCode.INVALID_ARGUMENT
    reply = _reply(outputs)
    body = reply.body[:-3] if case == "truncated" else reply.body
    assert codec.split(GrpcReply(code, body), _members([1, 3])) is None
    assert codec.split(_reply({"y": good}), _members([1, 3])) is not None    # the control


# -- group ------------------------------------------------------------------------

def _x(values: Any, **kw: Any) -> Call:
    a = np.asarray(values, dtype=np.float32)
    return call_of(request({"x": packed(a, types_pb2.DT_FLOAT, "float_val", list(a.shape))},
                           **{k: v for k, v in kw.items() if k != "resolved"}),
                   resolved=kw.get("resolved", VERSION))


def test_group_keys_equal_for_batchable_calls() -> None:
    base = codec.group(_x([[1.0, 2.0]]))
    assert base is not None
    assert codec.group(_x([[5.0, 6.0]])) == base                 # other values
    assert codec.group(_x([[5.0, 6.0]] * 3)) == base             # other row counts
    assert codec.group(_x([[5.0, 6.0]], sig="serving_default")) == base
    assert codec.group(_x([[5.0, 6.0]], version=VERSION)) == base   # pinned to the same


def test_group_keys_differ_where_tf_serving_would_differ() -> None:
    base = codec.group(_x([[1.0, 2.0]]))
    others = {
        "dtype": call_of(request({"x": packed([[1, 2]], types_pb2.DT_DOUBLE, "double_val",
                                              [1, 2])})),
        "dims[1:]": _x([[1.0, 2.0, 3.0]]),
        "rank": _x([[[1.0, 2.0]]]),
        "signature": _x([[1.0, 2.0]], sig="other"),
        "filter": _x([[1.0, 2.0]], filters=("y",)),
        "version": _x([[1.0, 2.0]], resolved=124),
        "value field": call_of(request({"x": tf.make_tensor_proto(
            np.array([[1.0, 2.0]], dtype=np.float32))})),        # tensor_content
        "dtype, same content": call_of(request({"x": tf.make_tensor_proto(
            np.array([[1, 2]], dtype=np.int32))})),
        "int16, int_val": call_of(request({"x": packed([[1, 2]], types_pb2.DT_INT16,
                                                       "int_val", [1, 2])})),
        "int32, int_val": call_of(request({"x": packed([[1, 2]], types_pb2.DT_INT32,
                                                       "int_val", [1, 2])})),
        "model": _x([[1.0, 2.0]], model="other"),
        "alias": call_of(request({"z": packed([[1.0, 2.0]], types_pb2.DT_FLOAT, "float_val",
                                              [1, 2])})),
    }
    content = tensor_pb2.TensorProto.FromString(others["value field"].payload.request.inputs[0][1])
    assert content.tensor_content and not content.float_val
    keys = {name: codec.group(c) for name, c in others.items()}
    assert all(k is not None for k in keys.values()), keys
    assert len({base, *keys.values()}) == len(keys) + 1, keys


def test_group_none_for_what_goes_alone() -> None:
    f32 = types_pb2.DT_FLOAT
    unknown = packed([1.0, 2.0], f32, "float_val", [2])
    unknown.tensor_shape.dim[0].size = -1
    no_rank = packed([1.0, 2.0], f32, "float_val", [2])
    no_rank.tensor_shape.unknown_rank = True
    cases = {
        "strings": request({"x": tf.make_tensor_proto([b"a", b"b"])}),
        "scalar": request({"x": tf.make_tensor_proto(1.0)}),
        "broadcast": request({"x": packed([1.0], f32, "float_val", [3])}),
        "too many values": request({"x": packed([1.0, 2.0, 3.0], f32, "float_val", [2])}),
        "unknown dim": request({"x": unknown}),
        "unknown rank": request({"x": no_rank}),
        "no shape": request({"x": tensor_pb2.TensorProto(dtype=f32, float_val=[1.0])}),
        "zero rows": request({"x": packed([], f32, "float_val", [0, 2])}),
        "dtype/field mismatch": request({"x": packed([1], types_pb2.DT_INT64, "int_val", [1])}),
        "two value fields": request({"x": tensor_pb2.TensorProto(
            dtype=f32, tensor_shape=packed([1.0], f32, "float_val", [1]).tensor_shape,
            float_val=[1.0], double_val=[1.0])}),
        "complex": request({"x": packed([1.0, 2.0], types_pb2.DT_COMPLEX64, "scomplex_val",
                                        [1])}),
        "batch sizes differ": request({"a": packed([1.0], f32, "float_val", [1]),
                                       "b": packed([1.0, 2.0], f32, "float_val", [2])}),
        "no inputs": request({}),
        "label": request({"x": packed([1.0], f32, "float_val", [1])}, label="canary"),
    }
    with_client_id = request({"x": packed([1.0], f32, "float_val", [1])})
    with_client_id.client_id = b"tenant"
    calls = {name: call_of(req) for name, req in cases.items()}
    calls["client_id"] = call_of(with_client_id)
    calls["classify path"] = call_of(request({"x": packed([1.0], f32, "float_val", [1])}),
                                     path="/tensorflow.serving.PredictionService/Classify")
    calls["unresolved"] = call_of(request({"x": packed([1.0], f32, "float_val", [1])}),
                                  resolved=None)
    bad = call_of(request({"x": packed([1.0], f32, "float_val", [1])}))
    bad.payload.request.inputs = (("x", b"\x0a\xff"),)            # truncated TensorProto
    calls["malformed"] = bad
    assert {name: codec.group(c) for name, c in calls.items()} == dict.fromkeys(calls)


# -- round trip, any shapes and row counts ------------------------------------------

@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.integers(1, 5), min_size=2, max_size=5),
       inner=st.lists(st.integers(1, 3), max_size=2),
       kind=st.sampled_from(["content", "float_val", "int64_val", "bool_val"]))
def test_merge_then_split_round_trip(rows: list[int], inner: list[int], kind: str) -> None:
    rng = np.random.default_rng(len(rows) * 10 + len(inner))
    arrays = [rng.integers(-100, 100, size=(r, *inner)) for r in rows]
    typed = {"content": np.float32, "float_val": np.float32, "int64_val": np.int64,
             "bool_val": np.bool_}[kind]
    arrays = [(a > 0 if typed == np.bool_ else a).astype(typed) for a in arrays]
    dtype = {np.float32: types_pb2.DT_FLOAT, np.int64: types_pb2.DT_INT64,
             np.bool_: types_pb2.DT_BOOL}[typed]
    def tensor(a: np.ndarray) -> tensor_pb2.TensorProto:
        if kind == "content":
            t = packed([], dtype, "float_val", list(a.shape))
            t.tensor_content = a.tobytes()
            return t
        return packed(a, dtype, kind, list(a.shape))
    calls = [call_of(request({"x": tensor(a)})) for a in arrays]
    assert len({codec.group(c) for c in calls}) == 1 and codec.group(calls[0]) is not None
    _, req = merged_request(calls)
    whole = tf.make_ndarray(req.inputs["x"])
    assert np.array_equal(whole, np.concatenate(arrays))
    parts = codec.split(_reply({"y": req.inputs["x"]}), calls)   # an echo model
    assert parts is not None
    for part, a in zip(parts, arrays, strict=True):
        got = tf.make_ndarray(predict_pb2.PredictResponse.FromString(part.body).outputs["y"])
        assert got.shape == a.shape and np.array_equal(got, a)


# -- pbwire writers and packed readers -------------------------------------------------

def test_pbwire_packed_helpers() -> None:
    t = packed([1, -1, 300, 0], types_pb2.DT_INT64, "int64_val", [4])
    raw = t.SerializeToString()
    run = pbwire.message(raw, 10)
    assert run is not None and pbwire.count_varints(run) == 4
    assert pbwire.varint_offsets(run, [1, 2, 1]) == [0, 1, 11 + 2, 11 + 3]
    with pytest.raises(BadRequest):
        pbwire.count_varints(bytes(run)[:2])                    # cut inside the -1
    with pytest.raises(BadRequest):
        pbwire.varint_offsets(run, [5])
    mixed: list[tuple[int, pbwire.Value]] = [(pbwire.LEN, memoryview(b"\x01\x02")),
                                             (pbwire.VARINT, 300)]
    assert pbwire.packed_payload(mixed, pbwire.VARINT) == b"\x01\x02\xac\x02"
    assert pbwire.packed_payload([(pbwire.I32, memoryview(b"abcd"))], pbwire.VARINT) is None
    assert pbwire.packed_payload([(pbwire.LEN, memoryview(b"abc"))], pbwire.I32) is None
    # raw_field writes back every field exactly as read
    assert b"".join(pbwire.raw_field(*f) for f in pbwire.iter_fields(raw)) == raw


# -- end to end: real workers, a real proxy, the real client ---------------------------

@pytest.fixture(scope="module")
def batching_setup(logs_dir: Path, test_models: Path
                   ) -> Iterator[tuple[list[tuple[Proc, str]], ProxyProc]]:
    # A few ms of node latency, as any real model has: concurrent calls then find
    # every node busy and queue, so batches form (a free slot takes a call at once otherwise).
    started = start_workers(logs_dir, [{"models": {HP2: test_models / "half_plus_two_cpu"},
                                        "name": f"batch-{i}", "delay_ms": 10.0}
                                       for i in range(2)])
    nodes = [{"name": f"b{i}", "rest": url, "grpc": proc.grpc}
             for i, (proc, url) in enumerate(started)]
    try:
        proxy = ProxyProc(logs_dir, nodes, name="proxy-grpc-batch", grpc=True,
                          models={HP2: {"batching": {"max_rows": 64, "max_delay_ms": 5}}})
    except BaseException:
        for proc, _ in started:
            proc.stop()
        raise
    yield started, proxy
    proxy.stop()
    for proc, _ in started:
        proc.stop()


def _predict(x: np.ndarray, explicit: bool) -> predict_pb2.PredictRequest:
    tensor = (packed(x, types_pb2.DT_FLOAT, "float_val", list(x.shape)) if explicit
              else tf.make_tensor_proto(x))
    return request({"x": tensor})


def test_concurrent_predicts_batched_through_the_proxy(
        batching_setup: tuple[list[tuple[Proc, str]], ProxyProc]) -> None:
    started, proxy = batching_setup
    # 200 single-row calls, 20 of three rows in the same group (float_val), and 20 of
    # two rows sent as tensor_content (their own group): all distinct values.
    reqs = [_predict(np.array([0.25 + i], dtype=np.float32), False) for i in range(200)]
    reqs += [_predict(np.array([1000.5 + 3 * i, 1001.5 + 3 * i, 1002.5 + 3 * i],
                               dtype=np.float32), True) for i in range(20)]
    reqs += [_predict(np.array([-1.5 - 2 * i, -2.5 - 2 * i], dtype=np.float32), False)
             for i in range(20)]
    assert all(r.inputs["x"].float_val for r in reqs[:220])
    assert all(r.inputs["x"].tensor_content for r in reqs[220:])
    with grpc.insecure_channel(started[0][0].grpc or "") as direct_ch, \
            grpc.insecure_channel(proxy.grpc or "") as proxy_ch:
        direct = prediction_service_pb2_grpc.PredictionServiceStub(direct_ch)
        via = prediction_service_pb2_grpc.PredictionServiceStub(proxy_ch)
        expected = [f.result() for f in [direct.Predict.future(r, timeout=60) for r in reqs]]
        t0 = time.perf_counter()
        futures = [via.Predict.future(r, timeout=60) for r in reqs]
        answers = [f.result() for f in futures]
        elapsed = time.perf_counter() - t0
    for req, want, got in zip(reqs, expected, answers, strict=True):
        x = tf.make_ndarray(req.inputs["x"])
        assert got.model_spec == want.model_spec
        assert set(got.outputs) == set(want.outputs) == {"y"}
        y, y_direct = tf.make_ndarray(got.outputs["y"]), tf.make_ndarray(want.outputs["y"])
        assert y.shape == y_direct.shape == x.shape and y.dtype == y_direct.dtype
        assert np.array_equal(y, y_direct) and np.allclose(y, x / 2 + 2)
    stats = proxy.stats()["batching"][HP2]
    print("batching", stats, f"{len(reqs)} calls in {elapsed:.2f}s")
    assert stats["members"] == len(reqs)                   # every call joined a group
    assert stats["rows"] == 200 + 60 + 40
    assert stats["resends"] == 0                           # every batch answer split
    assert stats["rows_per_batch"] > 1 and stats["batches"] < len(reqs)
