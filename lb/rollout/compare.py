"""Two answers to one input, output by output: argmax agreement and absolute differences. Pure.

Called by `lb.rollout.service` once both the primary's and the shadow's answer
to a shadowed call are in (off the client's path: the client has its answer).
`rest_outputs` reads a TF Serving REST predict reply (`predictions`, row
format, or `outputs`, columnar; one unnamed output or a mapping of names);
`grpc_outputs` reads a PredictResponse from the wire (`outputs` map of
TensorProto: `tensor_content` or the typed repeated fields), without generated
classes. `compare` then, for each output present in both:

* classification-shaped outputs (numeric, rank >= 2, last dimension >= 2: a
  batch of scores over classes): argmax over the last axis, per row; a row
  agrees when every classification output agrees on it;
* every numeric output: max and mean absolute difference.

Rows are the leading dimension (a request's instances). Numbers only: an
output of strings, ragged lists or differing shapes or names makes the pair
`mismatch` (reported, not compared).

Guarantees: never raises on what a node sent (unreadable answers are None);
numpy is imported on first use, so a proxy without shadows never loads it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import orjson

from lb.errors import BadRequest
from lb.grpc.pbwire import I32, I64, VARINT, iter_fields, last_of, message, messages, packed_payload

if TYPE_CHECKING:
    import numpy as np

MAX_ROWS_LISTED = 32            # disagreeing row indices kept per pair
Outputs = dict[str, "np.ndarray[Any, Any]"]

# TensorProto dtype -> (numpy dtype of tensor_content, typed field, its wire, its dtype)
_DTYPES: dict[int, tuple[str, int, int, str]] = {
    1: ("<f4", 5, I32, "<f4"),        # DT_FLOAT: float_val
    2: ("<f8", 6, I64, "<f8"),        # DT_DOUBLE: double_val
    3: ("<i4", 7, VARINT, "varint"),  # DT_INT32: int_val
    4: ("<u1", 7, VARINT, "varint"),  # DT_UINT8
    5: ("<i2", 7, VARINT, "varint"),  # DT_INT16
    6: ("<i1", 7, VARINT, "varint"),  # DT_INT8
    9: ("<i8", 10, VARINT, "varint"),  # DT_INT64: int64_val
    10: ("<u1", 11, VARINT, "varint"),  # DT_BOOL: bool_val
}


@dataclass(slots=True)
class Comparison:
    """What one pair of answers showed."""

    rows: int = 0                   # rows in the answers (leading dimension)
    class_rows: int = 0             # rows compared by argmax (0: no classification output)
    agreed: int = 0                 # of those, rows whose argmax agreed
    disagreeing: list[int] = field(default_factory=list)   # their indices (first 32)
    primary_classes: list[int] = field(default_factory=list)   # argmax at those rows
    shadow_classes: list[int] = field(default_factory=list)
    max_abs: float = 0.0
    sum_abs: float = 0.0
    values: int = 0                 # numbers compared for the differences
    mismatch: str | None = None     # why the answers could not be compared


def _np() -> Any:
    import numpy
    return numpy


def _array(value: Any) -> np.ndarray[Any, Any] | None:
    """A numeric array of a JSON value, None when it is not one (strings, ragged)."""
    np_ = _np()
    try:
        arr = np_.asarray(value)
    except (ValueError, TypeError):
        return None
    if arr.dtype.kind not in "biuf":
        return None
    return cast("np.ndarray[Any, Any]", arr)


def rest_outputs(body: bytes) -> Outputs | None:
    """The outputs of a REST predict reply (see the module docstring), or None."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    if "predictions" in doc:
        preds = doc["predictions"]
        if isinstance(preds, list) and preds and all(isinstance(r, dict) for r in preds):
            names = preds[0].keys()
            if any(r.keys() != names for r in preds):
                return None
            cols: dict[str, Any] = {n: [r[n] for r in preds] for n in names}
        else:
            cols = {"": preds}
    elif "outputs" in doc:
        outs = doc["outputs"]
        cols = dict(outs) if isinstance(outs, dict) else {"": outs}
    else:
        return None
    out: Outputs = {}
    for name, value in cols.items():
        arr = _array(value)
        if arr is None:
            return None
        out[name] = arr
    return out


def _shape(tensor: memoryview) -> tuple[int, ...] | None:
    shape_msg = message(tensor, 2)
    if shape_msg is None:
        return ()
    dims = []
    for dim in messages(shape_msg, 2):
        size = last_of(dim, 1, VARINT)
        dims.append(int(size) if isinstance(size, int) else 0)
    return tuple(dims)


def _tensor(tensor: memoryview) -> np.ndarray[Any, Any] | None:
    """A numeric TensorProto as an array; None for other dtypes or a bad size."""
    np_ = _np()
    dtype_code = last_of(tensor, 1, VARINT)
    spec = _DTYPES.get(dtype_code if isinstance(dtype_code, int) else 0)
    shape = _shape(tensor)
    if spec is None or shape is None:
        return None
    content_dtype, number, wire, typed = spec
    size = 1
    for d in shape:
        size *= d
    content = last_of(tensor, 4)
    if isinstance(content, memoryview) and len(content):
        flat = np_.frombuffer(bytes(content), dtype=content_dtype)
    else:
        found = [(w, v) for n, w, v in iter_fields(tensor) if n == number]
        payload = packed_payload(found, wire)
        if payload is None:
            return None
        if typed == "varint":
            flat = np_.asarray(_varints(payload), dtype=np_.int64)
        else:
            flat = np_.frombuffer(payload, dtype=typed)
        if len(flat) == 1 and size > 1:          # TF Serving's splat of one value
            flat = np_.full(size, flat[0])
    if flat.size != size:
        return None
    return cast("np.ndarray[Any, Any]", flat.reshape(shape))


def _varints(payload: bytes) -> list[int]:
    out, pos, end = [], 0, len(payload)
    view = memoryview(payload)
    while pos < end:
        value = shift = 0
        while True:
            byte = view[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        out.append(value - (1 << 64) if value >= 1 << 63 else value)
    return out


def grpc_outputs(body: bytes) -> Outputs | None:
    """The outputs of a PredictResponse (field 1, a map of TensorProto), or None."""
    out: Outputs = {}
    try:
        for entry in messages(body, 1):
            name = last_of(entry, 1)
            tensor = message(entry, 2)
            if not isinstance(name, memoryview) or tensor is None:
                return None
            arr = _tensor(tensor)
            if arr is None:
                return None
            out[bytes(name).decode("utf-8", "replace")] = arr
    except (BadRequest, ValueError, struct.error):
        return None
    return out or None


def _rows(arr: np.ndarray[Any, Any]) -> int:
    return int(arr.shape[0]) if arr.ndim else 1


def compare(primary: Outputs, shadow: Outputs) -> Comparison:
    """Compare two answers output by output (see the module docstring)."""
    np_ = _np()
    if primary.keys() != shadow.keys():
        return Comparison(mismatch=f"outputs differ: {sorted(primary)} vs {sorted(shadow)}")
    out = Comparison()
    rows = {_rows(a) for a in primary.values()} | {_rows(a) for a in shadow.values()}
    if len(rows) != 1:
        return Comparison(mismatch="outputs with different row counts")
    out.rows = n = rows.pop()
    agree = first = None
    for name in sorted(primary):
        a, b = primary[name], shadow[name]
        if a.shape != b.shape:
            return Comparison(rows=n, mismatch=f"output {name!r}: shape {list(a.shape)} "
                                               f"vs {list(b.shape)}")
        if a.size:
            diff = np_.abs(a.astype(np_.float64) - b.astype(np_.float64))
            out.max_abs = max(out.max_abs, float(diff.max()))
            out.sum_abs += float(diff.sum())
            out.values += int(a.size)
        if a.ndim >= 2 and a.shape[-1] >= 2 and a.dtype.kind == "f":
            pa = np_.argmax(a, axis=-1).reshape(n, -1)
            pb = np_.argmax(b, axis=-1).reshape(n, -1)
            same = np_.all(pa == pb, axis=1)
            agree = same if agree is None else agree & same
            if first is None:                    # the classes shown: the first output's
                first = (pa[:, 0], pb[:, 0])
    if agree is not None and first is not None:
        out.class_rows = n
        out.agreed = int(agree.sum())
        bad = np_.flatnonzero(~agree)[:MAX_ROWS_LISTED]
        out.disagreeing = [int(i) for i in bad]
        out.primary_classes = [int(first[0][i]) for i in bad]
        out.shadow_classes = [int(first[1][i]) for i in bad]
    return out
