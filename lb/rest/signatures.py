"""Input dtypes of each model version's signatures, read once from a node's metadata.

Called by `lb.rest.keys` before computing a cache key: the key decodes inputs in
the signature's dtypes (docs/ARCHITECTURE.md, "The result cache"). A (model, version) is
fetched once; concurrent first requests share the fetch; a failed fetch is
remembered for `retry_s` so a node without metadata costs one call per period,
not one per request. `dtypes` never raises: None means "unknown" and the key
falls back to canonical JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

log = logging.getLogger("lb.rest.signatures")

SigMap = dict[str, dict[str, str]]          # signature -> input name -> DT_*
Fetch = Callable[[str, int], Awaitable[bytes | None]]


def parse_metadata(raw: bytes) -> SigMap:
    """TF Serving's metadata JSON -> {signature: {input: dtype}}; raises ValueError."""
    doc: Any = orjson.loads(raw)
    defs = doc["metadata"]["signature_def"]["signature_def"]
    out: SigMap = {}
    for sig, spec in defs.items():
        inputs = spec.get("inputs", {})
        out[sig] = {name: str(t.get("dtype", "DT_INVALID")) for name, t in inputs.items()}
    return out


class Signatures:
    def __init__(self, fetch: Fetch, max_entries: int = 1024, retry_s: float = 5.0) -> None:
        self._fetch = fetch
        self._known: OrderedDict[tuple[str, int], SigMap] = OrderedDict()
        self._failed: dict[tuple[str, int], float] = {}
        self._pending: dict[tuple[str, int], asyncio.Task[SigMap | None]] = {}
        self._max = max_entries
        self._retry_s = retry_s
        self.fetches = 0
        self.failures = 0

    async def dtypes(self, model: str, version: int, signature: str) -> Mapping[str, str] | None:
        sigs = await self._get((model, version))
        return None if sigs is None else sigs.get(signature)

    async def _get(self, key: tuple[str, int]) -> SigMap | None:
        if (sigs := self._known.get(key)) is not None:
            self._known.move_to_end(key)
            return sigs
        if time.monotonic() < self._failed.get(key, 0.0):
            return None
        task = self._pending.get(key)
        if task is None:
            task = asyncio.create_task(self._load(key), name=f"metadata:{key[0]}:{key[1]}")
            self._pending[key] = task
            task.add_done_callback(lambda _t: self._pending.pop(key, None))
        return await asyncio.shield(task)

    async def _load(self, key: tuple[str, int]) -> SigMap | None:
        self.fetches += 1
        raw = None
        with contextlib.suppress(Exception):
            raw = await self._fetch(*key)
        try:
            if raw is None:
                raise ValueError("no metadata")
            sigs = parse_metadata(raw)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.failures += 1
            self._failed[key] = time.monotonic() + self._retry_s
            log.info("no signature metadata for %s v%s (%s): keys fall back to JSON", *key, exc)
            return None
        self._failed.pop(key, None)
        self._known[key] = sigs
        while len(self._known) > self._max:
            self._known.popitem(last=False)
        return sigs

    def stats(self) -> dict[str, int]:
        return {"known": len(self._known), "fetches": self.fetches, "failures": self.failures}
