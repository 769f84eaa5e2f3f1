"""The last five minutes of the proxy, one point per second: `GET /history`, the dashboard.

Owned by the composition root (`lb.server.Proxy.history`) and handed to its
users: the fronts' `lb.request.observe.Recorder.record` (`History.observe`, once per
finished client request, REST and gRPC), the task `History.run` that
`lb.admin.app.serve_admin_side` starts and `Proxy.stop` cancels (`tick`, once a
second, with the /stats document), and `lb.admin.app` (`doc`, for `GET /history`).

Guarantees:

* `observe` is O(1): a dict lookup, two counters and one slot of a per-second
  sample list (a series object is made only for a node's first request of a
  second). The list is bounded by `RESERVOIR`: past it, Algorithm R (one random
  draw per request) keeps a uniform sample of the second, so memory does not
  grow with the request rate.
* `tick` closes the second and stores one point: requests/s, errors/s (replies
  of 500 and up: the proxy or a node failed; 4xx are the client's) and p50/p99
  latency, exact over that second's samples, for the whole proxy and per node;
  per node also in-flight, share of the requests a node answered and state
  (from /stats); the cache hit rate of that second (deltas of /stats' cache
  counters; None when there was no lookup). It also records events: node state
  changes, nodes added or removed, config reloads and rejected reloads, and
  rollout steps (lb.rollout); per shadowed model, the argmax agreement of the
  rows compared in that second (from /stats "routing").
* At most `WINDOW` points are kept, and the events of that window (at most
  `MAX_EVENTS`); older ones fall off.
* Pure logic with time passed in; only `run` reads clocks. `run` stamps points
  with a wall clock anchored at start and advanced by the monotonic clock, so a
  stepped system clock cannot reorder the ring.

Several processes (`serve --workers N`): each worker only observes; the
supervisor's `lb.fleet` takes each worker's open second (`drain`, as a
`Second` per series), merges them (`merge_seconds`: counts summed, the
reservoirs resampled in proportion to each one's count, so exact while the
merged second holds at most `RESERVOIR` requests) and closes the second of
its own ring with the merged /stats (`close`).

A point: {"t", "rps", "eps", "p50_ms", "p99_ms", "hit_rate", "direct_rps" (answered
without a node), "inflight", "memory": {"rss_bytes", "cache_bytes",
"cache_budget_bytes"} (None without /stats "memory"), "nodes": {name: {"rps",
"eps", "p50_ms", "p99_ms", "share", "inflight", "state"}}, "shadow": {model:
agreement or None}}; latencies are None in a second without requests, and a node
that left the config but still answered has inflight and state None. An event:
{"t", "kind" (state | added | removed | reload | reload_failed | rollout), "node",
"state", "text"}.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("lb.admin.history")

WINDOW = 300                 # points kept: five minutes at one a second
RESERVOIR = 2000             # latency samples kept per series and second
MAX_EVENTS = 500             # a flapping node cannot grow the event list without bound
ERROR_STATUS = 500
MAX_GAP_S = 60.0             # a longer (or negative) gap between ticks is not a rate base

Stats = dict[str, Any]
Point = dict[str, Any]
Event = dict[str, Any]


class Second:
    """One series' requests within the open second."""

    __slots__ = ("count", "errors", "samples")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.samples: list[float] = []

    def as_list(self) -> list[Any]:
        """[count, errors, samples]: how a worker sends it to the supervisor."""
        return [self.count, self.errors, self.samples]


def second_of(raw: list[Any]) -> Second:
    """The inverse of `Second.as_list` (from a worker's JSON)."""
    acc = Second()
    acc.count, acc.errors, acc.samples = int(raw[0]), int(raw[1]), [float(x) for x in raw[2]]
    return acc


def merge_seconds(parts: list[Second]) -> Second:
    """One series' second of several processes: counts summed; each part's samples (a
    uniform sample of its count) resampled in proportion to its count when the union
    exceeds RESERVOIR, so the result is a uniform sample of all the requests."""
    out = Second()
    for part in parts:
        out.count += part.count
        out.errors += part.errors
    if sum(len(p.samples) for p in parts) <= RESERVOIR:
        for part in parts:
            out.samples.extend(part.samples)
        return out
    for part in parts:
        want = min(len(part.samples), round(RESERVOIR * part.count / out.count))
        out.samples.extend(random.sample(part.samples, want))
    return out


def _ms(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile in milliseconds; None without samples."""
    if not ordered:
        return None
    rank = max(0, math.ceil(q * len(ordered)) - 1)
    return round(ordered[rank] * 1000.0, 3)


def _series(acc: Second, elapsed: float) -> dict[str, Any]:
    ordered = sorted(acc.samples)
    return {"rps": round(acc.count / elapsed, 3), "eps": round(acc.errors / elapsed, 3),
            "p50_ms": _ms(ordered, 0.50), "p99_ms": _ms(ordered, 0.99)}


def node_state(entry: dict[str, Any]) -> str:
    """healthy / unhealthy / ejected of a /stats node entry (older entries lack "state")."""
    state = entry.get("state")
    if isinstance(state, str):
        return state
    return "healthy" if entry.get("healthy") else "unhealthy"


class History:
    """The ring of points and events of one proxy process."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._points: deque[Point] = deque(maxlen=WINDOW)
        self._events: deque[Event] = deque(maxlen=MAX_EVENTS)
        self._total = Second()
        self._by_node: dict[str, Second] = {}
        self._last_t: float | None = None
        self._states: dict[str, str] | None = None     # None until the first tick
        self._cache: tuple[int, int] | None = None     # (hits, misses) at the last tick
        self._config: tuple[int, int] | None = None    # (reloads, failures) at the last tick
        self._shadow: dict[str, tuple[int, int]] = {}  # model -> shadow (compared, agreed)
        self._rollouts: dict[str, int] = {}            # model -> rollout transitions

    # -- hot path ---------------------------------------------------------------

    def observe(self, node: str, seconds: float, status: int) -> None:
        """One finished client request; node "" when no node answered (e.g. a cache hit)."""
        acc = self._by_node.get(node)
        if acc is None:
            acc = self._by_node[node] = Second()
        error = status >= ERROR_STATUS
        for each in (self._total, acc):         # the whole, and the node's series
            each.count += 1
            if error:
                each.errors += 1
            samples = each.samples
            if len(samples) < RESERVOIR:
                samples.append(seconds)
            else:                               # a uniform reservoir of the second
                slot = int(random.random() * each.count)
                if slot < RESERVOIR:
                    samples[slot] = seconds

    # -- once a second ----------------------------------------------------------

    def drain(self) -> tuple[Second, dict[str, Second]]:
        """The open second (the whole, and per node) handed over; a new one opens."""
        total, by_node = self._total, self._by_node
        self._total = Second()
        self._by_node = {}
        return total, by_node

    def tick(self, now_wall: float, stats: Stats) -> Point:
        """Close the second ending at `now_wall`; `stats` is the /stats document now."""
        total, by_node = self.drain()
        return self.close(now_wall, stats, total, by_node)

    def close(self, now_wall: float, stats: Stats, total: Second,
              by_node: dict[str, Second]) -> Point:
        """Store the point of a second whose requests are `total` and `by_node`."""
        gap = now_wall - self._last_t if self._last_t is not None else 0.0
        elapsed = gap if 0.0 < gap <= MAX_GAP_S else self.interval_s
        nodes = {str(n["name"]): n for n in stats.get("nodes", ())}
        self._record_events(now_wall, nodes, stats.get("config") or {})
        point: Point = {"t": round(now_wall, 3), **_series(total, elapsed),
                        "hit_rate": self._hit_rate(stats.get("cache") or {})}
        direct = by_node.get("")
        point["direct_rps"] = round(direct.count / elapsed, 3) if direct else 0.0
        point["inflight"] = stats.get("inflight")
        memory = stats.get("memory")
        point["memory"] = None if not isinstance(memory, dict) else {
            k: memory.get(k) for k in ("rss_bytes", "cache_bytes", "cache_budget_bytes")}
        point["nodes"] = self._node_points(nodes, by_node, elapsed)
        routing = stats.get("routing") or {}
        point["shadow"] = self._agreement(routing)
        self._rollout_events(now_wall, routing)
        self._points.append(point)
        while self._events and self._events[0]["t"] < self._points[0]["t"]:
            self._events.popleft()
        self._last_t = now_wall
        return point

    def _node_points(self, nodes: dict[str, Stats], by_node: dict[str, Second],
                     elapsed: float) -> dict[str, Any]:
        """Per node: the /stats nodes and any other node that answered this second
        (a removed node finishing its requests)."""
        served = sum(acc.count for name, acc in by_node.items() if name)
        names = list(nodes) + [n for n in by_node if n and n not in nodes]
        out: dict[str, Any] = {}
        for name in names:
            acc = by_node.get(name) or Second()
            entry = nodes.get(name)
            out[name] = {**_series(acc, elapsed),
                         "share": round(acc.count / served, 4) if served else 0.0,
                         "inflight": entry.get("inflight", 0) if entry else None,
                         "state": node_state(entry) if entry else None}
        return out

    def _hit_rate(self, cache: Stats) -> float | None:
        now = (int(cache.get("hits", 0)), int(cache.get("misses", 0)))
        before, self._cache = self._cache, now
        if before is None:
            return None
        hits, misses = now[0] - before[0], now[1] - before[1]
        if hits < 0 or misses < 0 or hits + misses == 0:
            return None
        return round(hits / (hits + misses), 4)

    def _agreement(self, routing: Stats) -> dict[str, float | None]:
        """Per shadowed model (lb.rollout): the argmax agreement of the rows compared in
        this second, from the totals in /stats "routing"; None when none were."""
        out: dict[str, float | None] = {}
        seen: dict[str, tuple[int, int]] = {}
        for model, doc in routing.items():
            shadow = doc.get("shadow")
            if not shadow:
                continue
            totals = shadow["totals"]
            now = seen[model] = (int(totals["class_rows"]), int(totals["agreed"]))
            before = self._shadow.get(model)
            rows = now[0] - before[0] if before is not None else 0
            out[model] = (round((now[1] - before[1]) / rows, 4)
                          if before is not None and rows > 0 else None)
        self._shadow = seen
        return out

    def _rollout_events(self, t: float, routing: Stats) -> None:
        """A rollout's steps, aborts, pauses since the last tick, as events."""
        seen: dict[str, int] = {}
        for model, doc in routing.items():
            rollout = doc.get("rollout")
            if not rollout:
                continue
            n = seen[model] = int(rollout["transitions"])
            before = self._rollouts.get(model)
            if before is not None and n > before:
                for e in rollout["events"][-(n - before):]:
                    self._event(t, "rollout", None, f"rollout of {model}: {e['text']}")
        self._rollouts = seen

    def _record_events(self, t: float, nodes: dict[str, Stats], config: Stats) -> None:
        states = {name: node_state(n) for name, n in nodes.items()}
        counts = (int(config.get("reloads", 0)), int(config.get("failures", 0)))
        before, self._states = self._states, states
        before_counts, self._config = self._config, counts
        if before is None or before_counts is None:
            return                                  # the first tick is the baseline
        if counts[0] > before_counts[0]:
            self._event(t, "reload", None, "config reloaded")
        if counts[1] > before_counts[1]:
            self._event(t, "reload_failed", None,
                        f"config reload rejected: {config.get('last_error') or '?'}")
        for name, state in states.items():
            old = before.get(name)
            if old is None:
                self._event(t, "added", name, f"{name} added ({state})", state)
            elif old != state:
                self._event(t, "state", name, f"{name}: {old} → {state}", state)
        for name in before:
            if name not in states:
                self._event(t, "removed", name, f"{name} removed")

    def _event(self, t: float, kind: str, node: str | None, text: str,
               state: str | None = None) -> None:
        self._events.append({"t": round(t, 3), "kind": kind, "node": node, "state": state,
                             "text": text})

    # -- readers ----------------------------------------------------------------

    def doc(self, since: float | None = None) -> dict[str, Any]:
        """The `GET /history` document: all points and events, or those after `since`."""
        points = [p for p in self._points if since is None or p["t"] > since]
        events = [e for e in self._events if since is None or e["t"] > since]
        return {"interval_s": self.interval_s, "window_s": WINDOW * self.interval_s,
                "pid": os.getpid(), "now": self._last_t, "points": points, "events": events}

    async def run(self, stats_fn: Callable[[], Stats], interval_s: float = 1.0) -> None:
        """Tick every `interval_s` until cancelled; a failing tick is logged, not fatal."""
        self.interval_s = interval_s
        wall0, mono0 = time.time(), time.monotonic()
        next_at = mono0 + interval_s
        failing = False
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            now = time.monotonic()
            next_at += interval_s
            if next_at <= now:                      # after a stall: no burst of ticks
                next_at = now + interval_s
            try:
                self.tick(wall0 + (now - mono0), stats_fn())
                failing = False
            except Exception:
                if not failing:
                    log.exception("history tick failed; retrying every %.1f s", interval_s)
                failing = True
