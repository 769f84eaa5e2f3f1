"""Cache plans for REST calls: the whole-request key, or one key per row.

Called by `lb.request.core.Core.serve` (as the front's `PlanFn`) for a cacheable REST
call, only when the cache will be used (not for Cache-Control no-store, not
for a model the adaptive controller bypasses). Keys decode inputs in the
signature's dtypes, read once per (model, version) from a node's metadata
(`lb.rest.signatures`); without them keys fall back to canonical JSON, and
`key_modes` says so per model for `/stats`.

It also remembers, for bodies that repeat byte for byte, which key they made
(`memo`): the front's synchronous hit path (`RestFront._hit`) answers such a
request from the in-process cache tier without parsing its body or making its
key again. Identical bytes on the same path and resolved version always make
the same key (the key is a function of model, version, verb, signature, body
and the version's dtypes), so the memo can never answer with another
request's entry; a new version misses the memo and takes the full path. A
call routed by group (`Call.group`, `lb.rollout`) has keys of its group's own
(`key_version`: one group's model never answers for another's) and is not
remembered: the hit path runs before a request is given its group.

Guarantees: never raises for a body the key cannot read (the call is then
simply not cached); the body was parsed once by the front (`RestPayload.parsed`)
and is not parsed again; `key_modes` holds at most `MAX_MODELS` names; the memo
holds at most `MEMO_BYTES` of request bodies (oldest out first).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cache.keys import key_mode, request_key, row_keys
from lb.config import Config
from lb.request.call import Call
from lb.request.core import Plan
from lb.rest.signatures import Signatures
from lb.rest.upstream import RestPayload
from lb.rollout.settings import key_version

log = logging.getLogger("lb.keys")
MAX_MODELS = 256
MEMO_BYTES = 16 * 2**20          # request bodies remembered with their keys
MEMO_MAX_BODY = 64 * 1024        # larger bodies are not remembered


@dataclass(slots=True)
class Memo:
    """What a repeated body made last time: its key, on which resolved version."""

    model: str
    version: int
    key: str
    columnar: bool


class RestKeys:
    def __init__(self, signatures: Signatures, cfg: Callable[[], Config]) -> None:
        self.signatures = signatures
        self._cfg = cfg
        # model -> "tensor" | "json": how its keys were last made (shown in /stats)
        self.key_modes: dict[str, str] = {}
        self.memo: OrderedDict[tuple[str, bytes], Memo] = OrderedDict()
        self._memo_bytes = 0

    def remember(self, path: str, body: bytes, memo: Memo) -> None:
        """Called by `plan` for whole-request keys (see the module docstring)."""
        if len(body) > MEMO_MAX_BODY or (path, body) in self.memo:
            return
        self.memo[(path, body)] = memo
        self._memo_bytes += len(body)
        while self._memo_bytes > MEMO_BYTES:
            (_, old), _ = self.memo.popitem(last=False)
            self._memo_bytes -= len(old)

    async def plan(self, call: Call) -> Plan | None:
        p: RestPayload = call.payload
        body, version, verb = p.parsed, call.version, p.verb
        if body is None or version is None or verb is None:
            return None
        model = call.model
        dtypes = await self.signatures.dtypes(model, version, body.signature_name)
        if len(self.key_modes) < MAX_MODELS or model in self.key_modes:
            self.key_modes[model] = key_mode(dtypes)
        tag = key_version(version, call.group)     # one group's answers, its own keys
        try:
            if verb == "predict" and not body.columnar and self._cfg().model(model).row_cache:
                keys = row_keys(model, tag, body.signature_name, body.doc, dtypes)
                if keys:
                    return Plan(rows=keys)
            key = request_key(model, tag, verb, body.doc, dtypes, body.signature_name)
        except Exception:     # a body the key cannot read is simply not cached
            log.debug("no cache key for %s", model, exc_info=True)
            return None
        if p.body is not None and call.group is None:    # `_hit` does not route by group
            self.remember(p.path, p.body, Memo(model, version, key, body.columnar))
        return Plan(key=key)
