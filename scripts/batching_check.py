"""Are the answers through a batching proxy the answers a worker gives? First row of
a reply, a one-request check of every contender, the 550-request concurrent check.

Called by scripts/bench_batching.py (`check_contenders` before anything is
measured, `correctness` after the low-rate step; `MODEL` and `predict_url` for
every request it sends) and tests/scripts/test_bench_batching.py (`first_row`).
Guarantees: `TOLERANCE` is the only slack allowed against the worker's values
(float32: a batch of 64 sums in another order than a batch of 1; `correctness`
takes the max abs difference, `check_contenders` np.allclose with that atol);
`first_row` never raises on a bad reply (None); `correctness` sends row-format
and columnar bodies mixed in one seeded order, compares columnar replies as
`{"outputs": ...}`, counts what came back wrong, and leaves `rig.counts` at the
workers' settled counters so the next step measures only its own traffic.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import numpy as np
import orjson

from harness.loadgen import burst
from scripts.benchenv import http_get, settle_workers

MODEL = "mnist"
TOLERANCE = 1e-5         # float32: a batch of 64 sums in another order than a batch of 1
JSON_HEADERS = {"Content-Type": "application/json"}


class RigState(Protocol):
    """What `correctness` reads and updates of bench_batching's Rig."""

    workers: list[str]
    bodies: list[bytes]
    counts: tuple[int, int]


def predict_url(base: str) -> str:
    return f"{base}/v1/models/{MODEL}:predict"


def check_contenders(urls: dict[str, str], worker: str, body: bytes) -> dict[str, list[str]]:
    """What is wrong with each contender's answer to one predict (empty: nothing)."""
    status, _h, raw = http_get(predict_url(worker), method="POST", body=body,
                               headers=JSON_HEADERS, timeout=10.0)
    want = first_row(status, raw, "predictions")
    problems: dict[str, list[str]] = {}
    for name, url in urls.items():
        status, _h, raw = http_get(predict_url(url), method="POST", body=body,
                                   headers=JSON_HEADERS, timeout=10.0)
        got = first_row(status, raw, "predictions")
        same = got is not None and want is not None and np.allclose(got, want, atol=TOLERANCE)
        problems[name] = [] if same else [f"predict: {status} {raw[:80]!r}"]
    return problems


def first_row(status: int, raw: bytes, key: str) -> list[float] | None:
    """Row 0 of a one-row 200 reply whose only key is `key` (when that holds a dict
    of outputs, the model's only one); None for anything else."""
    try:
        doc = orjson.loads(raw) if status == 200 else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or set(doc) != {key}:
        return None
    value = doc[key]
    if isinstance(value, dict) and len(value) == 1:
        value = next(iter(value.values()))
    return value[0] if isinstance(value, list) and value else None


def correctness(rig: RigState, url: str, rows: list[list[float]], seed: int) -> dict[str, Any]:
    """500 random digits (and 50 columnar, mixed in) through `url` at once, against
    direct calls to one worker with the same rows."""
    rng = np.random.default_rng(seed)
    picks = [int(i) for i in rng.choice(len(rows), size=min(500, len(rows)), replace=False)]
    sends = [("instances", i) for i in picks] + [("inputs", i) for i in picks[:50]]
    order = [int(k) for k in rng.permutation(len(sends))]
    direct = asyncio.run(burst(predict_url(rig.workers[0]), [rig.bodies[i] for i in picks],
                               limit=8))
    want = {i: first_row(st, raw, "predictions") for i, (st, raw) in zip(picks, direct,
                                                                          strict=True)}
    before = settle_workers(rig.workers)
    bodies = [orjson.dumps({sends[k][0]: [rows[sends[k][1]]]}) for k in order]
    through = asyncio.run(burst(predict_url(url), bodies, limit=128))
    rig.counts = after = settle_workers(rig.workers)
    out: dict[str, Any] = {"sent": len(sends), "bad_status": 0, "missing": 0}
    diffs: dict[str, list[float]] = {"instances": [], "inputs": []}
    for k, (status, raw) in zip(order, through, strict=True):
        fmt, i = sends[k]
        got = first_row(status, raw, "predictions" if fmt == "instances" else "outputs")
        expected = want[i]
        if status != 200:
            out["bad_status"] += 1
        elif got is None or expected is None or len(got) != len(expected):
            out["missing"] += 1
        else:
            diffs[fmt].append(float(np.max(np.abs(np.subtract(got, expected)))))
    calls = after[0] - before[0]
    out.update(rows_compared=len(diffs["instances"]), columnar_compared=len(diffs["inputs"]),
               max_abs_diff=max(diffs["instances"], default=float("nan")),
               columnar_max_abs_diff=max(diffs["inputs"], default=float("nan")),
               backend_calls=calls,
               rows_per_call=round((after[1] - before[1]) / calls, 2) if calls else None)
    out["ok"] = bool(out["bad_status"] == out["missing"] == 0
                     and out["rows_compared"] == len(picks) and out["columnar_compared"] == 50
                     and max(diffs["instances"] + diffs["inputs"]) <= TOLERANCE)
    return out
