"""Distinct MNIST-like inputs, as REST bodies and gRPC PredictRequests, and the argmax
agreement of two models computed directly on them.

Used by the rollout tests (tests/lb/test_rollout_e2e.py) and the shadow benchmark
(scripts/bench_shadow.py) to compare what the proxy reports with a direct
computation on the same inputs. Imports numpy and scikit-learn (through
`backends.digits`), never TensorFlow: PredictRequests are written with
`lb.grpc.pbwire`, replies read by plain HTTP.

Guarantees: `inputs(n)` is deterministic: the held-out and training digits of
`backends.digits` first (1,797 of them), then blends of two digits (inputs the
models are less sure about, where two trainings disagree more often).
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import numpy as np

from backends.digits import load_digits_28x28
from backends.export_mnist import INPUT_NAME

DT_FLOAT = 1


def inputs(n: int, seed: int = 0) -> np.ndarray:
    """`n` distinct inputs, float32 [n, 784] in [0, 1]."""
    digits, _ = load_digits_28x28()
    if n <= len(digits):
        return digits[:n].astype(np.float32)
    rng = np.random.default_rng(seed)
    extra = n - len(digits)
    a = digits[rng.integers(0, len(digits), extra)]
    b = digits[rng.integers(0, len(digits), extra)]
    mix = rng.uniform(0.35, 0.65, size=(extra, 1)).astype(np.float32)
    return np.concatenate([digits, mix * a + (1 - mix) * b]).astype(np.float32)


def rest_body(row: np.ndarray) -> bytes:
    """`{"instances": [row]}` with 4 decimals (as the demo's sample does)."""
    return json.dumps({"instances": [[round(float(v), 4) for v in row]]}).encode()


def rounded(rows: np.ndarray) -> np.ndarray:
    """The inputs as `rest_body` sends them."""
    return np.round(rows.astype(np.float64), 4).astype(np.float32)


def grpc_request(model: str, row: np.ndarray) -> bytes:
    """A PredictRequest for one row: input `images`, DT_FLOAT [1, 784], tensor_content."""
    from lb.grpc.pbwire import len_field, varint_field

    data = np.ascontiguousarray(row, dtype="<f4").tobytes()
    shape = len_field(2, varint_field(1, 1)) + len_field(2, varint_field(1, row.size))
    tensor = varint_field(1, DT_FLOAT) + len_field(2, shape) + len_field(4, data)
    entry = len_field(1, INPUT_NAME) + len_field(2, tensor)
    return len_field(1, len_field(1, model)) + len_field(2, entry)


def classes(url: str, model: str, rows: np.ndarray, batch: int = 50,
            timeout: float = 30.0) -> np.ndarray:
    """Argmax of a model's predictions on `rows`, asked of one worker at `url` directly."""
    out: list[int] = []
    for start in range(0, len(rows), batch):
        body = json.dumps({"instances": rows[start:start + batch].tolist()}).encode()
        req = urllib.request.Request(f"{url}/v1/models/{model}:predict", data=body,
                                     method="POST")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            preds: Any = json.loads(resp.read())["predictions"]
        out += [int(np.argmax(p)) for p in preds]
    return np.asarray(out)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """The share of rows whose classes agree."""
    return float(np.mean(a == b))
