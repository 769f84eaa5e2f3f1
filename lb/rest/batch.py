"""Merging and splitting REST `:predict` calls for micro-batching (`lb.request.batching`).

Called by `lb.request.dispatch` (`group`, for the ticket) and by `lb.request.batching` (`merge`,
`split`) for models with `batching` configured. Row (`instances`) and
columnar (`inputs`) requests join one group when they address the same model,
resolved version and signature and their inputs have the same names, the same
shape apart from the batch dimension and the same kind of JSON leaves
(numbers, strings, booleans, {"b64"} objects). A request TF Serving would
reject for its shape (ragged rows, columnar inputs of different batch sizes)
never joins a group: it goes alone and gets its own error.

The merged call is a row-format request pinned to the resolved version. Its
`predictions` are split back in order: a row member gets
`{"predictions": [...its rows]}`, a columnar member `{"outputs": ...}` as TF
Serving builds it from the same rows (`lb.rest.formats`), so each client gets the
format it asked for with the values a direct call would have given.

Guarantees: pure (no I/O); `split` returns None for an answer it cannot read
or whose row count is wrong, and `lb.request.batching` then resends member by member.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import orjson

from cache.errors import TensorDecodeError
from cache.tensors import shape_and_leaves
from lb.http.client import Response
from lb.request.call import Call, Deadline
from lb.rest.formats import rows_to_columns
from lb.rest.routes import Body
from lb.rest.upstream import JSON, RestPayload

_KIND = {int: "n", float: "n", str: "s", bool: "b", dict: "o"}


def _signature(value: Any, skip_batch: bool) -> tuple[Any, ...] | None:
    """(shape without the batch dimension, leaf kinds) of a JSON tensor; None if ragged."""
    try:
        shape, leaves = shape_and_leaves(value)
    except TensorDecodeError:
        return None
    kinds = frozenset(_KIND.get(type(v), "?") for v in leaves)
    if "?" in kinds or (skip_batch and not shape):
        return None
    return (shape[1:] if skip_batch else shape), kinds


def _inputs_key(doc: dict[str, Any]) -> tuple[Any, ...] | None:
    if "instances" in doc:
        rows = doc["instances"]
        if not rows:
            return None
        if isinstance(rows[0], dict) and "b64" not in rows[0]:
            names = sorted(rows[0])
            if any(not isinstance(r, dict) or sorted(r) != names for r in rows):
                return None
            parts = [(n, _signature([r[n] for r in rows], True)) for n in names]
        else:
            parts = [("", _signature(rows, True))]
    else:
        inputs = doc["inputs"]
        if isinstance(inputs, dict) and not (len(inputs) == 1 and "b64" in inputs):
            parts = [(n, _signature(inputs[n], True)) for n in sorted(inputs)]
            sizes = {len(inputs[n]) if isinstance(inputs[n], list) else -1 for n in inputs}
            if len(sizes) != 1 or -1 in sizes:
                return None
        else:
            parts = [("", _signature(inputs, True))]
    if any(sig is None for _, sig in parts):
        return None
    return tuple(parts)


def _rows_of(doc: dict[str, Any]) -> list[Any]:
    if "instances" in doc:
        return list(doc["instances"])
    inputs = doc["inputs"]
    if isinstance(inputs, dict) and not (len(inputs) == 1 and "b64" in inputs):
        names = list(inputs)
        return [{n: inputs[n][i] for n in names} for i in range(len(inputs[names[0]]))]
    return list(inputs)


class RestBatchCodec:
    """The REST `BatchCodec`; see the module docstring."""

    def group(self, call: Call) -> Hashable | None:
        p: RestPayload = call.payload
        body = p.parsed
        if p.verb != "predict" or body is None or call.version is None or call.label:
            return None
        key = _inputs_key(body.doc)
        if key is None:
            return None
        return (call.model, call.version, call.group, body.signature_name, key)

    def merge(self, calls: list[Call]) -> Call:
        first = calls[0]
        p: RestPayload = first.payload
        assert p.parsed is not None and first.version is not None
        instances: list[Any] = []
        for call in calls:
            instances += _rows_of(call.payload.parsed.doc)
        doc: dict[str, Any] = {"instances": instances}
        if "signature_name" in p.parsed.doc:
            doc["signature_name"] = p.parsed.signature_name
        rows = len(instances)
        path = f"/v1/models/{first.model}/versions/{first.version}:predict"
        payload = RestPayload("POST", path, orjson.dumps(doc),
                              Body(doc, rows, p.parsed.signature_name), "predict")
        cost = first.units / max(first.rows, 1)
        deadline = Deadline(min(c.deadline.at for c in calls))
        return Call(model=first.model, version=first.version, pinned=True, units=rows * cost,
                    deadline=deadline, payload=payload, rows=rows, group=first.group)

    def split(self, answer: Response, calls: list[Call]) -> list[Response] | None:
        try:
            predictions = orjson.loads(answer.body)["predictions"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
        if not isinstance(predictions, list) or len(predictions) != sum(c.rows for c in calls):
            return None
        parts, start = [], 0
        for call in calls:
            chunk = predictions[start:start + call.rows]
            start += call.rows
            body = call.payload.parsed
            try:
                doc = ({"outputs": rows_to_columns(chunk)} if body.columnar
                       else {"predictions": chunk})
            except ValueError:
                return None
            parts.append(Response(200, orjson.dumps(doc), JSON))
        return parts
