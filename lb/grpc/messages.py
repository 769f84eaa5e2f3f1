"""What the gRPC front reads from TF Serving's messages, on the raw wire bytes. Pure.

Called by `lb.grpc.front` once per call: `read_request` gives the model spec
(for routing, version resolution and stats), the batch rows (the request's
cost) and, for Predict, the parts its cache key is made of; `predict_key`
makes the key; `health_reply` writes the only message the proxy creates itself.

Field numbers are those of tensorflow_serving/apis/*.proto (and
tensorflow/core/framework/tensor*.proto); tests/lb/test_pbwire.py checks them
against messages built by the real `tensorflow_serving.apis` classes.

Guarantees: never imports TensorFlow or generated code; every reader raises
`BadRequest` (never anything else) for bytes it cannot read; keys are
deterministic across processes and never equal a REST key (other tag and
hash personalisation).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cache.keys import KEY_PREFIX
from lb.errors import BadRequest
from lb.grpc.pbwire import (
    LEN,
    VARINT,
    as_int64,
    as_str,
    iter_fields,
    last_of,
    message,
    messages,
)

DEFAULT_SIGNATURE = "serving_default"
_PERSON = b"tfslb-grpc-v1"
_LEN = struct.Struct("<Q")
_MAX_ROWS = 1 << 40


@dataclass(slots=True)     # not frozen: built per request, treat as immutable
class ModelSpec:
    """tensorflow.serving.ModelSpec: name=1, version=2 (Int64Value), signature_name=3,
    version_label=4."""

    name: str
    version: int | None = None
    label: str | None = None
    signature_name: str = ""


@dataclass(slots=True)     # not frozen: built per request, treat as immutable
class Request:
    """What routing, counting and the cache need from one request."""

    spec: ModelSpec
    rows: int                                         # batch rows (>= 1 for inference)
    inputs: tuple[tuple[str, bytes], ...] = ()       # Predict: (alias, TensorProto bytes)
    output_filter: tuple[str, ...] = ()              # Predict: field 3
    rest: tuple[bytes, ...] = ()                     # Predict: any other field, raw


def model_spec(raw: memoryview | bytes) -> ModelSpec:
    """Parse a ModelSpec message; BadRequest if its name is empty."""
    version_msg = message(raw, 2)
    version = None
    if version_msg is not None:                      # google.protobuf.Int64Value{value=1}
        version = as_int64(last_of(version_msg, 1, VARINT)) or 0
    label = as_str(last_of(raw, 4)) or None
    spec = ModelSpec(name=as_str(last_of(raw, 1)), version=version, label=label,
                     signature_name=as_str(last_of(raw, 3)))
    if not spec.name:
        raise BadRequest("Missing ModelSpec name")
    return spec


def _spec_at_1(raw: bytes) -> ModelSpec:
    found = message(raw, 1)
    if found is None:
        raise BadRequest("Missing ModelSpec")
    return model_spec(found)


def tensor_rows(tensor: memoryview | bytes) -> int:
    """Size of dimension 0 of a TensorProto (tensor_shape=2 -> dim=2 -> size=1); 1 for
    scalars and unknown sizes."""
    shape = message(tensor, 2)
    if shape is None:
        return 1
    dims = messages(shape, 2)
    if not dims:
        return 1
    size = as_int64(last_of(dims[0], 1, VARINT))
    return size if size is not None and 0 < size < _MAX_ROWS else 1


def examples_rows(input_msg: memoryview | bytes | None) -> int:
    """Examples in a tensorflow.serving.Input (example_list=1 or
    example_list_with_context=2, each with examples=1)."""
    if input_msg is None:
        return 1
    count = sum(len(messages(lst, 1)) for n, w, lst in iter_fields(input_msg)
                if n in (1, 2) and w == LEN and isinstance(lst, memoryview))
    return max(count, 1)


def _predict(raw: bytes) -> Request:
    spec: ModelSpec | None = None
    inputs: list[tuple[str, bytes]] = []
    filters: list[str] = []
    rest: list[bytes] = []
    for number, wire, value in iter_fields(raw):
        if isinstance(value, int):
            rest.append(_LEN.pack(number) + _LEN.pack(value))
        elif number == 1 and wire == LEN:
            spec = model_spec(value)
        elif number == 2 and wire == LEN:             # map entry {key=1, value=2}
            inputs.append((as_str(last_of(value, 1)), bytes(message(value, 2) or b"")))
        elif number == 3 and wire == LEN:
            filters.append(as_str(value))
        else:
            rest.append(_LEN.pack(number) + bytes(value))
    if spec is None:
        raise BadRequest("Missing ModelSpec")
    rows = max((tensor_rows(t) for _, t in inputs), default=1)   # scalars say 1
    return Request(spec, rows, tuple(sorted(inputs)), tuple(sorted(filters)), tuple(rest))


def _multi_inference(raw: bytes) -> Request:
    tasks = messages(raw, 1)                         # InferenceTask{model_spec=1, method_name=2}
    if not tasks:
        raise BadRequest("Inference tasks must be non-empty")
    first = message(tasks[0], 1)
    if first is None:
        raise BadRequest("Missing ModelSpec")
    return Request(model_spec(first), examples_rows(message(raw, 2)))


def read_request(method: str, raw: bytes) -> Request:
    """The parts of a `method` request (a PredictionService or ModelService method name)."""
    if method == "Predict":
        return _predict(raw)
    if method == "MultiInference":
        return _multi_inference(raw)
    spec = _spec_at_1(raw)
    if method in ("Classify", "Regress"):
        return Request(spec, examples_rows(message(raw, 2)))
    return Request(spec, 0)


def _hash_fields(parts: Iterable[bytes | str]) -> str:
    h = hashlib.blake2b(digest_size=16, person=_PERSON)
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(_LEN.pack(len(data)))
        h.update(data)
    return h.hexdigest()


def predict_key(req: Request, version: int | str) -> str:
    """`tfslb:v1:{model}:{version}:{hash}` of a Predict request for a resolved version
    (or `lb.rollout.settings.key_version`'s "version@group").

    The hash covers the tag "grpc-predict", model, version, the signature (empty
    means serving_default), every input's alias and TensorProto bytes sorted by
    alias, the sorted output_filter and any other field's raw bytes. Two encodings
    of one tensor (float_val vs tensor_content) get two keys: a miss, never a
    wrong answer.
    """
    spec = req.spec
    parts: list[bytes | str] = ["grpc-predict", spec.name, str(version),
                                spec.signature_name or DEFAULT_SIGNATURE,
                                str(len(req.inputs))]
    for alias, tensor in req.inputs:
        parts += [alias, tensor]
    parts.append(str(len(req.output_filter)))
    parts += req.output_filter
    parts += req.rest
    return f"{KEY_PREFIX}:{spec.name}:{version}:{_hash_fields(parts)}"


# -- grpc.health.v1 -------------------------------------------------------------

SERVING, NOT_SERVING = 1, 2


def health_service(raw: bytes) -> str:
    """HealthCheckRequest.service (field 1)."""
    return as_str(last_of(raw, 1))


def health_reply(status: int) -> bytes:
    """HealthCheckResponse{status=1}; proto3 omits 0 (UNKNOWN)."""
    return b"" if status == 0 else bytes([1 << 3 | VARINT, status])

