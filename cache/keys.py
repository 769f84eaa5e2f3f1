"""Cache keys for TF Serving REST requests.

Called by the proxy (lb/) on every cacheable request, before the lookup.
Pure (no I/O) and deterministic across processes and machines, so replicas
sharing Redis agree on keys.

Key format: ``tfslb:v1:{model}:{version}:{32 hex chars}`` where the hex is a
128-bit blake2b over length-prefixed fields: a mode tag, model, version, verb,
signature name (empty/absent resolves to ``serving_default``), then the inputs.
Model and version are hashed too, so a ':' inside a model name cannot make two
keys collide. Modes (each tag keeps them apart):

- ``tensor`` (predict with the signature's dtypes): every input decoded as TF
  Serving would (cache.tensors) and hashed as (name, dtype, shape, bytes),
  sorted by name. Row ('instances') and columnar ('inputs') encodings of the
  same tensors give the same key; so do 1 / 1.0 / 1e0 for a float input and
  JSON key order.
- ``examples`` (classify/regress): the Examples TF Serving builds (cache.canonical).
- ``json`` (no dtypes, or a body that does not decode): sorted-key JSON of the
  body without its signature_name.
- ``row`` (row_keys): one instance row, shape without the batch dimension.

NOTE for the proxy: row and columnar requests share a key, but TF Serving
answers them in different shapes ({"predictions": ...} vs {"outputs": ...}).
A stored body must be converted to the asking format (or stored neutrally).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping
from typing import Any

from cache.canonical import canonical_examples, canonical_json
from cache.errors import InvalidKeyInput, TensorDecodeError
from cache.tensors import Tensor, decode, is_b64_object

_LIST_TYPES = frozenset({list, tuple})

DTypes = Mapping[str, str]

KEY_PREFIX = "tfslb:v1"
DEFAULT_SIGNATURE = "serving_default"
_PERSON = b"tfslb-key-v1"
_LEN = struct.Struct("<Q")
_PREDICT_FIELDS = frozenset({"signature_name", "instances", "inputs"})
_EXAMPLE_FIELDS = frozenset({"signature_name", "examples", "context"})


def request_key(model: str, version: str, verb: str, body: Mapping[str, Any],
                dtypes: DTypes | None, signature_name: str | None = None) -> str:
    """The cache key of one request.

    `signature_name` wins over the body's "signature_name"; either empty means
    serving_default. Never raises for a body TF Serving would reject (it gets a
    JSON key); raises InvalidKeyInput only when `body` is not a JSON object or
    holds non-JSON values.
    """
    if not isinstance(body, Mapping):
        raise InvalidKeyInput("request body must be a JSON object")
    head = (model, version, verb, resolve_signature(body, signature_name))
    if verb in ("classify", "regress"):
        try:
            return _key(model, version, b"examples", head, [_examples_payload(body)])
        except TensorDecodeError:
            pass
    elif dtypes:
        try:
            tensors = _predict_tensors(body, dtypes)
            return _key(model, version, b"tensor", head, _tensor_fields(tensors))
        except TensorDecodeError:
            pass
    return _key(model, version, b"json", head, [canonical_json(_strip_signature(body))])


def key_mode(dtypes: DTypes | None) -> str:
    """'tensor' when predict keys can use the signature's dtypes, else 'json' (for stats)."""
    return "tensor" if dtypes else "json"


def row_keys(model: str, version: str, signature_name: str | None, body: Mapping[str, Any],
             dtypes: DTypes | None) -> list[str] | None:
    """One key per 'instances' row, in order, for a row-level cache.

    None when the body is not a well-formed row-format predict request for
    `dtypes` (or dtypes is unknown): the caller then uses `request_key` only.
    Row keys never equal request keys (own mode tag).
    """
    if not dtypes or not isinstance(body, Mapping):
        return None
    try:
        rows = _rows(body, dtypes)
        head = (model, version, "predict", resolve_signature(body, signature_name))
        batched = _batched_rows(rows, dtypes)
        if batched is not None:
            return [_key(model, version, b"row", head, fields) for fields in batched]
        decoded = [_row_tensors(row, dtypes) for row in rows]
    except TensorDecodeError:
        return None
    first = {name: t.shape for name, t in decoded[0].items()}
    if any({name: t.shape for name, t in d.items()} != first for d in decoded):
        return None  # TF Serving rejects rows of different shapes
    return [_key(model, version, b"row", head, _tensor_fields(d)) for d in decoded]


def _batched_rows(rows: list[Any], dtypes: DTypes) -> list[list[bytes]] | None:
    """Per-row hash fields of plain numeric rows, decoded as one tensor (C-speed)
    and sliced: the same bytes and row shape as decoding every row on its own, and
    a batch that does not decode is exactly one whose rows would not all decode to
    one shape. None for named or string rows (the caller decodes row by row)."""
    if len(dtypes) != 1 or _is_named(rows[0]):
        return None
    (name, dtype), = dtypes.items()
    if dtype == "DT_STRING":
        return None                  # variable-length elements: no fixed row stride
    t = decode(rows, dtype)
    step = len(t.data) // len(rows)
    shape = struct.pack(f"<{len(t.shape) - 1}q", *t.shape[1:])
    head = [name.encode("utf-8", "surrogatepass"), dtype.encode(), shape]
    return [[*head, t.data[i * step:(i + 1) * step]] for i in range(len(rows))]


def resolve_signature(body: Mapping[str, Any], explicit: str | None = None) -> str:
    """The signature a request runs: explicit, else the body's, else serving_default."""
    if explicit:
        return explicit
    named = body.get("signature_name")
    return named if isinstance(named, str) and named else DEFAULT_SIGNATURE


def _key(model: str, version: str, mode: bytes, head: tuple[str, ...],
         payload: Iterable[bytes]) -> str:
    parts: list[bytes] = []
    for part in (mode, *(s.encode("utf-8", "surrogatepass") for s in head), *payload):
        parts += (_LEN.pack(len(part)), part)
    digest = hashlib.blake2b(b"".join(parts), digest_size=16, person=_PERSON)  # one C call
    return f"{KEY_PREFIX}:{model}:{version}:{digest.hexdigest()}"


def _tensor_fields(tensors: Mapping[str, Tensor]) -> list[bytes]:
    fields: list[bytes] = []
    for name in sorted(tensors):
        t = tensors[name]
        shape = struct.pack(f"<{len(t.shape)}q", *t.shape)
        fields += [name.encode("utf-8", "surrogatepass"), t.dtype.encode(), shape, t.data]
    return fields


def _strip_signature(body: Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(body.get("signature_name"), str):
        return {k: v for k, v in body.items() if k != "signature_name"}
    return body


def _examples_payload(body: Mapping[str, Any]) -> bytes:
    if not body.keys() <= _EXAMPLE_FIELDS:
        raise TensorDecodeError("unexpected fields in a classify/regress body")
    return canonical_examples(body)


def _predict_tensors(body: Mapping[str, Any], dtypes: DTypes) -> dict[str, Tensor]:
    """Decode a predict body (row or columnar) to one batched tensor per input."""
    if not body.keys() <= _PREDICT_FIELDS or ("instances" in body) == ("inputs" in body):
        raise TensorDecodeError("need exactly one of 'instances' / 'inputs'")
    if "inputs" in body:
        return _columnar(body["inputs"], dtypes)
    rows = _rows(body, dtypes)
    if _is_named(rows[0]):
        return {name: decode([row[name] for row in rows], dtypes[name]) for name in dtypes}
    (name, dtype), = dtypes.items()
    return {name: decode(rows, dtype)}


def _columnar(inputs: Any, dtypes: DTypes) -> dict[str, Tensor]:
    if not _is_named(inputs):
        if len(dtypes) != 1:
            raise TensorDecodeError("plain 'inputs' but the signature has several inputs")
        (name, dtype), = dtypes.items()
        return {name: decode(inputs, dtype)}
    if inputs.keys() != dtypes.keys():
        raise TensorDecodeError("'inputs' names differ from the signature's")
    return {name: decode(inputs[name], dtypes[name]) for name in dtypes}


def _rows(body: Mapping[str, Any], dtypes: DTypes) -> list[Any]:
    """The 'instances' list, checked for TF Serving's row rules (not decoded yet)."""
    rows = body.get("instances")
    if not isinstance(rows, list) or not rows or "inputs" in body:
        raise TensorDecodeError("'instances' must be a non-empty list")
    if not body.keys() <= _PREDICT_FIELDS:
        raise TensorDecodeError("unexpected fields in a predict body")
    if set(map(type, rows)) <= _LIST_TYPES:      # plain rows of lists: one C-level pass
        if len(dtypes) != 1:
            raise TensorDecodeError("plain rows but the signature has several inputs")
        return rows
    named = _is_named(rows[0])
    if any(_is_named(row) != named for row in rows):
        raise TensorDecodeError("rows mix objects and values")
    if named and any(row.keys() != dtypes.keys() for row in rows):
        raise TensorDecodeError("row names differ from the signature's")
    if not named and len(dtypes) != 1:
        raise TensorDecodeError("plain rows but the signature has several inputs")
    return rows


def _row_tensors(row: Any, dtypes: DTypes) -> dict[str, Tensor]:
    if _is_named(row):
        return {name: decode(row[name], dtypes[name]) for name in dtypes}
    (name, dtype), = dtypes.items()
    return {name: decode(row, dtype)}


def _is_named(value: Any) -> bool:
    """An object of named inputs (a {"b64": ...} object is a value, not names)."""
    return isinstance(value, Mapping) and not is_b64_object(value)
