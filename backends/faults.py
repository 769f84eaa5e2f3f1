"""Faults a test can switch on in a running worker: `PUT /_worker/fault`. Test-only.

Held by `WorkerStats.fault` (one per worker, shared by the REST and gRPC
surfaces) and applied by both to inference calls after the configured delay:

* `{"status": 500}`: every inference call is answered with that status (gRPC:
  the code TF Serving maps it to, INTERNAL for 500), without running the model:
  a canary that starts to fail;
* `{"scramble": true}`: predict outputs are rotated by one along their last axis,
  so every row's argmax moves to another class: a canary that starts to disagree;
* `{}`: no fault.

Used by the rollout tests and benchmarks (tests/lb/test_rollout_e2e.py); a
worker starts without any fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from backends.errors import InvalidInput


@dataclass(slots=True)
class Fault:
    status: int = 0             # 0: answer normally
    scramble: bool = False

    @classmethod
    def parse(cls, doc: Any) -> Fault:
        """The fault a `PUT /_worker/fault` body asks for; InvalidInput if malformed."""
        if not isinstance(doc, dict) or set(doc) - {"status", "scramble"}:
            raise InvalidInput('expected {"status": 4xx|5xx} and/or {"scramble": bool}')
        status, scramble = doc.get("status", 0), doc.get("scramble", False)
        if not isinstance(status, int) or not (status == 0 or 400 <= status <= 599):
            raise InvalidInput("status must be 0 or within [400, 599]")
        if not isinstance(scramble, bool):
            raise InvalidInput("scramble must be true or false")
        return cls(status, scramble)

    def as_json(self) -> dict[str, Any]:
        return {"status": self.status, "scramble": self.scramble}


def rotate(arr: np.ndarray) -> np.ndarray:
    """A numeric output rotated by one along its last axis (others unchanged)."""
    if arr.ndim == 0 or arr.dtype.kind not in "biuf" or arr.shape[-1] < 2:
        return arr
    return np.roll(arr, 1, axis=-1)


def scramble_reply(reply: dict[str, Any]) -> dict[str, Any]:
    """A REST predict reply (`predictions` or `outputs`) with every output rotated."""
    out = {}
    for key, value in reply.items():
        if key not in ("predictions", "outputs"):
            out[key] = value
        elif isinstance(value, dict):
            out[key] = {k: _rotate_json(v) for k, v in value.items()}
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            out[key] = [{k: _rotate_json(v) for k, v in row.items()} for row in value]
        else:
            out[key] = _rotate_json(value)
    return out


def _rotate_json(value: Any) -> Any:
    try:
        arr = np.asarray(value)
    except ValueError:
        return value
    return rotate(arr) if arr.dtype.kind in "biuf" else value
