"""API keys and client-certificate identities: who is asking, and may it call this model.

Built by `lb.edge.gate.Edge` from `auth.keys` plus `auth.keys_file` (`load_keys`,
off the event loop at start and at each reload; a file that cannot be read or
validated raises `ConfigError` naming it and the field, and the keys in use stay).
Looked up by the gate on every request that is not open (`KeyStore.by_key`,
`KeyStore.by_subject`).

Guarantees:
* Keys are held only as SHA-256 digests. A presented key is hashed once and looked
  up by its digest (a dict lookup), then confirmed with `hmac.compare_digest`, so
  the comparison takes the same time whatever the bytes. Timing could tell at most
  how a digest of the attacker's choosing compares, which says nothing of a key
  without a preimage of SHA-256.
* A key's plaintext is never stored, logged or shown; a `Principal` carries only the
  key's id (what logs, /stats and /metrics name) and its counters.
* Model scopes are globs (`fnmatch`, case-sensitive); a principal remembers its
  verdict per model name (bounded), so the glob runs once per model.
* On a reload, a key whose id stays keeps its counters and budgets (when its
  limits are unchanged).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lb.edge.config import ApiKey, AuthConfig, KeysFile, RateLimit, check_unique
from lb.edge.ratelimit import Budget
from lb.errors import ConfigError

MAX_SCOPE_MEMO = 1024


class Principal:
    """One configured key (or certificate subject): id, scope, limits, counters."""

    __slots__ = (
        "_scope",
        "allowed",
        "budget",
        "budgets",
        "digests",
        "forbidden",
        "id",
        "limited",
        "limits",
        "models",
        "subject",
    )

    def __init__(self, key: ApiKey) -> None:
        self.id = key.id
        self.digests = [bytes.fromhex(d) for d in key.sha256]
        self.subject = key.subject
        self.models = list(key.models)
        self.limits: RateLimit | None = key.limits
        self.budgets: dict[str, Budget] = {}    # by model, with limits.per_model
        # the key's one budget (limits without per_model): no lookup per request
        self.budget = (Budget(key.limits) if key.limits is not None
                       and not key.limits.per_model else None)
        self._scope: dict[str, bool] = {}
        self.allowed = 0            # requests let through (scope and rate passed)
        self.forbidden = 0          # 403: a model out of scope
        self.limited = 0            # 429: over budget

    def may_call(self, model: str) -> bool:
        verdict = self._scope.get(model)
        if verdict is None:
            verdict = any(fnmatch.fnmatchcase(model, glob) for glob in self.models)
            if len(self._scope) < MAX_SCOPE_MEMO:
                self._scope[model] = verdict
        return verdict

    def carry_over(self, old: Principal) -> None:
        """Keep the counters (and, with the same limits, the budgets) of a reloaded key."""
        self.allowed, self.forbidden, self.limited = old.allowed, old.forbidden, old.limited
        if old.limits == self.limits:
            self.budgets, self.budget = old.budgets, old.budget

    def stats(self) -> dict[str, Any]:
        return {"allowed": self.allowed, "forbidden": self.forbidden, "limited": self.limited,
                "models": self.models,
                "limits": self.limits.model_dump() if self.limits is not None else None}


class KeyStore:
    """The principals by key digest and by certificate subject."""

    __slots__ = ("_by_digest", "_by_subject", "lookups", "principals")

    def __init__(self, keys: list[ApiKey], previous: KeyStore | None = None) -> None:
        self.principals: dict[str, Principal] = {}
        self.lookups = 0            # keys hashed (a connection's repeats are not)
        self._by_digest: dict[bytes, tuple[bytes, Principal]] = {}
        self._by_subject: dict[str, Principal] = {}
        for key in keys:
            principal = Principal(key)
            old = previous.principals.get(key.id) if previous is not None else None
            if old is not None:
                principal.carry_over(old)
            self.principals[key.id] = principal
            for digest in principal.digests:
                self._by_digest[digest] = (digest, principal)
            if key.subject is not None:
                self._by_subject[key.subject] = principal

    def by_key(self, presented: bytes) -> Principal | None:
        """The principal whose key is `presented` (the raw key bytes), or None."""
        self.lookups += 1
        digest = hashlib.sha256(presented).digest()
        found = self._by_digest.get(digest)
        if found is None or not hmac.compare_digest(found[0], digest):
            return None
        return found[1]

    def by_subject(self, subject: str | None) -> Principal | None:
        """The principal a verified client certificate's subject stands for, or None."""
        return None if subject is None else self._by_subject.get(subject)


def load_keys(auth: AuthConfig) -> list[ApiKey]:
    """The keys of the config and of its keys file, checked together; ConfigError."""
    keys = list(auth.keys)
    if auth.keys_file is not None:
        keys += _read_file(auth.keys_file)
    try:
        check_unique(keys, f"auth.keys_file {auth.keys_file}" if auth.keys_file else "auth.keys")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return keys


def _read_file(path: str) -> list[ApiKey]:
    where = f"auth.keys_file: {path}"
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    try:
        return KeysFile.model_validate(doc if doc is not None else {}).keys
    except ValidationError as exc:
        lines = [f"{where}: {'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                 for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None
