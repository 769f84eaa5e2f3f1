"""Per-request observation for both fronts: request counts, latency, the access log.

Called by the fronts (`lb.rest.front`, `lb.grpc.front`) once per finished
client request: `Recorder.record(...)`. It counts the request by (model,
node, code), adds its latency to the (model, node) histogram, hands it to the
operator's history (`lb.admin.history`, when attached) and, when `log.access` is on,
writes one line on logger `lb.access`: plain text or one JSON object per line
(`log.format`). `lb.admin.metrics` reads the counts at scrape time.

Guarantees: `record` is cheap (a few dict lookups and integer increments, no
lock, no allocation for label sets already seen), so it can run on every
request; model labels are bounded (at most `MAX_MODELS` names, admitted only
by a reply below 400, so a scan of made-up names cannot grow them; the rest
count as "(other)"); a client that went away is counted with code 499.
`configure_access_log` routes `lb.access` for the chosen format, at start-up
and on reload.
"""

from __future__ import annotations

import bisect
import logging
import sys
import time
from typing import Any, Protocol

import orjson

from lb.config import LogConfig

access = logging.getLogger("lb.access")

MAX_MODELS = 256
OTHER = "(other)"
CLIENT_CLOSED = 499          # nginx's code for a client that left before the reply
# Client-observed latency: cache hits take ~0.1 ms, slow models tens of seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_MODELS_PREFIX = "/v1/models/"


class _JsonHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Bare JSON lines on stderr for `lb.access` (marked so reload can find it)."""


def configure_access_log(cfg: LogConfig) -> None:
    """JSON lines go to stderr bare (one object per line, no logging prefix) and do
    not propagate; text lines propagate to the root handler."""
    for handler in [h for h in access.handlers if isinstance(h, _JsonHandler)]:
        access.removeHandler(handler)
    access.propagate = cfg.format != "json"
    if cfg.format == "json":
        handler = _JsonHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
    access.setLevel(logging.INFO)


def model_of(path: str) -> str:
    """The model a TF Serving path names ('' for other paths)."""
    if not path.startswith(_MODELS_PREFIX):
        return ""
    tail = path[len(_MODELS_PREFIX):]
    return tail.split("/", 1)[0].split(":", 1)[0]


class History(Protocol):
    def observe(self, node: str, seconds: float, status: int) -> None: ...


class Histogram:
    """Cumulative-at-scrape latency histogram: bucket counts, sum and count (filled in
    by `Recorder.record`)."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0


class Recorder:
    """Counts and logs finished client requests; one per proxy process."""

    def __init__(self, log_cfg: LogConfig, history: History | None = None) -> None:
        self._log_cfg = log_cfg
        self.access = log_cfg.access    # read on every request: `log` is called only then
        self.history = history
        self._models: set[str] = set()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[tuple[str, str], Histogram] = {}

    def _model_label(self, model: str, status: int) -> str:
        if model in self._models or not model:
            return model
        if status < 400 and len(self._models) < MAX_MODELS:
            self._models.add(model)
            return model
        return OTHER

    def record(self, model: str, node: str, status: int, seconds: float) -> None:
        """Count one finished client request (any front)."""
        if model not in self._models and model:
            model = self._model_label(model, status)
        key = (model, node, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        hist = self.latency.get((model, node))
        if hist is None:
            hist = self.latency[(model, node)] = Histogram()
        hist.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        hist.sum += seconds
        hist.count += 1
        if self.history is not None:
            self.history.observe(node, seconds, status)

    def reconfigure(self, log_cfg: LogConfig) -> None:
        """A reload may switch the access log on or off, or change its format."""
        self._log_cfg = log_cfg
        self.access = log_cfg.access

    def log(self, remote: str, method: str, path: str, status: int, node: str, cache: str,
            size: int, seconds: float) -> None:
        """One access log line. Callers call it only while `access` is True."""
        cfg = self._log_cfg
        if not cfg.access or not access.isEnabledFor(logging.INFO):
            return
        if cfg.format == "json":
            doc: dict[str, Any] = {
                "ts": round(time.time(), 3), "remote": remote, "method": method,
                "path": path, "status": status, "bytes": size,
                "ms": round(seconds * 1000.0, 3), "model": model_of(path) or None,
                "node": node or None, "cache": cache or None}
            access.info("%s", orjson.dumps(doc).decode())
            return
        access.info('%s "%s %s" %d %dB %.1fms node=%s cache=%s', remote, method, path,
                    status, size, seconds * 1000.0, node or "-", cache or "-")
