"""Parsing of TF Serving REST paths and request bodies. Pure.

Called by `lb.rest.front` for every request. `parse_path` accepts exactly the paths
TF Serving serves (`/v1/models/{m}[/versions/{n}|/labels/{l}][/metadata|:verb]`);
`parse_body` guarantees a JSON object with the keys the verb needs and counts
its rows; anything else raises `BadRequest` / `NotFound` with TF Serving's
wording where TF Serving has one. `RowSizes` estimates the rows of a body that
nothing else needs parsed (no cache work, no batching) from its size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

import orjson

from lb.errors import BadRequest, NotFound

_PATH = re.compile(
    r"^/v1/models/(?P<model>[^/:]+)"
    r"(?:/versions/(?P<version>[0-9]+)|/labels/(?P<label>[^/:]+))?"
    r"(?:(?P<meta>/metadata)|:(?P<verb>predict|classify|regress))?/?$"
)
VERBS = ("predict", "classify", "regress")


@dataclass(slots=True)     # not frozen: built per request, treat as immutable
class Route:
    model: str
    version: int | None
    label: str | None
    verb: str | None        # predict | classify | regress, None for GETs
    metadata: bool

    def path(self, version: int | None = None) -> str:
        """The TF Serving path for this route, optionally pinned to `version`."""
        out = f"/v1/models/{self.model}"
        v = version if version is not None else self.version
        if v is not None:
            out += f"/versions/{v}"
        elif self.label is not None:
            out += f"/labels/{self.label}"
        if self.metadata:
            out += "/metadata"
        elif self.verb:
            out += f":{self.verb}"
        return out


def parse_path(path: str) -> Route:
    m = _PATH.match(path)
    if m is None:
        raise NotFound(f"Malformed request: {path}")
    version = m["version"]
    if version is not None and len(version) > 18:
        raise BadRequest(f"version out of range: {version}")
    return Route(model=m["model"], version=int(version) if version is not None else None,
                 label=m["label"], verb=m["verb"], metadata=m["meta"] is not None)


@dataclass(slots=True, init=False)     # built per request, treat as immutable
class Body:
    doc: dict[str, Any]
    rows: int
    signature_name: str
    columnar: bool = False     # predict with "inputs" (replies with "outputs")

    def __init__(self, doc: dict[str, Any], rows: int, signature_name: str,
                 columnar: bool = False) -> None:
        # written out: compiled (lb.request.call.Call says why)
        self.doc = doc
        self.rows = rows
        self.signature_name = signature_name
        self.columnar = columnar


def _rows_of_inputs(inputs: Any) -> int:
    if isinstance(inputs, dict):
        first = next(iter(inputs.values()), None)
        return len(first) if isinstance(first, list) else 1
    return len(inputs) if isinstance(inputs, list) else 1


def parse_body(raw: bytes, verb: str) -> Body:
    """Decode and check a POST body for `verb`; count its rows (batch size)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"JSON Parse error: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("JSON Value: request body must be a JSON object")
    sig = doc.get("signature_name", "serving_default")
    if not isinstance(sig, str):
        raise BadRequest("'signature_name' must be a string")
    if verb == "predict":
        has_i, has_c = "instances" in doc, "inputs" in doc
        if has_i == has_c:
            raise BadRequest("Missing 'inputs' or 'instances' key" if not has_i else
                             "Request body must have either 'inputs' or 'instances', not both")
        if has_i:
            if not isinstance(doc["instances"], list):
                raise BadRequest("'instances' must be a JSON array")
            rows = len(doc["instances"])
        else:
            rows = _rows_of_inputs(doc["inputs"])
    else:
        examples = doc.get("examples")
        if not isinstance(examples, list):
            raise BadRequest("Missing 'examples' key" if examples is None
                             else "'examples' must be a JSON array")
        rows = len(examples)
    return Body(doc=doc, rows=max(rows, 1), signature_name=sig or "serving_default",
                columnar=verb == "predict" and "inputs" in doc)


class RowSize:
    """What `RowSizes` knows of one (model, verb)."""

    __slots__ = ("every", "parsed", "per_row", "since")

    def __init__(self, per_row: float, every: int) -> None:
        self.per_row = per_row      # bytes per row (EWMA)
        self.parsed = 1             # bodies parsed
        self.since = 0              # bodies since the last parse
        self.every = every          # the interval between parses


class RowSizes:
    """Rows of a POST body from its size: bytes per row, learned per model and verb.

    Called by `lb.rest.front` for a request that goes straight to a node with no
    cache work and no batching, where the parse (12 µs for one 784-float row, plus
    the garbage of 784 floats) would only count rows for w_j. `rows` answers None
    when a parse is due: until a model has `WARM` parsed bodies, and then for one
    body in `EVERY` (and every one after it until a parse is learned), so the
    estimate follows the traffic; `learn` takes what a parse found. While the
    parses agree with the estimate, the interval doubles, up to `MAX_EVERY`; a
    parse that does not brings it back to `EVERY`. Bytes per row
    are counted past an `ENVELOPE` of the keys around the rows, so the estimate is
    exact for rows of one size (one model, one input shape) once they are much
    larger than that (a 784-float row is 5.4 KB), and proportional to bytes
    otherwise. A body that is not parsed is checked by the node, which answers a
    malformed one 400 in the same shape. Memory: one entry per (model, verb) seen,
    at most `MAX_ENTRIES`.
    """

    WARM: Final = 8
    EVERY: Final = 32
    MAX_EVERY: Final = 1024
    ENVELOPE: Final = 16    # len(b'{"instances":[]}')
    MAX_ENTRIES: Final = 4096
    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: dict[tuple[str, str], RowSize] = {}

    def rows(self, model: str, verb: str, size: int) -> int | None:
        known = self._known.get((model, verb))
        if known is None or known.parsed < self.WARM:
            return None
        known.since += 1
        if known.since >= known.every:
            return None
        return max(round((size - self.ENVELOPE) / known.per_row), 1)

    def learn(self, model: str, verb: str, size: int, rows: int) -> None:
        key = (model, verb)
        per_row = max(size - self.ENVELOPE, 1) / max(rows, 1)
        known = self._known.get(key)
        if known is None:
            if len(self._known) < self.MAX_ENTRIES:
                self._known[key] = RowSize(per_row, self.EVERY)
            return
        if known.parsed >= self.WARM:       # did the estimate get this body right?
            agreed = max(round((size - self.ENVELOPE) / known.per_row), 1) == rows
            known.every = min(known.every * 2, self.MAX_EVERY) if agreed else self.EVERY
        known.per_row += (per_row - known.per_row) * (0.5 if known.parsed < self.WARM else 0.1)
        known.parsed += 1
        known.since = 0
