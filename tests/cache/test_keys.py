"""cache.keys: equivalence classes share one key, near misses never collide."""

from __future__ import annotations

import base64
import datetime
import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cache.canonical import canonical_json, canonical_json_slow
from cache.errors import InvalidKeyInput, TensorDecodeError
from cache.keys import _batched_rows, _row_tensors, _tensor_fields, key_mode, request_key, row_keys

X = {"x": "DT_FLOAT"}
XY = {"a": "DT_FLOAT", "b": "DT_INT64"}
S = {"s": "DT_STRING"}
KEY_RE = re.compile(r"^tfslb:v1:mnist:3:[0-9a-f]{32}$")


def key(body: Any, dtypes: Any = X, **kw: Any) -> str:
    args = {"model": "mnist", "version": "3", "verb": "predict"} | kw
    return request_key(args["model"], args["version"], args["verb"], body, dtypes,
                       args.get("signature_name"))


def test_format() -> None:
    assert KEY_RE.match(key({"instances": [[1.0]]}))
    assert KEY_RE.match(key({"instances": [[1.0]]}, None))


@pytest.mark.parametrize("bodies", [
    # 1 / 1.0 / 1e0 for a float input
    [{"instances": [[1, 2]]}, {"instances": [[1.0, 2.0]]}, {"instances": [[1e0, 2e0]]}],
    # row vs columnar, single input
    [{"instances": [[1, 2], [3, 4]]}, {"inputs": [[1, 2], [3, 4]]},
     {"instances": [{"x": [1, 2]}, {"x": [3, 4]}]}, {"inputs": {"x": [[1, 2], [3, 4]]}}],
    # default vs explicit signature, JSON key order
    [{"instances": [[1]]}, {"signature_name": "serving_default", "instances": [[1]]},
     {"instances": [[1]], "signature_name": ""}],
])
def test_equivalent_bodies_share_a_key(bodies: list[Any]) -> None:
    assert len({key(b) for b in bodies}) == 1


def test_multi_input_row_columnar_and_order() -> None:
    rows = {"instances": [{"a": [1, 2], "b": 7}, {"b": 8, "a": [3.0, 4e0]}]}
    cols = {"inputs": {"b": [7, 8], "a": [[1, 2], [3, 4]]}}
    assert key(rows, XY) == key(cols, XY)
    assert key(rows, XY) != key({"inputs": {"b": [8, 7], "a": [[1, 2], [3, 4]]}}, XY)


def test_explicit_signature_argument() -> None:
    body = {"instances": [[1]]}
    assert key(body, signature_name="serving_default") == key(body)
    assert key(body, signature_name="other") == key({"signature_name": "other", **body})


def test_b64_and_plain_strings() -> None:
    raw = b"\x00\xffpng"
    b64 = {"b64": base64.b64encode(raw).decode()}
    assert key({"instances": [b64]}, S) == key({"inputs": [b64]}, S)
    assert key({"instances": [b64]}, S) == key({"instances": [{"s": b64}]}, S)
    plain = {"b64": base64.b64encode(b"abc").decode()}
    assert key({"inputs": ["abc"]}, S) == key({"inputs": [plain]}, S)
    # lengths are hashed: ["ab", "c"] is not ["a", "bc"]
    assert key({"inputs": ["ab", "c"]}, S) != key({"inputs": ["a", "bc"]}, S)


@pytest.mark.parametrize(("a", "b"), [
    ({"inputs": [[1, 2]]}, {"inputs": [[1], [2]]}),                 # shape [1,2] vs [2,1]
    ({"inputs": [1, 2]}, {"inputs": [[1, 2]]}),                     # rank
    ({"inputs": [[1, 2]]}, {"inputs": [[2, 1]]}),                   # values
    ({"inputs": [0.0]}, {"inputs": [-0.0]}),                        # different bits
    ({"instances": [[1, 2]]}, {"instances": [[1, 2], [1, 2]]}),     # batch size
])
def test_near_misses(a: Any, b: Any) -> None:
    assert key(a) != key(b)


def test_dtype_signature_model_version_verb_never_collide() -> None:
    body = {"instances": [[1.0, 2.0]]}
    keys = {
        key(body), key(body, {"x": "DT_DOUBLE"}), key(body, {"y": "DT_FLOAT"}),
        key(body, signature_name="other"), key(body, model="mnist2"), key(body, version="4"),
        key(body, verb="regress"), key(body, None), key({"instances": [[1, 2]]}, {"x": "DT_INT64"}),
    }
    assert len(keys) == 9


def test_model_with_colon_does_not_collide() -> None:
    body = {"instances": [[1]]}
    a = request_key("a:b", "c", "predict", body, X)
    b = request_key("a", "b:c", "predict", body, X)
    assert a.rsplit(":", 1)[0] == b.rsplit(":", 1)[0]
    assert a != b


@pytest.mark.parametrize(("body", "dtypes"), [
    ({"inputs": [1.5]}, {"x": "DT_INT32"}),          # float for an int input
    ({"inputs": [True]}, X),                          # bool for a float input
    ({"inputs": ["1"]}, X),                           # string for a float input
    ({"inputs": [[1, 2], [3]]}, X),                   # ragged
    ({"inputs": [300]}, {"x": "DT_UINT8"}),           # out of range
    ({"inputs": [16777217]}, X),                      # not exact in float32
    ({"inputs": [1], "instances": [[1]]}, X),         # both formats
    ({"inputs": [1], "extra": 1}, X),                 # unknown field
    ({"instances": [[1]]}, XY),                       # plain rows, several inputs
    ({"inputs": [1.0]}, {"x": "DT_HALF"}),            # dtype TF Serving JSON rejects
])
def test_undecodable_bodies_fall_back_to_json(body: Any, dtypes: Any) -> None:
    assert key(body, dtypes) == key(body, None)


def test_json_fallback_properties() -> None:
    assert key({"inputs": {"b": 1, "a": 2}}, None) == key({"inputs": {"a": 2, "b": 1}}, None)
    assert key({"instances": [[1]], "signature_name": "serving_default"}, None) == key(
        {"instances": [[1]]}, None)
    # without dtypes 1 and 1.0 stay apart (TF Serving rejects 1.0 for an int input)
    assert key({"instances": [[1]]}, None) != key({"instances": [[1.0]]}, None)
    assert key({"inputs": [float("nan")]}, None) != key({"inputs": [None]}, None)
    assert key({"inputs": [2**70]}, None) != key({"inputs": [str(2**70)]}, None)


def test_examples_follow_tf_serving_feature_kinds() -> None:
    def ck(body: Any, verb: str = "classify") -> str:
        return key(body, None, verb=verb)
    assert ck({"examples": [{"f": 1.0, "g": "a"}]}) == ck({"examples": [{"g": "a", "f": 1e0}]})
    assert ck({"examples": [{"f": [True, 2]}]}) == ck({"examples": [{"f": [1, 2]}]})
    # int64_list vs float_list in TF Serving
    assert ck({"examples": [{"f": 1}]}) != ck({"examples": [{"f": 1.0}]})
    assert ck({"examples": [{"f": 1.0}]}) != ck({"examples": [{"f": 1.0}]}, "regress")
    with_ctx = {"examples": [{"f": 1.0}], "context": {"c": "x"}}
    assert ck(with_ctx) != ck({"examples": [{"f": 1.0}]})
    assert ck({"examples": [{"f": "abc"}]}) == ck({"examples": [{"f": {"b64": "YWJj"}}]})


def test_invalid_key_input() -> None:
    with pytest.raises(InvalidKeyInput):
        key([1, 2])
    with pytest.raises(InvalidKeyInput):
        key({"inputs": {1, 2}}, None)
    with pytest.raises(ValueError):  # InvalidKeyInput is a ValueError
        key("x")


def test_key_mode() -> None:
    assert key_mode(X) == "tensor"
    assert key_mode(None) == "json"
    assert key_mode({}) == "json"


def test_row_keys() -> None:
    body = {"instances": [[1, 2], [3, 4], [1.0, 2.0]]}
    keys = row_keys("mnist", "3", None, body, X)
    assert keys is not None and len(keys) == 3
    assert keys[0] == keys[2] != keys[1]
    assert keys == row_keys("mnist", "3", "serving_default",
                            {"instances": [{"x": [1, 2]}, {"x": [3, 4]}, {"x": [1, 2]}]}, X)
    # a row key is never the request key of a one-row request
    assert keys[0] != key({"instances": [[1, 2]]})
    assert row_keys("mnist", "3", None, {"inputs": [[1, 2]]}, X) is None
    assert row_keys("mnist", "3", None, body, None) is None
    assert row_keys("mnist", "3", None, {"instances": [[1, 2], [3]]}, X) is None
    assert row_keys("mnist", "4", None, body, X) != keys


# --- property: same key <=> same decoded tensors --------------------------------------

shapes = st.lists(st.integers(1, 3), min_size=1, max_size=3)
dtypes = st.sampled_from(["DT_FLOAT", "DT_DOUBLE", "DT_INT32", "DT_INT64"])


@st.composite
def tensors(draw: st.DrawFn) -> tuple[str, list[int], list[Any]]:
    dtype = draw(dtypes)
    shape = draw(shapes)
    n = int(np.prod(shape))
    elems = st.integers(-1000, 1000)
    return dtype, shape, draw(st.lists(elems, min_size=n, max_size=n))


def _nest(flat: list[Any], shape: list[int]) -> Any:
    return np.array(flat, dtype=object).reshape(shape).tolist()


@settings(max_examples=200, deadline=None)
@given(tensors(), tensors())
def test_property_key_equal_iff_tensors_equal(a: Any, b: Any) -> None:
    (da, sa, fa), (db, sb, fb) = a, b
    ka = key({"inputs": _nest(fa, sa)}, {"x": da})
    kb = key({"inputs": _nest(fb, sb)}, {"x": db})
    assert (ka == kb) == (da == db and sa == sb and fa == fb)


@settings(max_examples=100, deadline=None)
@given(tensors())
def test_property_float_spelling_and_format_do_not_matter(t: Any) -> None:
    _, shape, flat = t
    as_ints = key({"inputs": _nest(flat, shape)}, {"x": "DT_FLOAT"})
    as_floats = key({"instances": _nest([float(v) for v in flat], shape)}, {"x": "DT_FLOAT"})
    assert as_ints == as_floats


# --- the fast paths give the very same keys -----------------------------------------

def test_key_values_are_stable() -> None:
    """Keys computed by the code before the fast paths: entries already in Redis
    under tfslb:v1 stay valid (a change of value needs a new prefix)."""
    assert key({"instances": [[0.5, 1, 0, 2.25]]}) == (
        "tfslb:v1:mnist:3:b5d8828373c7d442ce3a8b2fc8787fa5")
    assert key({"instances": [[0.5, 1, 0, 2.25]]}, None) == (
        "tfslb:v1:mnist:3:dbb2c9301d0bcabd501f629b51cce1c6")
    assert key({"inputs": {"b": [1, None, "null"], "a": [float("nan"), 2**70]}}, None) == (
        "tfslb:v1:mnist:3:fad2c7ab16aaf965e90d4973969aa084")
    assert key({"instances": [[1, 2], [3, 4]], "signature_name": "s"}, {"x": "DT_INT64"}) == (
        "tfslb:v1:mnist:3:b6f8983d348d79cdfc2012690f2a858e")
    assert key({"examples": [{"f": 1.0, "g": "a"}]}, None, verb="classify") == (
        "tfslb:v1:mnist:3:82882128977bf1da3a7c107265d41217")
    assert row_keys("mnist", "3", None, {"instances": [[1, 2.5], [3, 4]]}, X) == [
        "tfslb:v1:mnist:3:e32e8b0bf13f02188fb61e1904f498a8",
        "tfslb:v1:mnist:3:8636ec02b9c777f7d1c0523844b420b1"]
    assert row_keys("mnist", "3", None, {"instances": [7, 8.5]}, X) == [
        "tfslb:v1:mnist:3:0d18d2609384d415122a3e72ebc2dbe4",
        "tfslb:v1:mnist:3:6e9259f0818ab0fe86c73a91e3e8d5a9"]


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.sampled_from(["null", "a", ""])
    | st.integers(-(2**70), 2**70) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_property_canonical_json_fast_equals_slow(value: Any) -> None:
    assert canonical_json(value) == canonical_json_slow(value)


def test_canonical_json_rejects_non_json_either_way() -> None:
    for bad in ({1: "int key"}, {"s": {1, 2}}, [b"bytes"], {"d": datetime.date(2020, 1, 1)}):
        with pytest.raises(InvalidKeyInput):
            canonical_json(bad)


rows_strategy = st.integers(1, 4).flatmap(lambda width: st.lists(
    st.lists(st.integers(-300, 300) | st.floats(-1e6, 1e6, width=32), min_size=width,
             max_size=width), min_size=1, max_size=5))


@settings(max_examples=200, deadline=None)
@given(rows_strategy, st.sampled_from(["DT_FLOAT", "DT_DOUBLE", "DT_INT32", "DT_UINT8"]))
def test_property_batched_row_keys_equal_row_by_row(rows: list[Any], dtype: str) -> None:
    dtypes = {"x": dtype}
    try:
        one_by_one = [_tensor_fields(_row_tensors(row, dtypes)) for row in rows]
    except TensorDecodeError:
        one_by_one = None
    try:
        batched = _batched_rows(rows, dtypes)
    except TensorDecodeError:
        batched = None
    assert batched == one_by_one


def test_float_inputs_with_large_ints() -> None:
    # ints must be exact in the dtype; large floats are fine (TF Serving's rules)
    assert key({"inputs": [16777215, 0.5]}) != key({"inputs": [16777215, 0.5]}, None)
    assert key({"inputs": [16777216, 0.5]}) == key({"inputs": [16777216, 0.5]}, None)
    assert key({"inputs": [1e30, 3]}) != key({"inputs": [1e30, 3]}, None)
    assert key({"inputs": [2**64, 0.5]}, {"x": "DT_DOUBLE"}) == key(
        {"inputs": [2**64, 0.5]}, None)
    assert key({"inputs": [10**400]}, {"x": "DT_DOUBLE"}) == key({"inputs": [10**400]}, None)
    assert key({"inputs": [-(2**53 - 1)]}, {"x": "DT_DOUBLE"}) != key(
        {"inputs": [-(2**53 - 1)]}, None)
    assert key({"inputs": [-(2**53)]}, {"x": "DT_DOUBLE"}) == key({"inputs": [-(2**53)]}, None)
