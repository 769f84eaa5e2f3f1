"""Merging and splitting gRPC Predict calls for micro-batching (`lb.request.batching`), on the wire.

Called by `lb.request.dispatch` (`group`, for the ticket) and by `lb.request.batching` (`merge`,
`split`) for the gRPC front's calls of models with `batching` configured.
Like `lb.rest.batch`, but on raw protobuf bytes (`lb.grpc.pbwire`): the proxy
never imports TensorFlow or generated classes. Field numbers are those of
tensorflow_serving/apis/predict.proto and tensorflow/core/framework/
tensor.proto, tensor_shape.proto and types.proto.

A Predict call joins a group when its version is resolved (not a label), it
carries no field beyond model_spec, inputs and output_filter, and every input
TensorProto has a known shape with dim 0 >= 1 (the same for all inputs), one
dtype and exactly as many values as its shape holds (no broadcast of a single
value), in `tensor_content` or in the one numeric/bool value field that goes
with its dtype (float, double, int, int64, bool, half, uint32, uint64; packed
or not). Strings, scalars, unknown shapes and anything else go alone. The
group key is (model, version, signature, output_filter, and per input alias:
dtype, dims[1:], value field), so only calls TF Serving would treat alike
share a batch.

The merged request is pinned to the resolved version; each input is the
concatenation along dim 0 (tensor_content bytes, or the values re-encoded
packed). The node's PredictResponse is split back in order: each member gets
the reply's model_spec and every output sliced along dim 0 by its rows, with
dtype and version_number copied and dims[0] set to its rows.

Guarantees: pure (no I/O); `group` and `split` never raise for bytes they
cannot read (None instead); `split` returns None for a reply whose outputs do
not all have dim 0 equal to the batch's rows or cannot be sliced exactly, and
`lb.request.batching` then resends the members one by one.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from itertools import pairwise
from math import prod

from lb.errors import BadRequest
from lb.grpc.messages import DEFAULT_SIGNATURE, ModelSpec, Request
from lb.grpc.pbwire import (
    I32,
    I64,
    LEN,
    VARINT,
    Value,
    as_int64,
    count_varints,
    iter_fields,
    last_of,
    len_field,
    message,
    packed_payload,
    raw_field,
    varint_field,
    varint_offsets,
)
from lb.grpc.upstream import OK, GrpcPayload, GrpcReply
from lb.request.call import Call, Deadline

PREDICT = "/tensorflow.serving.PredictionService/Predict"

CONTENT, STRING_VAL = 4, 8
# Value fields of TensorProto -> their scalar wire type.
_FIXED_FIELDS = {5: I32, 6: I64, 9: I32, 12: I64}    # float, double, scomplex, dcomplex
_VARINT_FIELDS = frozenset({7, 10, 11, 13, 16, 17})  # int, int64, bool, half, uint32, uint64
_WIDTH = {I32: 4, I64: 8}
_COMPLEX = frozenset({9, 12})                        # two values per element
# The value field each dtype may use in a request we batch (types.proto numbers).
_FIELD_OF_DTYPE = {1: 5, 2: 6, 3: 7, 4: 7, 5: 7, 6: 7, 17: 7, 9: 10, 10: 11, 19: 13, 14: 13,
                   22: 16, 23: 17}
# Bytes per element in tensor_content (fixed-size dtypes only; strings never).
_ITEMSIZE = {1: 4, 2: 8, 3: 4, 4: 1, 5: 2, 6: 1, 8: 8, 9: 8, 10: 1, 11: 1, 12: 1, 13: 4,
             14: 2, 15: 2, 16: 2, 17: 2, 18: 16, 19: 2, 22: 4, 23: 8}


@dataclass(slots=True)
class _Tensor:
    """One TensorProto as the codec reads it: values normalised to one payload."""

    dtype: int = 0
    dims: list[int] = field(default_factory=list)
    dim0_name: memoryview | None = None     # Dim.name of dim 0, kept on split
    dims_raw: list[memoryview] = field(default_factory=list)
    version_number: int = 0
    value_field: int | None = None          # CONTENT or a value field; None: no values
    payload: bytes | memoryview = b""       # tensor_content, or the packed values
    strings: list[memoryview] = field(default_factory=list)   # string_val elements
    count: int = 0                          # values (bytes for tensor_content)


def _read_shape(shape: memoryview, t: _Tensor) -> bool:
    for number, wire, value in iter_fields(shape):
        if number == 2 and wire == LEN and isinstance(value, memoryview):
            size, name = 0, None
            for n, _, v in iter_fields(value):           # Dim{size=1, name=2}
                if n == 1 and isinstance(v, int):
                    size = as_int64(v) or 0
                elif n == 2 and isinstance(v, memoryview):
                    name = v
            if size < 0:
                return False
            if not t.dims:
                t.dim0_name = name
            t.dims.append(size)
            t.dims_raw.append(value)
        elif not (number == 3 and wire == VARINT and value == 0):   # unknown_rank, other
            return False
    return True


def _read_values(t: _Tensor, number: int, found: list[tuple[int, Value]]) -> bool:
    t.value_field = number
    if number == CONTENT:
        value = found[-1][1]                # a singular bytes field: the last one wins
        if not isinstance(value, memoryview):
            return False
        t.payload = value
        t.count = len(value)
    elif number == STRING_VAL:
        if any(w != LEN or not isinstance(v, memoryview) for w, v in found):
            return False
        t.strings = [v for _, v in found if isinstance(v, memoryview)]
        t.count = len(t.strings)
    else:
        wire = _FIXED_FIELDS.get(number, VARINT)
        payload = packed_payload(found, wire)
        if payload is None:
            return False
        t.payload = payload
        t.count = count_varints(payload) if wire == VARINT else len(payload) // _WIDTH[wire]
    return True


def _read_tensor(raw: bytes | memoryview) -> _Tensor | None:
    """The parts of a TensorProto the codec works with; None when it holds anything
    it cannot merge or slice (resource or variant values, two value fields, an
    unknown field, a repeated shape, malformed bytes)."""
    t = _Tensor()
    shape: memoryview | None = None
    values: dict[int, list[tuple[int, Value]]] = {}
    try:
        for number, wire, value in iter_fields(raw):
            if number == 1 and isinstance(value, int):
                t.dtype = value
            elif number == 2 and isinstance(value, memoryview) and shape is None:
                shape = value
            elif number == 3 and isinstance(value, int):
                t.version_number = value
            elif (number in (CONTENT, STRING_VAL) or number in _FIXED_FIELDS
                  or number in _VARINT_FIELDS):
                values.setdefault(number, []).append((wire, value))
            else:
                return None
        if shape is None or len(values) > 1 or not _read_shape(shape, t):
            return None
        for number, found in values.items():
            if not _read_values(t, number, found):
                return None
    except BadRequest:
        return None
    return t


def _elements(t: _Tensor) -> int:
    """How many values (bytes for tensor_content) the shape calls for; -1: unknown."""
    n = prod(t.dims)
    if t.value_field == CONTENT:
        return n * _ITEMSIZE[t.dtype] if t.dtype in _ITEMSIZE else -1
    return 2 * n if t.value_field in _COMPLEX else n


def _input_key(tensor: bytes, rows: int) -> tuple[int, tuple[int, ...], int] | None:
    t = _read_tensor(tensor)
    if (t is None or not t.dims or t.dims[0] != rows or t.value_field is None
            or prod(t.dims) == 0 or t.count != _elements(t)):
        return None
    if t.value_field != CONTENT and _FIELD_OF_DTYPE.get(t.dtype) != t.value_field:
        return None
    return t.dtype, tuple(t.dims[1:]), t.value_field


def _shape(dims: list[int]) -> bytes:
    return b"".join(len_field(2, varint_field(1, d)) for d in dims)


def _spec(spec: ModelSpec, version: int) -> bytes:
    out = len_field(1, spec.name)
    out += len_field(2, varint_field(1, version) if version else b"")
    if spec.signature_name:
        out += len_field(3, spec.signature_name)
    return out


def _values_of(raw: bytes, number: int) -> bytes | memoryview:
    """The values of a tensor `group` accepted: its tensor_content, or its value field
    packed (merge reads only these: the shape and dtype are the first member's)."""
    found = [(w, v) for n, w, v in iter_fields(raw) if n == number]
    if number == CONTENT:
        value = found[-1][1]
        assert isinstance(value, memoryview)
        return value
    payload = packed_payload(found, _FIXED_FIELDS.get(number, VARINT))
    assert payload is not None
    return payload


def _merge_input(tensors: list[bytes], rows: int) -> bytes:
    first = _read_tensor(tensors[0])
    assert first is not None and first.value_field is not None   # group() checked
    values = b"".join([_values_of(raw, first.value_field) for raw in tensors])
    out = varint_field(1, first.dtype) if first.dtype else b""
    return out + len_field(2, _shape([rows, *first.dims[1:]])) + len_field(
        first.value_field, values)


def _slice_tensor(raw: memoryview | None, rows: list[int], total: int) -> list[bytes] | None:
    """One TensorProto per member, sliced along dim 0; None when it cannot be."""
    t = _read_tensor(raw) if raw is not None else None
    if t is None or not t.dims or t.dims[0] != total:
        return None
    expected = _elements(t) if t.value_field is not None else 0
    if t.value_field is None and prod(t.dims) != 0:
        return None                    # values left out: we cannot tell what they are
    if t.value_field == CONTENT and expected < 0:
        expected = t.count if t.count % total == 0 else -1
    if t.count != expected:
        return None
    per_row = t.count // total
    counts = [per_row * r for r in rows]
    head = varint_field(1, t.dtype) if t.dtype else b""
    tail_dims = b"".join(len_field(2, d) for d in t.dims_raw[1:])
    version = varint_field(3, t.version_number) if t.version_number else b""
    bodies = _slice_values(t, counts)
    out = []
    for r, body in zip(rows, bodies, strict=True):
        dim0 = varint_field(1, r)
        if t.dim0_name is not None:
            dim0 += len_field(2, t.dim0_name)
        shape = len_field(2, dim0) + tail_dims
        out.append(head + len_field(2, shape) + version + body)
    return out


def _slice_values(t: _Tensor, counts: list[int]) -> list[bytes]:
    """The value field of each member's slice (`counts` values each), encoded."""
    number = t.value_field
    if number is None:
        return [b""] * len(counts)
    if number == STRING_VAL:
        out, start = [], 0
        for n in counts:
            out.append(b"".join(len_field(STRING_VAL, s) for s in t.strings[start:start + n]))
            start += n
        return out
    if number in _VARINT_FIELDS:
        offsets = varint_offsets(t.payload, counts)
    else:
        width = 1 if number == CONTENT else _WIDTH[_FIXED_FIELDS[number]]
        offsets = [0]
        for n in counts:
            offsets.append(offsets[-1] + n * width)
    payload = memoryview(t.payload)
    return [len_field(number, payload[a:b]) for a, b in pairwise(offsets)]


class GrpcBatchCodec:
    """The gRPC `BatchCodec` (answers: `GrpcReply`); see the module docstring."""

    def group(self, call: Call) -> Hashable | None:
        p: GrpcPayload = call.payload
        req: Request = p.request
        if p.path != PREDICT or call.version is None or call.label or req.rest:
            return None
        aliases = [alias for alias, _ in req.inputs]
        if not aliases or len(set(aliases)) != len(aliases):
            return None
        inputs = []
        for alias, tensor in req.inputs:
            key = _input_key(tensor, call.rows)
            if key is None:
                return None
            inputs.append((alias, *key))
        return (call.model, call.version, call.group,
                req.spec.signature_name or DEFAULT_SIGNATURE,
                req.output_filter, tuple(inputs))

    def merge(self, calls: list[Call]) -> Call:
        first = calls[0]
        p: GrpcPayload = first.payload
        req: Request = p.request
        assert first.version is not None                  # group() checked
        rows = sum(c.rows for c in calls)
        inputs = tuple(
            (alias, _merge_input([c.payload.request.inputs[i][1] for c in calls], rows))
            for i, (alias, _) in enumerate(req.inputs))
        raw = b"".join([
            len_field(1, _spec(req.spec, first.version)),
            *(len_field(2, len_field(1, alias) + len_field(2, tensor))
              for alias, tensor in inputs),
            *(len_field(3, name) for name in req.output_filter)])
        spec = ModelSpec(req.spec.name, first.version, None, req.spec.signature_name)
        payload = GrpcPayload(p.path, raw, Request(spec, rows, inputs, req.output_filter))
        cost = first.units / max(first.rows, 1)
        deadline = Deadline(min(c.deadline.at for c in calls))
        return Call(model=first.model, version=first.version, pinned=True, units=rows * cost,
                    deadline=deadline, payload=payload, rows=rows, group=first.group)

    def split(self, answer: GrpcReply, calls: list[Call]) -> list[GrpcReply] | None:
        if answer.code != OK:
            return None
        rows = [c.rows for c in calls]
        total = sum(rows)
        parts: list[list[bytes]] = [[] for _ in calls]
        try:
            for number, wire, value in iter_fields(answer.body):
                if number == 1 and wire == LEN and isinstance(value, memoryview):
                    alias = last_of(value, 1)       # map<string, TensorProto> entry
                    pieces = _slice_tensor(message(value, 2), rows, total)
                    if pieces is None or not isinstance(alias, memoryview):
                        return None
                    key = len_field(1, alias)
                    for out, piece in zip(parts, pieces, strict=True):
                        out.append(len_field(1, key + len_field(2, piece)))
                else:                               # model_spec (2), copied as is
                    same = raw_field(number, wire, value)
                    for out in parts:
                        out.append(same)
        except BadRequest:
            return None
        return [GrpcReply(OK, b"".join(out)) for out in parts]
