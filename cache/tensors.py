"""Decode TF Serving JSON tensors into typed, hashable bytes.

Called by `cache.keys` only. Pure (no I/O). The rules follow TF Serving's own
JSON parser (tensorflow_serving/util/json_tensor.cc) so that two bodies decode
to the same `Tensor` exactly when TF Serving would build the same tensor:

- shape from the nesting; every list at a level must have the same length;
- DT_FLOAT / DT_DOUBLE take JSON ints and floats, but not bools or strings,
  and reject values the dtype cannot hold without loss (as TF Serving does);
- integer dtypes take JSON ints only (1.0 is rejected, as in TF Serving) that
  fit the dtype; DT_BOOL takes true/false only;
- DT_STRING takes strings (UTF-8 bytes) or {"b64": "..."} objects (decoded).

Anything else raises `TensorDecodeError` and the caller falls back to a JSON
key, so a rejected body can never share a key with an accepted one.
Dtypes TF Serving's JSON parser does not support (DT_HALF, DT_BFLOAT16,
DT_UINT16, complex…) also raise.
"""

from __future__ import annotations

import base64
import binascii
import struct
from array import array
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any

from cache.errors import TensorDecodeError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
# numpy (about 10 MB of RSS) is imported by the functions that use it, when a key is
# first made in tensor mode: a proxy whose cache is off never loads it.

# TF dtype name -> little-endian numpy dtype, for the dtypes TF Serving's JSON accepts.
_INT_DTYPES = {
    "DT_INT8": "<i1", "DT_INT16": "<i2", "DT_INT32": "<i4", "DT_INT64": "<i8",
    "DT_UINT8": "<u1", "DT_UINT32": "<u4", "DT_UINT64": "<u8",
}
_FLOAT_DTYPES = {"DT_FLOAT": "<f4", "DT_DOUBLE": "<f8"}
# Largest integer each float type holds exactly (TF Serving's IsLosslessDecimal).
_FLOAT_MAX_INT = {"DT_FLOAT": (1 << 24) - 1, "DT_DOUBLE": (1 << 53) - 1}
_FLOAT_MAX = {"DT_FLOAT": 3.4028234663852886e38,         # float(np.finfo(np.float32).max)
              "DT_DOUBLE": float("inf")}
_LEN = struct.Struct("<Q")
_LIST_TYPES = frozenset({list, tuple})
_IS_INT = int.__instancecheck__      # C-level per element, for map(); bools are refused first

SUPPORTED_DTYPES = frozenset({*_INT_DTYPES, *_FLOAT_DTYPES, "DT_BOOL", "DT_STRING"})


@dataclass(slots=True)     # not frozen: built per request, treat as immutable
class Tensor:
    """One decoded input: what TF Serving would see, in a canonical byte form.

    `data` is the little-endian C-order buffer for numeric dtypes; for
    DT_STRING each element is an 8-byte length followed by its bytes, so a
    concatenation is never ambiguous.
    """

    dtype: str
    shape: tuple[int, ...]
    data: bytes


def decode(value: Any, dtype: str) -> Tensor:
    """Decode one JSON tensor `value` as TF dtype `dtype`; raise TensorDecodeError."""
    shape, leaves, kinds = _walk(value)
    if dtype in _FLOAT_DTYPES:
        data = _floats(leaves, kinds, dtype)
    elif dtype in _INT_DTYPES:
        data = _ints(leaves, kinds, dtype)
    elif dtype == "DT_BOOL":
        data = _bools(leaves, kinds)
    elif dtype == "DT_STRING":
        data = _strings(leaves)
    else:
        raise TensorDecodeError(f"dtype {dtype} is not supported by TF Serving's JSON API")
    return Tensor(dtype, shape, data)


def shape_and_leaves(value: Any) -> tuple[tuple[int, ...], list[Any]]:
    """Shape of a nested list and its leaves in C order; raise if ragged.

    Walks level by level (no recursion), so deep nesting cannot blow the stack.
    A dict is a leaf (the caller decides whether a {"b64": ...} leaf is valid).
    """
    shape, leaves, _ = _walk(value)
    return shape, leaves


def _walk(value: Any) -> tuple[tuple[int, ...], list[Any], set[type]]:
    """(shape, leaves, set of leaf types); see shape_and_leaves."""
    shape: list[int] = []
    level: list[Any] = [value]
    while level:
        kinds = set(map(type, level))  # C-speed: this runs over every leaf
        if kinds.isdisjoint(_LIST_TYPES):
            return tuple(shape), level, kinds
        if not kinds <= _LIST_TYPES:
            raise TensorDecodeError("lists and scalars mixed at one level")
        sizes = set(map(len, level))
        if len(sizes) != 1:
            raise TensorDecodeError("ragged nested list")
        shape.append(sizes.pop())
        if len(level) == 1 and type(level[0]) is list:
            level = level[0]                 # one row: no copy needed
        else:
            level = list(chain.from_iterable(level))
    # An empty dimension ends the walk: [[], []] has shape (2, 0).
    return tuple(shape), [], set()


def _floats(leaves: list[Any], kinds: set[type], dtype: str) -> bytes:
    import numpy as np
    if not kinds <= {int, float}:
        raise TensorDecodeError(f"{dtype} takes numbers only")
    if int in kinds:
        wide = _ints_as_floats(leaves, float in kinds, _FLOAT_MAX_INT[dtype], dtype)
    else:
        wide = np.frombuffer(array("d", leaves), dtype=np.float64)  # faster than np.array here
    if dtype == "DT_FLOAT" and wide.size and float(np.abs(wide).max()) > _FLOAT_MAX[dtype]:
        raise TensorDecodeError("value out of DT_FLOAT range")
    return wide.astype(_FLOAT_DTYPES[dtype]).tobytes()


def _ints_as_floats(leaves: list[Any], mixed: bool, limit: int,
                    dtype: str) -> npt.NDArray[np.float64]:
    """float64 of numbers some of which are JSON ints, which must be at most `limit`
    in magnitude (exact in the dtype). The check runs on the float64 values: with
    limit = 2**k - 1 <= 2**53 - 1, float(v) > limit exactly when v > limit."""
    import numpy as np
    try:
        wide = np.array(leaves, dtype=np.float64)    # C-level, faster than array("d") for ints
    except OverflowError as exc:                      # an int beyond float64: beyond any limit
        raise TensorDecodeError(f"integer too large for {dtype} without loss") from exc
    if not wide.size or float(np.abs(wide).max()) <= limit:
        return wide                                   # the common case: no leaf is that large
    if mixed:                                         # large floats are fine; large ints are not
        ints = wide[np.fromiter(map(_IS_INT, leaves), dtype=bool, count=len(leaves))]
        if not ints.size or float(np.abs(ints).max()) <= limit:
            return wide
    raise TensorDecodeError(f"integer too large for {dtype} without loss")


def _ints(leaves: list[Any], kinds: set[type], dtype: str) -> bytes:
    import numpy as np
    if not kinds <= {int}:
        raise TensorDecodeError(f"{dtype} takes JSON integers only")
    try:
        return np.array(leaves, dtype=_INT_DTYPES[dtype]).tobytes()
    except (OverflowError, ValueError) as exc:
        raise TensorDecodeError(f"integer out of range for {dtype}") from exc


def _bools(leaves: list[Any], kinds: set[type]) -> bytes:
    if not kinds <= {bool}:
        raise TensorDecodeError("DT_BOOL takes true/false only")
    return bytes(bytearray(leaves))


def _strings(leaves: list[Any]) -> bytes:
    parts: list[bytes] = []
    for leaf in leaves:
        raw = string_bytes(leaf)
        parts.append(_LEN.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def string_bytes(leaf: Any) -> bytes:
    """Bytes of a DT_STRING leaf: a str (UTF-8) or a {"b64": str} object."""
    if type(leaf) is str:
        return leaf.encode("utf-8", "surrogatepass")
    if is_b64_object(leaf):
        try:
            return base64.b64decode(leaf["b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise TensorDecodeError("invalid base64") from exc
    raise TensorDecodeError("DT_STRING takes strings or {\"b64\": ...} objects")


def is_b64_object(value: Any) -> bool:
    """True for {"b64": "<str>"} with no other key (TF Serving's IsValBase64Object)."""
    return isinstance(value, dict) and len(value) == 1 and type(value.get("b64")) is str
