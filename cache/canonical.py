"""Canonical byte forms of JSON bodies, for hashing.

Called by `cache.keys` only. Pure (no I/O). Two forms:

- `canonical_json(value)`: JSON with sorted keys. Numbers keep their JSON type
  (1 and 1.0 stay different: without the signature's dtypes we cannot know
  whether an input is an integer, and TF Serving rejects 1.0 for one).
  Non-finite floats and integers beyond 64 bits (possible when the body was
  parsed by the stdlib json module) get tagged forms instead of orjson's lossy
  `null`/error. One orjson call (C) does the common case; only a body orjson
  cannot serialise exactly (an error, or a `null` in its output, which may be
  a NaN) is walked in Python (`_normalise`), which yields the same bytes
  whenever orjson could, so keys do not depend on the path taken.
- `canonical_examples(body)`: the tf.train.Examples TF Serving builds for
  :classify / :regress ("examples" + optional "context"), following
  json_tensor.cc: a JSON float goes to a float_list (rounded to float32), a
  JSON int or bool to an int64_list, a string or {"b64": ...} to a bytes_list.
  So 1.0 and 1e0 are equal, true and 1 are equal, but 1 and 1.0 are not: TF
  Serving builds different features for them.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any

import orjson

from cache.errors import InvalidKeyInput, TensorDecodeError
from cache.tensors import is_b64_object, string_bytes

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_UINT64_MAX = (1 << 64) - 1
_F32 = struct.Struct("<f")
_F32_BITS = struct.Struct("<I")


# Types orjson would serialise but a JSON parser never produces go to the slow
# path (which rejects them), as do subclasses of str/int/dict/list; only UUIDs
# and Enum members, which orjson writes natively, are keyed as their JSON form.
_FAST = (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS
         | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_SUBCLASS)


def canonical_json(value: Any) -> bytes:
    """Sorted-key JSON bytes of `value`; raise InvalidKeyInput if it is not JSON data."""
    try:
        out = orjson.dumps(value, option=_FAST)
    except (TypeError, orjson.JSONEncodeError):
        pass           # an int beyond 64 bits, a non-str key, a non-JSON type: see below
    else:
        if b"null" not in out:       # orjson writes NaN and ±Infinity as null
            return out
    return canonical_json_slow(value)


def canonical_json_slow(value: Any) -> bytes:
    """canonical_json walking every value in Python (tags non-finite floats and
    big ints, rejects non-JSON types)."""
    try:
        return orjson.dumps(_normalise(value), option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError, RecursionError) as exc:
        raise InvalidKeyInput(f"body is not canonicalisable JSON: {exc}") from exc


def _normalise(value: Any) -> Any:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        return value if _INT64_MIN <= value <= _UINT64_MAX else {"$int": str(value)}
    if kind is float:
        return value if math.isfinite(value) else {"$float": repr(value)}
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if type(k) is not str:
                raise TypeError(f"object key {k!r} is not a string")
            out[k] = _normalise(v)
        return out
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    raise TypeError(f"{kind.__name__} is not a JSON type")


def canonical_examples(body: Mapping[str, Any]) -> bytes:
    """Canonical bytes of the Examples of a classify/regress body.

    Raises TensorDecodeError when TF Serving would reject the examples (the
    caller then falls back to `canonical_json`).
    """
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples:
        raise TensorDecodeError("'examples' must be a non-empty list")
    doc: dict[str, Any] = {"examples": [_example(e) for e in examples]}
    if "context" in body:
        doc["context"] = _example(body["context"])
    return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)


def _example(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TensorDecodeError("an Example must be a JSON object")
    features: dict[str, Any] = {}
    for name, content in value.items():
        items = content if isinstance(content, list) else [content]
        features[name] = _feature(items)
    return features


def _feature(items: list[Any]) -> list[Any]:
    """[kind, values]: kind "i" int64_list, "f" float_list (float32 bits), "b" bytes_list (hex)."""
    kind = ""
    values: list[Any] = []
    for item in items:
        item_kind, item_value = _feature_value(item)
        if kind and item_kind != kind:
            raise TensorDecodeError("mixed value kinds in one feature")
        kind = item_kind
        values.append(item_value)
    return [kind, values]


def _feature_value(item: Any) -> tuple[str, Any]:
    kind = type(item)
    if kind is bool:
        return "i", int(item)
    if kind is int:
        if not _INT64_MIN <= item <= _INT64_MAX:
            raise TensorDecodeError("feature integer outside int64")
        return "i", item
    if kind is float:
        try:
            return "f", _F32_BITS.unpack(_F32.pack(item))[0]
        except OverflowError as exc:
            raise TensorDecodeError("feature float outside float32") from exc
    if kind is str or is_b64_object(item):
        return "b", string_bytes(item).hex()
    raise TensorDecodeError(f"feature value of JSON type {kind.__name__} is not allowed")
