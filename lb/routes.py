"""Parsing of TF Serving REST paths, request bodies and cache directives. Pure.

Called by `lb.rest_front` for every request. `parse_path` accepts exactly the paths
TF Serving serves (`/v1/models/{m}[/versions/{n}|/labels/{l}][/metadata|:verb]`);
`parse_body` guarantees a JSON object with the keys the verb needs and counts
its rows; anything else raises `BadRequest` / `NotFound` with TF Serving's
wording where TF Serving has one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

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


@dataclass(slots=True)     # not frozen: built per request, treat as immutable
class Body:
    doc: dict[str, Any]
    rows: int
    signature_name: str
    columnar: bool = False     # predict with "inputs" (replies with "outputs")


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


@dataclass(slots=True, frozen=True)
class Directives:
    """Request Cache-Control directives that the result cache honours."""

    lookup: bool = True     # False for no-cache / no-store
    store: bool = True      # False for no-store
    only_if_cached: bool = False


def parse_cache_control(value: str | None) -> Directives:
    if not value:
        return Directives()
    tokens = {t.strip().split("=", 1)[0].lower() for t in value.split(",")}
    no_store = "no-store" in tokens
    return Directives(lookup=not (no_store or "no-cache" in tokens), store=not no_store,
                      only_if_cached="only-if-cached" in tokens)
