"""Classify and Regress: JSON examples -> serialized tf.train.Example, outputs -> results.

Called by `runtime.Servable.classify` / `.regress` (in the inference thread pool).
Imports TensorFlow's protos, so it is only imported once TensorFlow is loaded.

Guarantees, as TF Serving's REST API: floats become float_list, ints int64_list,
strings and `{"b64": ...}` bytes_list; `context` features are merged into every
example (the example's own features win); only signatures whose method_name is
tensorflow/serving/classify (or /regress) with one DT_STRING input are accepted,
anything else is `InvalidInput` (400).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2

from backends.errors import InvalidInput
from backends.tensors import SignatureInfo, string_bytes

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"


def check_signature(sig: SignatureInfo, method: str) -> str:
    """The alias of the signature's single DT_STRING input; InvalidInput if unsuitable."""
    kind = "classification" if method == CLASSIFY_METHOD else "regression"
    if sig.method_name != method:
        raise InvalidInput(f"Expected {kind} signature method_name to be {method}. "
                           f"Was: {sig.method_name}")
    if len(sig.inputs) != 1:
        raise InvalidInput(f"Expected one input Tensor in signature {sig.name}")
    (alias, info), = sig.inputs.items()
    if info.dtype != "DT_STRING":
        raise InvalidInput(f"Signature {sig.name} input {alias} must be DT_STRING "
                           f"(serialized tf.Example), is {info.dtype}")
    return alias


def _as_bytes(value: Any) -> bytes:
    if (data := string_bytes(value)) is not None:
        return data
    raise InvalidInput(f"Mixed or unsupported feature value: {value!r:.80}")


def to_feature(name: str, value: Any) -> feature_pb2.Feature:
    """One JSON feature value (scalar or list) as a tf.train.Feature."""
    values = value if isinstance(value, list) else [value]
    feature = feature_pb2.Feature()
    if not values:
        feature.float_list.SetInParent()
    elif all(isinstance(v, bool | int) for v in values):
        feature.int64_list.value.extend(int(v) for v in values)
    elif all(isinstance(v, bool | int | float) for v in values):
        feature.float_list.value.extend(float(v) for v in values)
    else:
        try:
            feature.bytes_list.value.extend(_as_bytes(v) for v in values)
        except InvalidInput as exc:
            raise InvalidInput(f"Feature {name}: {exc}") from None
    return feature


def build_examples(body: Any) -> list[bytes]:
    """Serialized tf.train.Examples from a classify/regress body (`examples` + `context`)."""
    if not isinstance(body, dict):
        raise InvalidInput("Request body must be a JSON object")
    examples = body.get("examples")
    if not isinstance(examples, list) or not examples:
        raise InvalidInput("'examples' must be a non-empty JSON list")
    context = body.get("context") or {}
    if not isinstance(context, dict):
        raise InvalidInput("'context' must be a JSON object")
    serialized = []
    for i, example in enumerate(examples):
        if not isinstance(example, dict):
            raise InvalidInput(f"Example {i} must be a JSON object")
        proto = example_pb2.Example()
        for name, value in {**context, **example}.items():
            proto.features.feature[name].CopyFrom(to_feature(name, value))
        serialized.append(proto.SerializeToString())
    return serialized


def _rows(arr: np.ndarray, n: int, name: str) -> np.ndarray:
    """`arr` as [n, K]: [n] becomes [n, 1]; anything else is an error."""
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise InvalidInput(f"Expected output {name} of shape [{n}, K], got {list(arr.shape)}")
    return arr


def classify_results(outputs: dict[str, np.ndarray], n: int) -> list[list[list[Any]]]:
    """TF Serving's classify results: per example a list of [label, score] pairs."""
    scores = outputs.get("scores")
    classes = outputs.get("classes")
    if scores is None and classes is None:
        raise InvalidInput("Classification signature needs a 'classes' or 'scores' output")
    score_rows = _rows(scores, n, "scores") if scores is not None else None
    class_rows = _rows(classes, n, "classes") if classes is not None else None
    width = (score_rows if score_rows is not None else class_rows).shape[1]  # type: ignore[union-attr]
    results = []
    for i in range(n):
        pairs = []
        for k in range(width):
            label = class_rows[i, k] if class_rows is not None else b""
            label = label.decode(errors="replace") if isinstance(label, bytes) else str(label)
            score = score_rows[i, k] if score_rows is not None else 0.0
            pairs.append([label, score])
        results.append(pairs)
    return results


def regress_results(outputs: dict[str, np.ndarray], n: int) -> list[Any]:
    """TF Serving's regress results: one float per example, from output `outputs`."""
    values = outputs.get("outputs")
    if values is None:
        if len(outputs) != 1:
            raise InvalidInput("Regression signature needs an 'outputs' output")
        values = next(iter(outputs.values()))
    rows = _rows(values, n, "outputs")
    if rows.shape[1] != 1:
        raise InvalidInput(f"Expected output outputs of shape [{n}, 1], got {list(rows.shape)}")
    return list(rows[:, 0])
