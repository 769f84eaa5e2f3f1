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

Shadows (`lb.rollout.shadow`): `open` may start a copy of a predict call to
the model's shadow group; the `Ticket` compares the two answers once both are
in. The client never waits for a shadow.

Rollouts: `run` looks at each rollout every `TICK_S` (`lb.rollout.progress`)
and moves the model's split when a step changes; every step starts new
counters. Pause, resume and abort come from the admin port (`control`).

Guarantees: no await on a call's path; a shadow's failure never reaches the
client; everything here runs on the event loop; a reload keeps counters,
sequences, shadows in flight and rollout state for what it does not change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterator
from typing import Any

from lb.config import Config, ModelConfig
from lb.errors import LbError
from lb.pool.nodes import NodePool
from lb.request.call import Call, Outcome, Transport, XCache
from lb.rollout import shadow as shadows
from lb.rollout.progress import Progress, Reading, Refused
from lb.rollout.settings import DEFAULT_GROUP, routed
from lb.rollout.shadow import CLIENT_CLOSED, Load, Shadow, Shedding, grpc_status
from lb.rollout.shadow import Ticket as Ticket  # the fronts' handle on a call
from lb.rollout.split import Headers, ModelRouter, Rule
from lb.rollout.windows import GroupStats

log = logging.getLogger("lb.rollout")

TICK_S = 0.25                # rollouts are looked at this often
HEALTH_TTL_S = 0.1           # a model's healthy groups are recomputed at most this often
ACTIONS = ("pause", "resume", "abort")


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


class Rollouts:
    """See the module docstring."""

    def __init__(self, cfg: Config, pool: NodePool, load: Load) -> None:
        self.pool = pool
        self.shedding = Shedding(load)
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
        ticket = Ticket(m, call.group, protocol, body or b"")
        shadow = m.shadow
        if (shadow is not None and verb == "predict" and call.group != shadow.cfg.group
                and shadow.selected()):
            shadows.send(ticket, shadow, call, transport, self.pool, self.shedding)
        return ticket

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
