"""JSON <-> numpy for the TF Serving REST predict API (row and columnar formats).

Called by `rest` (parse a request body into feeds, turn the model's outputs into
the reply) with `SignatureInfo`s built by `signature_infos` from the SavedModel's
signature metadata. Pure numpy: never imports TensorFlow, so it is unit-tested
on its own.

Guarantees: every problem with a request raises `InvalidInput` with a message
for the client; feeds always match the signature's dtype, and the signature's
rank when the request left out trailing size-1 dims (scalar instances for an
input of shape [-1, 1]); those added dims, and only those, are squeezed back
out of the outputs, as TF Serving's replies show.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np

from backends.errors import InvalidInput

DEFAULT_SIGNATURE = "serving_default"

_NP_DTYPES: dict[str, Any] = {
    "DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_HALF": np.float16,
    "DT_INT8": np.int8, "DT_INT16": np.int16, "DT_INT32": np.int32, "DT_INT64": np.int64,
    "DT_UINT8": np.uint8, "DT_UINT16": np.uint16, "DT_UINT32": np.uint32,
    "DT_UINT64": np.uint64, "DT_BOOL": np.bool_, "DT_STRING": object,
}


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a signature: alias, dtype name, shape (None: unknown rank)."""

    name: str
    dtype: str
    shape: tuple[int, ...] | None


@dataclass(frozen=True)
class SignatureInfo:
    """A signature's method name and its input/output tensors, by alias."""

    name: str
    method_name: str
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]


@dataclass
class Feeds:
    """Parsed predict request: tensors to feed, reply format, rows, dims to squeeze."""

    signature: SignatureInfo
    tensors: dict[str, np.ndarray]
    columnar: bool
    added_dims: int

    @property
    def rows(self) -> int:
        first = next(iter(self.tensors.values()), None)
        return int(first.shape[0]) if first is not None and first.ndim else 1


def _tensor_info(name: str, spec: dict[str, Any]) -> TensorInfo:
    shape_spec = spec.get("tensor_shape", {})
    shape: tuple[int, ...] | None
    if shape_spec.get("unknown_rank"):
        shape = None
    else:
        shape = tuple(int(d.get("size", 0)) for d in shape_spec.get("dim", []))
    return TensorInfo(name, spec.get("dtype", "DT_INVALID"), shape)


def signature_infos(signature_def_map: dict[str, Any]) -> dict[str, SignatureInfo]:
    """SignatureInfos from the JSON form of a SignatureDefMap (`{name: {inputs, outputs}}`)."""
    infos = {}
    for sig_name, sig in signature_def_map.items():
        infos[sig_name] = SignatureInfo(
            sig_name,
            sig.get("method_name", ""),
            {k: _tensor_info(k, v) for k, v in sig.get("inputs", {}).items()},
            {k: _tensor_info(k, v) for k, v in sig.get("outputs", {}).items()},
        )
    return infos


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def string_bytes(value: Any) -> bytes | None:
    """One JSON string value as bytes: `{"b64": s}` decoded, str UTF-8 encoded; None
    for anything else. Used for DT_STRING tensors and for tf.Example bytes features."""
    if _is_b64(value):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise InvalidInput(f"Unable to base64 decode: {exc}") from None
    if isinstance(value, str):
        return value.encode()
    return None


def _to_bytes(value: Any) -> Any:
    """Nested JSON -> nested bytes for DT_STRING: `{"b64": s}` decoded, str UTF-8 encoded."""
    if isinstance(value, list):
        return [_to_bytes(v) for v in value]
    if (data := string_bytes(value)) is not None:
        return data
    raise InvalidInput(
        f"Expected a string or {{\"b64\": ...}} for a DT_STRING input, got {value!r:.80}")


def to_array(value: Any, info: TensorInfo) -> np.ndarray:
    """A JSON value as a numpy array of `info`'s dtype; raises InvalidInput when it can't be."""
    np_dtype = _NP_DTYPES.get(info.dtype)
    if np_dtype is None:
        raise InvalidInput(f"Unsupported dtype {info.dtype} for input {info.name}")
    try:
        if np_dtype is object:
            arr = np.array(_to_bytes(value), dtype=object)
        else:
            arr = _numeric_array(value, np_dtype, info)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"Input {info.name} is not a valid {info.dtype} tensor: {exc}") from None
    return arr


def _numeric_array(value: Any, np_dtype: Any, info: TensorInfo) -> np.ndarray:
    natural = np.asarray(value)
    if natural.dtype.kind not in "biuf":
        raise InvalidInput(f"Input {info.name} expects {info.dtype} values, got {value!r:.80}")
    target = np.dtype(np_dtype)
    if target.kind in "iu" and natural.dtype.kind == "f" and not np.all(np.mod(natural, 1) == 0):
        raise InvalidInput(f"Input {info.name} expects integers ({info.dtype})")
    if target.kind == "f" and natural.dtype.kind == "f" and natural.size:
        # As TF Serving: a finite JSON number the dtype cannot hold is an error, not inf.
        limit = float(np.finfo(target).max)
        if float(np.abs(natural).max()) > limit:
            raise InvalidInput(f"Input {info.name}: value out of range for {info.dtype}")
    return natural.astype(target)


def fit_shape(arr: np.ndarray, info: TensorInfo) -> tuple[np.ndarray, int]:
    """Reshape `arr` to the signature's rank by adding trailing size-1 dims, then validate.

    Returns the array and the number of dims added (0 when it already had the rank).
    """
    if info.shape is None:
        return arr, 0
    added = 0
    missing = len(info.shape) - arr.ndim
    if missing > 0 and all(d == 1 for d in info.shape[arr.ndim:]):
        arr = arr.reshape(arr.shape + (1,) * missing)
        added = missing
    ok = arr.ndim == len(info.shape) and all(
        want in (-1, got) for want, got in zip(info.shape, arr.shape, strict=True))
    if not ok:
        want_shape = [int(d) for d in info.shape]
        raise InvalidInput(
            f"Input {info.name} has shape {list(arr.shape)} but the signature expects {want_shape}")
    return arr, added


def get_signature(signatures: dict[str, SignatureInfo], body: dict[str, Any]) -> SignatureInfo:
    """The signature named by `signature_name` (default serving_default), or InvalidInput."""
    name = body.get("signature_name") or DEFAULT_SIGNATURE
    if not isinstance(name, str):
        raise InvalidInput("'signature_name' must be a string")
    sig = signatures.get(name)
    if sig is None:
        raise InvalidInput(f"Serving signature name: \"{name}\" not found in signature def")
    return sig


def parse_predict(body: Any, signatures: dict[str, SignatureInfo]) -> Feeds:
    """Turn a predict request body (already JSON-decoded) into feeds for the signature."""
    if not isinstance(body, dict):
        raise InvalidInput("Request body must be a JSON object")
    if "instances" in body and "inputs" in body:
        raise InvalidInput("Not both 'instances' and 'inputs' keys allowed")
    if "instances" not in body and "inputs" not in body:
        raise InvalidInput("Missing 'inputs' or 'instances' key")
    sig = get_signature(signatures, body)
    columnar = "inputs" in body
    named = _columnar_values(body["inputs"], sig) if columnar else _row_values(
        body["instances"], sig)
    tensors, added = {}, []
    for name, value in named.items():
        info = sig.inputs.get(name)
        if info is None:
            raise InvalidInput(
                f"input tensor alias not found in signature: {name}. "
                f"Inputs expected to be in the set {{{','.join(sorted(sig.inputs))}}}.")
        tensors[name], n_added = fit_shape(to_array(value, info), info)
        added.append(n_added)
    missing = sorted(set(sig.inputs) - set(tensors))
    if missing:
        raise InvalidInput(f"Missing input(s) for signature {sig.name}: {', '.join(missing)}")
    return Feeds(sig, tensors, columnar, min(added) if added else 0)


def _single_input(sig: SignatureInfo) -> str | None:
    return next(iter(sig.inputs)) if len(sig.inputs) == 1 else None


def _columnar_values(inputs: Any, sig: SignatureInfo) -> dict[str, Any]:
    if isinstance(inputs, dict) and not _is_b64(inputs):
        return inputs
    only = _single_input(sig)
    if only is None:
        raise InvalidInput(
            f"'inputs' must be an object naming the inputs of signature {sig.name}")
    return {only: inputs}


def _row_values(instances: Any, sig: SignatureInfo) -> dict[str, Any]:
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("'instances' must be a non-empty JSON list")
    first = instances[0]
    if not isinstance(first, dict) or _is_b64(first):
        only = _single_input(sig)
        if only is None:
            raise InvalidInput(
                f"Each instance must be an object naming the inputs of signature {sig.name}")
        return {only: instances}
    keys = set(first)
    for i, inst in enumerate(instances):
        if not isinstance(inst, dict) or set(inst) != keys:
            raise InvalidInput(f"Instance {i} does not have the same keys as instance 0")
    return {k: [inst[k] for inst in instances] for k in first}


def _squeeze(arr: np.ndarray, added: int) -> np.ndarray:
    if added and arr.ndim >= added and all(d == 1 for d in arr.shape[arr.ndim - added:]):
        return arr.reshape(arr.shape[:arr.ndim - added])
    return arr


def _jsonable(value: Any, name: str) -> Any:
    """Numpy array or element -> value orjson (OPT_SERIALIZE_NUMPY) can write; strings as
    TF Serving writes them (UTF-8 text, or `{"b64": ...}` for `*_bytes` outputs)."""
    arr = np.asarray(value)
    if arr.dtype == object or arr.dtype.kind in "SU":
        return _strings(arr.tolist(), name.endswith("_bytes"))
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    if arr.ndim == 0:
        return arr[()]
    return np.ascontiguousarray(arr)


def _strings(value: Any, as_b64: bool) -> Any:
    if isinstance(value, list):
        return [_strings(v, as_b64) for v in value]
    raw = value if isinstance(value, bytes) else str(value).encode()
    if not as_b64:
        try:
            return raw.decode()
        except UnicodeDecodeError:
            pass
    return {"b64": base64.b64encode(raw).decode()}


def format_predict(feeds: Feeds, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """The reply body: `{"predictions": ...}` (row) or `{"outputs": ...}` (columnar)."""
    squeezed = {k: _squeeze(v, feeds.added_dims) for k, v in outputs.items()}
    if feeds.columnar:
        if len(squeezed) == 1:
            (name, arr), = squeezed.items()
            return {"outputs": _jsonable(arr, name)}
        return {"outputs": {k: _jsonable(v, k) for k, v in squeezed.items()}}
    rows = None
    for name, arr in squeezed.items():
        n = arr.shape[0] if arr.ndim else None
        if n is None or (rows is not None and n != rows):
            raise InvalidInput(
                f"Output {name} does not have the batch size of the other outputs; "
                "use the columnar ('inputs') format")
        rows = n
    if len(squeezed) == 1:
        (name, arr), = squeezed.items()
        return {"predictions": _jsonable(arr, name)}
    return {"predictions": [{k: _jsonable(v[i], k) for k, v in squeezed.items()}
                            for i in range(rows or 0)]}
