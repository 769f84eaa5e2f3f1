"""`Rollouts`: routing by group, shadows and rollouts, as the fronts and the proxy see them.

Built by the composition root (`lb.server.Proxy`), which hands it each new
config (`reconfigure`), runs `run` as a task and shows `stats` in `/stats`.
The fronts call it for every call of a routed model (one with `split`,
`match`, `sticky_by`, `shadow` or `rollout`); other models cost one dict lookup:

1. `route_rest` / `route_grpc` (before the core sees the call): the group that
   answers, in `call.group` (`lb.rollout.split`); the pool then only picks nodes
   of that group, the version is the group's latest and cache keys are the
   group's own;
2. `open` (inference calls): a `Ticket`, which may start a shadow at once;
3. `Ticket.answered` when the client's answer is known (REST from the reply
   path, gRPC through `watch`): the group's counters, and the pair's
   comparison once the shadow has answered too.

Shadows: `shadow.share` % of a model's predict calls whose primary group is not
the shadow's (chosen by a golden-ratio sequence: evenly spread, no randomness)
are copied to a node of the shadow group that the pool picks. A copy goes
through the front's `Transport` directly: not through the dispatcher (no
retries, no hedges, no `Node.begin`/`end`, so never in τ, the load window or
outlier detection) and never through the cache. It has its own deadline
(`shadow.timeout_s`), its own cap (`max_inflight`) and budget (`max_per_s`, a
token bucket), and is not sent while the proxy is shedding or near it
(client requests in flight at half `limits.max_inflight`, or a request shed in
the last second): shadows go first. Skipped copies are counted by reason. The
client never waits for a shadow: its answer is sent before the pair is compared.

Rollouts: `run` looks at each rollout every `TICK_S` (`lb.rollout.progress`)
and moves the model's split when a step changes; every step starts new
counters. Pause, resume and abort come from the admin port (`control`).

Guarantees: no await on a call's path; a shadow's failure never reaches the
client; everything here runs on the event loop; a reload keeps counters,
sequences, shadows in flight and rollout state for what it does not change.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from lb.call import Call, Deadline, Outcome, Transport, XCache
from lb.config import Config, ModelConfig
from lb.errors import LbError
from lb.nodes import NodePool
from lb.rollout import compare
from lb.rollout.progress import Progress, Reading, Refused
from lb.rollout.settings import DEFAULT_GROUP, ShadowConfig, routed
from lb.rollout.split import Golden, Headers, ModelRouter, Rule
from lb.rollout.windows import GroupStats, Pair, ShadowStats

log = logging.getLogger("lb.rollout")

TICK_S = 0.25                # rollouts are looked at this often
HEALTH_TTL_S = 0.1           # a model's healthy groups are recomputed at most this often
SHED_QUIET_S = 1.0           # no shadow for this long after the proxy shed a request
SHADOW_HEADROOM = 0.5        # no shadow past this fraction of limits.max_inflight
CLIENT_CLOSED = 499
ACTIONS = ("pause", "resume", "abort")

Load = Callable[[], tuple[int, int, int]]     # (requests in flight, max_inflight, shed)

# gRPC status code number -> the HTTP status TF Serving maps it to (for counting).
_GRPC_HTTP = {0: 200, 1: 499, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400,
              11: 400, 14: 503, 16: 401}


def grpc_status(code: Any) -> int:
    """The HTTP status of a `grpc.StatusCode` (500 for the node-failure codes)."""
    value = getattr(code, "value", (2,))
    return _GRPC_HTTP.get(value[0] if isinstance(value, tuple) else 2, 500)


def _api_key(headers: Headers) -> str | None:
    """The client's API key: `x-api-key`, else an `authorization: Bearer` token."""
    key = headers("x-api-key")
    if key:
        return key
    auth = headers("authorization") or ""
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class Budget:
    """A token bucket: `rate` per second, bursts of up to `burst`."""

    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self.tokens = self.burst
        self.at = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


class Shadow:
    """One model's shadow: its config, selection, cap, budget and statistics."""

    __slots__ = ("budget", "cfg", "inflight", "seq", "stats")

    def __init__(self, cfg: ShadowConfig, now: float) -> None:
        self.cfg = cfg
        self.seq = Golden()
        self.inflight = 0
        self.budget = Budget(cfg.max_per_s, now)
        self.stats = ShadowStats(cfg.window_s, cfg.samples)

    def reconfigure(self, cfg: ShadowConfig, now: float) -> None:
        if cfg.max_per_s != self.cfg.max_per_s:
            self.budget = Budget(cfg.max_per_s, now)
        self.stats.resize(cfg.window_s, cfg.samples)
        self.cfg = cfg

    def selected(self) -> bool:
        return self.seq.next() < self.cfg.share / 100.0


class Routed:
    """One routed model's router, counters, shadow and rollout."""

    __slots__ = ("cfg", "groups", "healthy", "healthy_at", "mark", "name", "progress",
                 "router", "shadow")

    def __init__(self, name: str, cfg: ModelConfig, now: float) -> None:
        self.name = name
        self.cfg = cfg
        self.progress = Progress(cfg.rollout, now) if cfg.rollout is not None else None
        self.router = ModelRouter(self.base_shares())
        self.shadow = Shadow(cfg.shadow, now) if cfg.shadow is not None else None
        self.groups: dict[str, GroupStats] = {}
        self.healthy: frozenset[str] = frozenset()
        self.healthy_at = -1.0
        self.mark = (0, 0, 0, 0)        # the shadow's `counts()` when the step began
        self._rules()

    def base_shares(self) -> list[tuple[str, float]]:
        if self.progress is not None:
            return self.progress.shares()
        if self.cfg.split is not None:
            return [(s.group, s.share) for s in self.cfg.split]
        return [(DEFAULT_GROUP, 100.0)]

    def _rules(self) -> None:
        cfg, router = self.cfg, self.router
        router.rules = [Rule(m.header, m.value, m.group) for m in cfg.match]
        sticky = cfg.sticky_by
        router.sticky_header = sticky.header if sticky is not None else None
        router.sticky_api_key = sticky is not None and sticky.api_key

    def group(self, name: str) -> GroupStats:
        stats = self.groups.get(name)
        if stats is None:
            stats = self.groups[name] = GroupStats()
        return stats

    def reconfigure(self, cfg: ModelConfig, now: float) -> None:
        """A reload: new rules, shares, shadow and rollout settings; state kept where the
        new config keeps its meaning (see `Progress.reconfigure`)."""
        old = self.cfg.rollout
        self.cfg = cfg
        if cfg.shadow is None:
            self.shadow = None
        elif self.shadow is None or self.shadow.cfg.group != cfg.shadow.group:
            self.shadow = Shadow(cfg.shadow, now)
        else:
            self.shadow.reconfigure(cfg.shadow, now)
        self.mark = self._shadow_counts()      # a new shadow's counts start at zero
        new = cfg.rollout
        if new is None:
            self.progress = None
        elif self.progress is None or old is None or (old.from_, old.to) != (new.from_, new.to):
            self.progress = Progress(new, now)
            self.begin_step()
        elif self.progress.reconfigure(new, now):
            self.begin_step()
        self.router.set_shares(self.base_shares())
        self._rules()

    def _shadow_counts(self) -> tuple[int, int, int, int]:
        """The shadow's counts when it copies to the rollout's `to` group, else zeros."""
        shadow, progress = self.shadow, self.progress
        if shadow is None or progress is None or shadow.cfg.group != progress.cfg.to:
            return (0, 0, 0, 0)
        return shadow.stats.counts()

    def begin_step(self) -> None:
        for stats in self.groups.values():
            stats.begin_step()
        self.mark = self._shadow_counts()

    def reading(self) -> Reading | None:
        if self.progress is None:
            return None
        cfg = self.progress.cfg
        now = self._shadow_counts()
        compared, agreed, shadowed, errors = (a - b for a, b in zip(now, self.mark,
                                                                      strict=True))
        return Reading(self.group(cfg.to).step, self.group(cfg.from_).step,
                       compared, agreed, shadowed, errors)


class Ticket:
    """One inference call of a routed model, from `Rollouts.open` until its client's
    answer (and its shadow's, when it has one) is in."""

    __slots__ = ("body", "closed", "counted", "group", "model", "primary", "protocol",
                 "service", "shadow_node", "shadow_out", "shadow_start", "shadowing", "start")

    def __init__(self, service: Rollouts, model: Routed, group: str, protocol: str,
                 body: bytes) -> None:
        self.service = service
        self.model = model
        self.group = group
        self.protocol = protocol
        self.body = body
        self.start = time.perf_counter()
        self.closed = False
        self.shadowing = False
        self.shadow_node = ""
        self.shadow_start = 0.0
        self.primary: tuple[int, bytes | None, float | None] | None = None
        self.shadow_out: tuple[int, bytes | None, float] | None = None

    def answered(self, status: int, body: bytes | None, hit: bool) -> None:
        """The client's answer (`status` 0: none; 499: the client left). Called once by
        the front; later calls are ignored."""
        if self.closed:
            return
        self.closed = True
        if status == CLIENT_CLOSED:
            return                                  # neither the group's fault nor a pair
        seconds = None if hit else time.perf_counter() - self.start
        self.model.group(self.group).record(status, seconds, hit)
        if self.shadowing:
            self.primary = (status, body, seconds)
            if self.shadow_out is not None:
                self.service.pair(self)

    def shadow_done(self, fut: asyncio.Future[Any]) -> None:
        """The shadow's attempt ended (called by the transport, once)."""
        seconds = time.perf_counter() - self.shadow_start
        shadow = self.model.shadow
        if shadow is not None:
            shadow.inflight = max(shadow.inflight - 1, 0)
        status, body = 0, None
        if not fut.cancelled() and fut.exception() is None:
            status, body = self.service.reply(self.protocol, fut.result())
        self.shadow_out = (status, body, seconds)
        if self.primary is not None:
            self.service.pair(self)
        elif self.closed and shadow is not None:    # the client left: no pair
            shadow.stats.skip("client_left")


class Rollouts:
    """See the module docstring."""

    def __init__(self, cfg: Config, pool: NodePool, load: Load) -> None:
        self.pool = pool
        self._load = load
        self._last_shed = (0, -1e9)          # (shed count seen, when it last grew)
        self.models: dict[str, Routed] = {}
        self.reconfigure(cfg)

    def reconfigure(self, cfg: Config) -> None:
        """Apply a validated config in one step (nothing awaited, nothing dropped)."""
        now = time.monotonic()
        models: dict[str, Routed] = {}
        for name, mcfg in cfg.models.items():
            if not routed(mcfg):
                continue
            known = self.models.get(name)
            if known is None:
                known = Routed(name, mcfg, now)
            else:
                known.reconfigure(mcfg, now)
            models[name] = known
        self.models = models

    # -- the call path -------------------------------------------------------------

    def route_rest(self, call: Call, req: Any) -> None:
        """Give a REST call its group (`req`: the front's parsed request)."""
        m = self.models.get(call.model)
        if m is not None:
            def header(name: str) -> str | None:
                value = req.header(name.encode("latin-1"))
                return None if value is None else value.decode("latin-1")
            self._route(m, call, header)

    def route_grpc(self, call: Call, metadata: Any) -> None:
        """Give a gRPC call its group (`metadata`: the invocation metadata)."""
        m = self.models.get(call.model)
        if m is not None:
            found = {k.lower(): v for k, v in metadata or () if isinstance(v, str)}
            self._route(m, call, found.get)

    def _healthy(self, m: Routed, now: float) -> frozenset[str]:
        """The model's groups with a node that is available and has it AVAILABLE
        (recomputed at most every HEALTH_TTL_S)."""
        if now - m.healthy_at > HEALTH_TTL_S:
            m.healthy_at = now
            model = m.name
            m.healthy = frozenset(n.group for n in self.pool
                                  if n.available(now) and model in n.latest)
        return m.healthy

    def _route(self, m: Routed, call: Call, headers: Headers) -> None:
        healthy = self._healthy(m, time.monotonic())
        api_key = _api_key(headers) if m.router.sticky_api_key else None
        choice = m.router.choose(headers, healthy, api_key)
        call.group = choice.group
        if choice.wanted != choice.group:
            m.group(choice.wanted).diverted()

    def open(self, call: Call, transport: Transport[Any], protocol: str, verb: str | None,
             body: bytes | None) -> Ticket | None:
        """A ticket for an inference call that `route_*` gave a group (None for other
        calls); starts its shadow when the model shadows this call."""
        m = self.models.get(call.model)
        if m is None or call.group is None or verb is None:
            return None
        ticket = Ticket(self, m, call.group, protocol, body or b"")
        shadow = m.shadow
        if (shadow is not None and verb == "predict" and call.group != shadow.cfg.group
                and shadow.selected()):
            self._shadow(ticket, shadow, call, transport)
        return ticket

    def _shadow(self, ticket: Ticket, shadow: Shadow, call: Call,
                transport: Transport[Any]) -> None:
        now = time.monotonic()
        reason = self._blocked(shadow, now)
        node = None
        if reason is None:
            node = self.pool.pick(call.units, (), call.model, None, usable=transport.usable,
                                  group=shadow.cfg.group)
            reason = "no_node" if node is None else None
        if reason is not None or node is None:
            shadow.stats.skip(reason or "no_node")
            return
        timeout = shadow.cfg.timeout_s
        copy = Call(call.model, None, call.label, call.pinned, call.units,
                    Deadline(now + timeout), call.payload, idempotent=call.idempotent,
                    rows=call.rows, group=shadow.cfg.group)
        ticket.shadowing, ticket.shadow_node = True, node.name
        ticket.shadow_start = time.perf_counter()
        try:
            transport.send(node, copy, timeout, ticket.shadow_done)
        except Exception as exc:                     # e.g. a node without a gRPC address
            ticket.shadowing = False
            shadow.stats.skip("send_failed")
            log.debug("shadow to %s not sent: %r", node.name, exc)
            return
        shadow.inflight += 1

    def _blocked(self, shadow: Shadow, now: float) -> str | None:
        """Why no shadow may start now (shedding first, then the cap, then the budget)."""
        inflight, limit, shed = self._load()
        if shed != self._last_shed[0]:
            self._last_shed = (shed, now)
        if inflight >= limit * SHADOW_HEADROOM or now - self._last_shed[1] < SHED_QUIET_S:
            return "shedding"
        if shadow.inflight >= shadow.cfg.max_inflight:
            return "cap"
        if not shadow.budget.take(now):
            return "budget"
        return None

    async def watch(self, ticket: Ticket | None, outcome: Awaitable[Outcome[Any]]
                    ) -> Outcome[Any]:
        """The gRPC front's call, with its ticket told how it ended."""
        if ticket is None:
            return await outcome
        try:
            out = await outcome
        except LbError as exc:
            ticket.answered(exc.status, None, False)
            raise
        except asyncio.CancelledError:
            ticket.answered(CLIENT_CLOSED, None, False)
            raise
        except Exception:
            ticket.answered(500, None, False)
            raise
        status = grpc_status(out.answer.code)
        ticket.answered(status, out.answer.body if status == 200 else None,
                        out.x_cache is XCache.HIT)
        return out

    # -- pairs ---------------------------------------------------------------------

    @staticmethod
    def reply(protocol: str, answer: Any) -> tuple[int, bytes | None]:
        """(status, body of a 200) of a node's answer to a shadow."""
        status = grpc_status(answer.code) if protocol == "grpc" else int(answer.status)
        return status, (answer.body if status == 200 else None)

    def pair(self, t: Ticket) -> None:
        """Both answers are in: compare them and count the pair."""
        shadow = t.model.shadow
        assert t.primary is not None and t.shadow_out is not None
        if shadow is None:                           # a reload removed the shadow
            return
        p_status, p_body, p_s = t.primary
        s_status, s_body, s_s = t.shadow_out
        comparison = None
        if p_body is not None and s_body is not None:
            read = compare.grpc_outputs if t.protocol == "grpc" else compare.rest_outputs
            a, b = read(p_body), read(s_body)
            comparison = (compare.compare(a, b) if a is not None and b is not None
                          else compare.Comparison(mismatch="an answer is not a readable "
                                                           "predict reply"))
        digest = hashlib.blake2b(t.body, digest_size=16).hexdigest()
        shadow.stats.record(time.monotonic(), time.time(),
                            Pair(p_status, s_status, comparison, p_s, s_s, digest,
                                 t.protocol, t.shadow_node))

    # -- rollouts ------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Look at every rollout once; move the splits that change."""
        for m in self.models.values():
            reading = m.reading()
            if m.progress is not None and reading is not None \
                    and m.progress.evaluate(reading, now):
                self._moved(m)

    def _moved(self, m: Routed) -> None:
        assert m.progress is not None
        m.router.set_shares(m.progress.shares())
        m.begin_step()
        text = m.progress.events[-1][1] if m.progress.events else ""
        log.info("rollout of %s: %s", m.name, text)

    def control(self, model: str, action: str) -> dict[str, Any]:
        """Pause, resume or abort a model's rollout; KeyError when it has none,
        `Refused` when the action does not apply now."""
        m = self.models.get(model)
        if m is None or m.progress is None:
            raise KeyError(model)
        now = time.monotonic()
        if action == "pause":
            m.progress.pause(now)
        elif action == "resume":
            m.progress.resume(now)
        elif action == "abort":
            m.progress.abort(now)
        else:
            raise Refused(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
        self._moved(m)
        return m.progress.as_dict(now, time.time(), m.reading())

    async def run(self) -> None:
        """Tick every `TICK_S` until cancelled; a failing tick is logged, not fatal."""
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.tick(time.monotonic())
            except Exception:
                log.exception("rollout tick failed")

    # -- reading -------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """`/stats` "routing": per routed model, its groups, shadow and rollout."""
        now, wall = time.monotonic(), time.time()
        return {name: self._model_doc(m, now, wall) for name, m in self.models.items()}

    def _model_doc(self, m: Routed, now: float, wall: float) -> dict[str, Any]:
        router = m.router
        healthy = self._healthy(m, now)
        effective = router.effective_shares(healthy)
        groups = {}
        for g in router.groups():
            st = m.groups.get(g)
            groups[g] = {"share": dict(router.shares).get(g, 0.0),
                         "effective": effective.get(g, 0.0), "healthy": g in healthy,
                         "routed": router.routed.get(g, 0),
                         "diverted": router.diverted.get(g, 0),
                         "answered": st.answered if st else 0,
                         "errors": st.errors if st else 0}
        sticky = m.cfg.sticky_by
        doc: dict[str, Any] = {
            "groups": groups, "matched": router.matched,
            "degraded": [g for g, s in router.shares if s > 0 and g not in healthy],
            "sticky_by": None if sticky is None else (
                "api_key" if sticky.api_key else f"header {sticky.header}"),
            "shadow": None, "rollout": None}
        if m.shadow is not None:
            doc["shadow"] = {"group": m.shadow.cfg.group, "share": m.shadow.cfg.share,
                             "inflight": m.shadow.inflight, **m.shadow.stats.as_dict(now)}
        if m.progress is not None:
            doc["rollout"] = m.progress.as_dict(now, wall, m.reading())
        return doc

    def shadow_doc(self, model: str) -> dict[str, Any] | None:
        """`GET /shadow/M` on the admin port: the shadow's figures and the sample of
        disagreeing inputs (blake2b-128 of the request body, row indices, classes)."""
        m = self.models.get(model)
        if m is None or m.shadow is None:
            return None
        sh = m.shadow
        return {"model": model, "group": sh.cfg.group, "share": sh.cfg.share,
                "inflight": sh.inflight, **sh.stats.as_dict(time.monotonic()),
                "input_hash": "blake2b, 16-byte digest, of the request body as sent",
                "disagreements": list(sh.stats.sample)}

    def agreement_counts(self) -> Iterator[tuple[str, int, int]]:
        """(model, rows compared, rows agreed) since start, per shadowed model."""
        for name, m in self.models.items():
            if m.shadow is not None:
                yield (name, *m.shadow.stats.agreement_counts())
