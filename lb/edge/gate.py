"""The edge's check: the first thing both fronts do with a request, before admission.

Built by `lb.server.Proxy` (`Edge(cfg)`), which hooks it into the REST
front (`RestFront.gate`, with `bind_rest`) and the gRPC front (`GrpcFront.gate`)
while `auth` is configured, hands it each new config (`prepare`, then `apply`)
and runs its tasks (`tasks`: the TLS pair's and the keys file's watchers).
Reads /stats ("security") and /metrics from it.

What is checked, in this order (README "Security"):
1. TLS (by the transport, before any request): the handshake, and the client
   certificate when `listen.tls.require_client_cert`.
2. Open kinds (`auth.open`: health, status, metadata) pass without a key.
3. Who: `Authorization: Bearer <key>` or `x-api-key: <key>` (gRPC: the same
   metadata), else a verified client certificate whose subject stands for a key.
   None: 401 / UNAUTHENTICATED ("missing"); an unknown key ("invalid") or a
   header that is not one ("malformed": another scheme, no key, too long, not
   visible ASCII): the same.
4. Scope: the key's model globs; out of scope: 403 / PERMISSION_DENIED.
5. Budget: the key's limits (`lb.edge.ratelimit`; shared in Redis with
   `lb.edge.shared`): over it, 429 + Retry-After / RESOURCE_EXHAUSTED.
Only then does the request reach admission, the cache, the batcher or a node:
a refused request reaches none of them. Refusals are answered in TF Serving's
`{"error"}` shape by the front (`RestFront.refuse`; gRPC: `status_code`).

Cost per REST request: a cached route lookup, one pass over the headers, and
while a connection presents the same credentials, a comparison with what it
presented last (`Pipeline.memo`), not a hash; then a cached glob verdict and, with
limits, the GCRA arithmetic. Keys never appear in logs, /stats or /metrics: ids do.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lb.edge.keys import KeyStore, Principal, load_keys
from lb.edge.ratelimit import budget_for, retry_after
from lb.edge.tls import ServerTls, subject_of
from lb.errors import BadRequest, Forbidden, LbError, NotFound, RateLimited, Unauthenticated
from lb.reload import file_stamp
from lb.rest.routes import parse_body, parse_path

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from lb.config import Config
    from lb.edge.config import ApiKey
    from lb.edge.shared import SharedLimiter
    from lb.http.exchange import Exchange

log = logging.getLogger("lb.auth")

# Kinds of request (bits, so that the open ones are one mask).
HEALTH = 1          # /healthz, /readyz, grpc.health.v1
STATUS = 2          # model status
METADATA = 4        # model metadata
CALL = 8            # predict, classify, regress, MultiInference
OTHER = 16          # a path TF Serving does not have (the front answers 404)
OPENABLE = {"health": HEALTH, "status": STATUS, "metadata": METADATA}
GRPC_KINDS = {"Predict": CALL, "Classify": CALL, "Regress": CALL, "MultiInference": CALL,
              "GetModelMetadata": METADATA, "GetModelStatus": STATUS, "Health": HEALTH}
MAX_PATHS = 4096
_AUTHORIZATION = b"authorization"
_API_KEY = b"x-api-key"
_CREDENTIALS = frozenset((_AUTHORIZATION, _API_KEY))
_INVISIBLE = bytes(range(33)) + b"\x7f"     # controls and space: never in a key
_MISSING = Unauthenticated("missing API key: send 'Authorization: Bearer <key>' or "
                           "'x-api-key: <key>'")
_INVALID = Unauthenticated("invalid API key")
_MALFORMED = Unauthenticated("malformed credentials: expected 'Authorization: Bearer <key>' "
                             "or 'x-api-key: <key>' with a key of visible ASCII")
Route = tuple[int, str, str | None]     # kind, model, verb


def classify(path: str) -> Route:
    """The kind, model and verb of a REST path."""
    if path in ("/healthz", "/readyz"):
        return HEALTH, "", None
    try:
        route = parse_path(path)
    except (NotFound, BadRequest):
        return OTHER, "", None
    if route.verb is not None:
        return CALL, route.model, route.verb
    return (METADATA if route.metadata else STATUS), route.model, None


class _Seen:
    """What a connection's last credentials proved (kept in `Pipeline.memo`): for the
    same keys and the same header value, the same principal, and its verdict on the
    last model asked for."""

    __slots__ = ("keys", "may", "model", "principal", "raw")

    def __init__(self, keys: KeyStore, raw: bytes | None, principal: Principal) -> None:
        self.keys = keys
        self.raw = raw
        self.principal = principal
        self.model: str | None = None
        self.may = False


class Edge:
    """TLS pair, keys, budgets and their counters; see the module docstring."""

    def __init__(self, cfg: Config) -> None:
        self.tls = ServerTls(cfg.listen.tls) if cfg.listen.tls is not None else None
        self.shared: SharedLimiter | None = None
        if cfg.rate_limit.shared == "redis":        # redis.asyncio only when used
            from lb.edge.shared import SharedLimiter as Shared
            self.shared = Shared(cfg.rate_limit)
        self.keys: KeyStore | None = None
        self.open_mask = 0
        self.max_key = 512
        self.keys_file: str | None = None
        self.keys_error: str | None = None
        self.unauthenticated = {"missing": 0, "invalid": 0, "malformed": 0}
        self._paths: dict[str, Route] = {}
        self._poll_s = cfg.reload.poll_s
        self._keys_seen: tuple[int, int, int] | None = None
        self._go_on: Callable[[Exchange], None] = _unbound
        self._refuse: Callable[[Exchange, LbError], None] = _unbound_refuse
        self.apply(cfg, self.prepare(cfg))

    # -- config -------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Whether the fronts must call the gate (auth is configured)."""
        return self.keys is not None

    def prepare(self, cfg: Config) -> list[ApiKey] | None:
        """The keys a new config names (reading its keys file); ConfigError, and
        nothing changes, when they cannot be used."""
        return load_keys(cfg.auth) if cfg.auth is not None else None

    def apply(self, cfg: Config, keys: list[ApiKey] | None) -> None:
        """Use the prepared keys (one synchronous step; counters kept per key id)."""
        auth = cfg.auth
        self._poll_s = cfg.reload.poll_s
        if auth is None or keys is None:
            self.keys, self.open_mask, self.keys_file = None, 0, None
            return
        self.keys = KeyStore(keys, self.keys)
        self.open_mask = sum(OPENABLE[kind] for kind in set(auth.open))
        self.max_key = auth.max_key_bytes
        if auth.keys_file != self.keys_file:
            self._keys_seen = None
        self.keys_file = auth.keys_file
        self._keys_seen = file_stamp(auth.keys_file) if auth.keys_file else None
        self.keys_error = None

    def bind_rest(self, go_on: Callable[[Exchange], None],
                  refuse: Callable[[Exchange, LbError], None]) -> None:
        """The REST front's continuation (a request let through after a round trip to
        Redis) and its refusal (reply + count)."""
        self._go_on, self._refuse = go_on, refuse

    def tasks(self, auth_file_cfg: Callable[[], Config]) -> list[tuple[Any, str]]:
        """Coroutines for the proxy to run: the TLS pair's watcher, the keys file's."""
        out: list[tuple[Any, str]] = [(self._watch_keys(auth_file_cfg), "keys-file-watch")]
        if self.tls is not None:
            out.append((self.tls.watch(), "tls-watch"))
        return out

    async def _watch_keys(self, config: Callable[[], Config]) -> None:
        """Reload the keys when `auth.keys_file` changes (besides every config reload)."""
        while True:
            await asyncio.sleep(self._poll_s)
            if self.keys_file is None or file_stamp(self.keys_file) == self._keys_seen:
                continue
            cfg = config()
            try:
                keys = await asyncio.to_thread(self.prepare, cfg)
            except LbError as exc:
                self._keys_seen = file_stamp(self.keys_file)
                self.keys_error = str(exc)
                log.error("keys file not reloaded (the keys in use stay):\n%s", exc)
                continue
            self.apply(cfg, keys)
            log.info("keys reloaded from %s: %d keys", self.keys_file,
                     len(self.keys.principals) if self.keys else 0)

    # -- REST -----------------------------------------------------------------------

    def rest(self, ex: Exchange) -> bool:
        """True: go on now. False: refused (answered), or waiting for Redis (the gate
        calls the front's continuation once it knows)."""
        keys = self.keys
        if keys is None:
            return True
        req = ex.request
        route = self._paths.get(req.path) or self._route(req.path)
        kind = route[0]
        if kind & self.open_mask:
            return True
        raw: bytes | None = None
        for name, value in req.headers:
            if name in _CREDENTIALS:
                raw = value if name == _API_KEY else b"\x00" + value   # \x00: bearer
                break
        conn = ex.connection
        seen = conn.memo
        if type(seen) is not _Seen or seen.keys is not keys or seen.raw != raw:
            found = self._who(keys, raw, conn.peercert)
            if isinstance(found, LbError):
                self._refuse(ex, found)
                return False
            conn.memo = seen = _Seen(keys, raw, found)
        principal = seen.principal
        model = route[1]
        if kind != OTHER:
            if seen.model is not model:     # a route's model is one str object per path
                seen.model = model
                seen.may = principal.may_call(model)
            if not seen.may:
                principal.forbidden += 1
                self._refuse(ex, Forbidden(f"key {principal.id!r} may not call model "
                                           f"{model!r}"))
                return False
        limits = principal.limits
        if limits is None:
            principal.allowed += 1
            return True
        rows = self._rows(ex, route[2]) if kind == CALL and limits.rows_per_s else 0
        charged = self._charge(principal, model, rows)
        if not isinstance(charged, float):
            charged.add_done_callback(functools.partial(self._decided, ex, principal))
            return False
        wait = charged
        if wait > 0.0:
            self._refuse(ex, self._limited(principal, wait))
            return False
        principal.allowed += 1
        return True

    def _route(self, path: str) -> Route:
        route = classify(path)
        if len(self._paths) < MAX_PATHS:
            self._paths[path] = route
        return route

    @staticmethod
    def _rows(ex: Exchange, verb: str | None) -> int:
        """Rows of a REST call for a rows/s budget, counted exactly: the body is parsed
        (the front's size estimate is exact only for rows of one size). Only keys with
        a rows/s limit pay for it."""
        if verb is None:
            return 1
        try:
            return parse_body(ex.request.body, verb).rows
        except BadRequest:
            return 1                    # the front answers it 400

    def _decided(self, ex: Exchange, principal: Principal, fut: asyncio.Future[float]) -> None:
        """A shared budget's answer for a REST request."""
        if ex.done:
            return                      # the client left meanwhile
        wait = fut.result()
        if wait > 0.0:
            self._refuse(ex, self._limited(principal, wait))
            return
        principal.allowed += 1
        try:
            self._go_on(ex)
        except Exception:
            log.exception("request after the rate check failed: %s %s", ex.request.method,
                          ex.request.path)
            self._refuse(ex, LbError("internal error in the proxy"))

    # -- gRPC -----------------------------------------------------------------------

    async def grpc(self, context: Any, method: str, model: str, rows: int) -> None:
        """Raise the LbError a gRPC call is refused with; return when it may go on."""
        keys = self.keys
        if keys is None:
            return
        kind = GRPC_KINDS.get(method, CALL)
        if kind & self.open_mask:
            return
        raw: bytes | None = None
        for key, value in context.invocation_metadata() or ():
            if key in ("authorization", "x-api-key"):
                if not isinstance(value, str) or not value.isascii():
                    self.unauthenticated["malformed"] += 1
                    raise _MALFORMED
                raw = value.encode() if key == "x-api-key" else b"\x00" + value.encode()
                break
        found = self._who(keys, raw, lambda: _grpc_subject(context))
        if isinstance(found, LbError):
            raise found
        principal = found
        if kind != HEALTH and not principal.may_call(model):
            principal.forbidden += 1
            raise Forbidden(f"key {principal.id!r} may not call model {model!r}")
        if principal.limits is None:
            principal.allowed += 1
            return
        charged = self._charge(principal, model, rows if kind == CALL else 0)
        wait = charged if isinstance(charged, float) else await charged
        if wait > 0.0:
            raise self._limited(principal, wait)
        principal.allowed += 1

    # -- shared steps ---------------------------------------------------------------

    def _who(self, keys: KeyStore, raw: bytes | None,
             peercert: Callable[[], Any]) -> Principal | LbError:
        """The principal of presented credentials (`raw`: x-api-key's value, or
        b"\\x00" + Authorization's), else of the client certificate; or the refusal."""
        if raw is None:
            cert = peercert()
            principal = keys.by_subject(cert if isinstance(cert, str) or cert is None
                                        else subject_of(cert))
            if principal is None:
                self.unauthenticated["missing"] += 1
                return _MISSING
            return principal
        token = self._token(raw)
        if token is None:
            self.unauthenticated["malformed"] += 1
            return _MALFORMED
        principal = keys.by_key(token)
        if principal is None:
            self.unauthenticated["invalid"] += 1
            return _INVALID
        return principal

    def _token(self, raw: bytes) -> bytes | None:
        """The key in a header value, None when it is not one."""
        if raw[:1] == b"\x00":          # Authorization: "Bearer <key>"
            scheme, _, token = raw[1:].partition(b" ")
            if scheme.lower() != b"bearer":
                return None
        else:
            token = raw
        token = token.strip()
        if (not token or len(token) > self.max_key or not token.isascii()
                or len(token.translate(None, _INVISIBLE)) != len(token)):
            return None
        return token

    def _charge(self, principal: Principal, model: str,
                rows: int) -> float | asyncio.Future[float]:
        limits = principal.limits
        assert limits is not None
        budget = principal.budget or budget_for(principal.budgets, limits, model)
        now = time.monotonic()
        if self.shared is None:
            return budget.take(now, rows)
        name = f"{principal.id}:{model}" if limits.per_model else principal.id
        return self.shared.take(name, limits, rows, budget, now)

    @staticmethod
    def _limited(principal: Principal, wait: float) -> RateLimited:
        principal.limited += 1
        seconds = retry_after(wait)
        return RateLimited(f"rate limit of key {principal.id!r} exceeded; retry after "
                           f"{seconds} s", seconds)

    # -- reporting ------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """/stats "security": ids and counters, never a key or a hash."""
        keys = self.keys
        auth: dict[str, Any] = {"enabled": keys is not None}
        if keys is not None:
            auth.update({
                "keys": len(keys.principals), "hashed": keys.lookups,
                "open": [k for k, bit in OPENABLE.items() if bit & self.open_mask],
                "unauthenticated": dict(self.unauthenticated),
                "by_key": {i: p.stats() for i, p in keys.principals.items()},
                "keys_file": self.keys_file, "keys_file_error": self.keys_error})
        return {"tls": self.tls.stats() if self.tls is not None else {"enabled": False},
                "auth": auth,
                "rate_limit": self.shared.stats() if self.shared is not None
                else {"shared": "local", "state": "local"}}

    def metrics(self, prefix: str) -> list[Metric]:
        from lb.edge.metrics import edge_metrics
        return edge_metrics(self, prefix)

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.close()


def _grpc_subject(context: Any) -> str | None:
    """A gRPC client's verified certificate subject (RFC 2253, as gRPC prints it)."""
    subject = (context.auth_context() or {}).get("x509_subject")
    if not subject:
        return None
    value = subject[0]
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _unbound(ex: Exchange) -> None:
    raise RuntimeError("the REST front did not bind the gate")


def _unbound_refuse(ex: Exchange, exc: LbError) -> None:
    raise RuntimeError("the REST front did not bind the gate")
