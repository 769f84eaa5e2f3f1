"""Converting a cached predict reply between TF Serving's row and columnar shapes.

Called by `lb.rest.upstream.RestTransport.from_cache` on a cache hit, and by the
REST batch codec (`lb.rest.batch`). Row (`instances`) and columnar (`inputs`)
requests for the same tensors share one cache key (cache/keys.py), but TF
Serving answers `{"predictions": [...]}` to the first and `{"outputs": ...}`
to the second. A stored reply in the asked-for shape is returned untouched
(no parse on the hit path); otherwise it is converted here. `adapt` returns
None when the stored body cannot be converted, and the caller treats that as a
miss.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_TOP = re.compile(rb'^\s*\{\s*"(predictions|outputs)"')


def rows_to_columns(predictions: list[Any]) -> Any:
    if predictions and all(isinstance(p, dict) for p in predictions):
        names = list(predictions[0])
        if any(list(p) != names for p in predictions):
            raise ValueError("rows with different outputs")
        return {n: [p[n] for p in predictions] for n in names}
    return predictions


def _columns_to_rows(outputs: Any) -> list[Any]:
    if isinstance(outputs, dict):
        columns = list(outputs.values())
        if not columns or not all(isinstance(c, list) for c in columns):
            raise ValueError("outputs without a batch dimension")
        n = len(columns[0])
        if any(len(c) != n for c in columns):
            raise ValueError("outputs of different batch sizes")
        names = list(outputs)
        return [{name: outputs[name][i] for name in names} for i in range(n)]
    if not isinstance(outputs, list):
        raise ValueError("outputs without a batch dimension")
    return outputs


def adapt(body: bytes, columnar: bool) -> bytes | None:
    """`body` (a 200 predict reply) in the shape a row or columnar request expects."""
    want = b"outputs" if columnar else b"predictions"
    m = _TOP.match(body)
    if m is not None and m.group(1) == want:
        return body
    try:
        doc = orjson.loads(body)
        if columnar and "predictions" in doc:
            return orjson.dumps({"outputs": rows_to_columns(doc["predictions"])})
        if not columnar and "outputs" in doc:
            return orjson.dumps({"predictions": _columns_to_rows(doc["outputs"])})
        return body if want.decode() in doc else None
    except (orjson.JSONDecodeError, ValueError, TypeError, AttributeError):
        return None
