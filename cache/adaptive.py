"""Adaptive bypass: a model whose requests do not repeat stops paying for the cache.

Called by `ResultCache` (cache.result_cache): `decide` once per cacheable
request, `observe` after every lookup, `sampled` with the key of a SAMPLE
request. Pure and synchronous, O(1) per call, no I/O; wall time comes from the
injected `clock`, read only when a model changes state.

Per model (pinned by config `models.M.cache`: "on" never bypasses, "off"
always does, "auto" adapts; `enabled: false` makes "auto" behave as "on"):

* ON: `decide` says USE; lookups are counted in windows of `window` lookups
  (row lookups count every row). A window whose hit rate is below
  `min_hit_rate` is a strike; `patience` strikes in a row (default 2: the
  first window after turning on fills a cold cache) turn the model to BYPASS.
* BYPASS: `decide` says BYPASS (skip key, lookup and fill), except for 1 in
  `sample_every` requests on average (random gaps, so periodic traffic cannot
  alias with the sampling) which are SAMPLE: the caller computes the key and
  hands it to `sampled`, which only remembers its hash (no store access). A
  sampled key already among the samples of the look-back (the current and the
  previous window of `window` samples) is a would-be hit; R = seen / samples.

What R estimates. Sampling 1 request in k (p = 1/k) thins reuse: a key asked
m times in the look-back yields s ~ Binomial(m, p) samples, all but the first
"seen", and p²(m − 1) ≤ E[(s − 1)⁺] = pm − 1 + (1 − p)^m ≤ p(m − 1). Summed
over keys and divided by the pN samples expected of N requests:
p·H ≤ R ≤ H (in expectation), H being the hit rate of a cache that holds the
whole look-back, Σ(m − 1)/N. R is near H when the reuse comes from keys asked
many times per k requests (hot keys), near p·H when every key repeats only a
few times (every request sent twice: H = 1/2, R ≈ p/2). Comparing R with the
threshold would keep such a model bypassed forever; comparing k·R would keep
turning on models whose hot keys give real but too little reuse; hence:

* R ≥ min_hit_rate: reuse is certainly there; turn ON at once (as soon as the
  count of seen samples reaches min_hit_rate · window, mid-window).
* R < p · min_hit_rate (in practice: no sampled key seen twice): H is below
  the threshold; stay in BYPASS.
* in between the true rate is anywhere from R to k·R: the model turns ON as a
  probe, and the real lookups measure it. A probe that ends in BYPASS again
  doubles the number of verdicts to wait before the next one (1, 2, … 16);
  a probe whose measured window clears the threshold resets that back-off.

H itself is an upper bound of what a real cache (finite bytes, TTL) achieves,
so every ON decision is checked by measured windows; BYPASS decisions are
only made on measured hit rates.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

log = logging.getLogger("cache.adaptive")

AUTO, ON, OFF = "auto", "on", "off"
MAX_MODELS = 256            # as ResultCache: models past it are never bypassed
MAX_BACKOFF = 16
Pin = Callable[[str], str] | Mapping[str, str] | None


class Decision(IntEnum):
    """What the caller does with one cacheable request."""

    USE = 0         # key, lookup, fill as usual
    BYPASS = 1      # no key, no lookup, no fill (X-Cache: BYPASS)
    SAMPLE = 2      # as BYPASS, but compute the key and pass it to `sampled`


USE, BYPASS, SAMPLE = Decision.USE, Decision.BYPASS, Decision.SAMPLE


@dataclass(frozen=True, slots=True)
class AdaptiveParams:
    """The knobs (config `cache.adaptive`); see the module docstring."""

    enabled: bool = True
    min_hit_rate: float = 0.01
    window: int = 1000
    sample_every: int = 64
    patience: int = 2

    def __post_init__(self) -> None:
        if not (0 <= self.min_hit_rate <= 1 and self.window >= 1 and self.sample_every >= 1
                and self.patience >= 1):
            raise ValueError(f"invalid adaptive cache parameters: {self}")


@dataclass(slots=True)
class _Model:
    pin: str
    bypass: bool = False
    since: float = 0.0
    lookups: int = 0            # ON: the current window
    hits: int = 0
    strikes: int = 0
    measured: float | None = None   # hit rate of the last full ON window
    gap: int = 0                # BYPASS: requests until the next SAMPLE
    samples: int = 0            # BYPASS: the current window
    seen: int = 0
    estimated: float | None = None  # R of the last full BYPASS window
    recent: set[int] = field(default_factory=set)
    older: set[int] = field(default_factory=set)
    probing: bool = False
    backoff: int = 1
    wait: int = 0
    sampled: int = 0


class AdaptiveController:
    """Per-model ON/BYPASS state machine; see the module docstring."""

    def __init__(self, params: AdaptiveParams | None = None, pin: Pin = None,
                 clock: Callable[[], float] = time.time, seed: int | None = None) -> None:
        self._params = params or AdaptiveParams()
        self._pin = pin
        self._clock = clock
        self._rng = random.Random(seed)
        self._models: dict[str, _Model] = {}

    # -- the hot path ------------------------------------------------------------

    def decide(self, model: str) -> Decision:
        s = self._models.get(model)
        if s is None:
            s = self._add(model)
            if s is None:
                return USE
        if not s.bypass:
            return USE
        s.gap -= 1
        if s.gap > 0 or s.pin == OFF:
            return BYPASS
        s.gap = self._next_gap()
        s.sampled += 1
        return SAMPLE

    def using(self, model: str) -> bool:
        """Whether `decide` would answer USE now, without counting anything (the
        proxy's synchronous hit path asks this before it peeks)."""
        s = self._models.get(model)
        return s is not None and not s.bypass

    def observe(self, model: str, hits: int, lookups: int = 1) -> None:
        """`lookups` keys looked up for `model`, `hits` of them found."""
        s = self._models.get(model)
        if s is None or s.bypass or s.pin != AUTO or not self._params.enabled:
            return
        s.lookups += lookups
        s.hits += hits
        if s.lookups >= self._params.window:
            self._verdict_on(model, s)

    def sampled(self, model: str, key: str) -> None:
        """The key of a SAMPLE request (only its hash is kept)."""
        s = self._models.get(model)
        if s is None or not s.bypass or s.pin != AUTO:
            return                                  # the state changed meanwhile
        h = hash(key)
        s.samples += 1
        if h in s.recent or h in s.older:
            s.seen += 1
        s.recent.add(h)
        p = self._params
        if s.seen >= max(1, math.ceil(p.min_hit_rate * p.window)):
            s.estimated = s.seen / s.samples
            self._turn(model, s, bypass=False, why=f"sampled reuse {s.estimated:.4f}")
        elif s.samples >= p.window:
            self._verdict_bypass(model, s)

    # -- views ---------------------------------------------------------------------

    def state(self, model: str) -> dict[str, Any] | None:
        """None if unseen, else {"state": "on" | "bypass", "since": wall time of the
        last change, "pinned": bool, "window_hit_rate": the latest window's rate
        (measured when on, the sampled estimate R when bypassed; after a change,
        the rate that caused it until the new state's first window; None before
        any), "window_estimated": whether that rate is R, "samples", "probe_backoff"}."""
        s = self._models.get(model)
        if s is None:
            return None
        if s.bypass:
            estimated = s.estimated is not None
        else:
            estimated = s.measured is None and s.estimated is not None
        return {"state": "bypass" if s.bypass else "on", "since": s.since,
                "pinned": s.pin != AUTO,
                "window_hit_rate": s.estimated if estimated else s.measured,
                "window_estimated": estimated, "samples": s.sampled,
                "probe_backoff": s.backoff}

    def states(self) -> dict[str, dict[str, Any]]:
        """state() of every model seen (for /stats and /metrics)."""
        return {m: v for m in self._models if (v := self.state(m)) is not None}

    def reconfigure(self, params: AdaptiveParams | None = None, pin: Pin = None) -> None:
        """New parameters and pins (config reload); states are kept, pins re-read."""
        if params is not None:
            self._params = params
        self._pin = pin if pin is not None else self._pin
        for model, s in self._models.items():
            self._apply_pin(model, s, self._read_pin(model))

    # -- transitions -------------------------------------------------------------------

    def _add(self, model: str) -> _Model | None:
        if len(self._models) >= MAX_MODELS:
            return None
        s = _Model(pin=AUTO, since=self._clock())
        self._models[model] = s
        self._apply_pin(model, s, self._read_pin(model))
        return s

    def _read_pin(self, model: str) -> str:
        pin = self._pin
        if pin is None:
            return AUTO
        value = pin(model) if callable(pin) else pin.get(model, AUTO)
        return value if value in (ON, OFF) else AUTO

    def _apply_pin(self, model: str, s: _Model, pin: str) -> None:
        was, s.pin = s.pin, pin
        if pin == AUTO and self._params.enabled and was == AUTO:
            return                                  # keep what the model earned
        bypass = pin == OFF                         # "on", "auto" after a pin, disabled: ON
        if bypass != s.bypass:
            self._turn(model, s, bypass=bypass, why=f"cache: {pin}")

    def _verdict_on(self, model: str, s: _Model) -> None:
        rate = s.hits / s.lookups
        s.measured = rate
        s.lookups = s.hits = 0
        if rate >= self._params.min_hit_rate:
            s.strikes = 0
            if s.probing:
                s.probing, s.backoff = False, 1
            return
        s.strikes += 1
        if s.strikes >= self._params.patience:
            if s.probing:
                s.probing = False
                s.backoff = min(2 * s.backoff, MAX_BACKOFF)
                s.wait = s.backoff
            self._turn(model, s, bypass=True, why=f"hit rate {rate:.4f}")

    def _verdict_bypass(self, model: str, s: _Model) -> None:
        p = self._params
        rate = s.seen / s.samples
        s.estimated = rate
        s.older, s.recent = s.recent, set()
        s.samples = s.seen = 0
        if rate >= p.min_hit_rate:
            self._turn(model, s, bypass=False, why=f"sampled reuse {rate:.4f}")
        elif rate * p.sample_every >= p.min_hit_rate:
            if s.wait > 0:
                s.wait -= 1
                return
            s.probing = True
            self._turn(model, s, bypass=False, why=f"probe: sampled reuse {rate:.4f}")

    def _turn(self, model: str, s: _Model, *, bypass: bool, why: str) -> None:
        if bypass:
            s.estimated = None          # until the first sampled window: the measured rate
        else:
            s.measured = None           # until the first measured window: the estimate
        s.bypass = bypass
        s.since = self._clock()
        s.lookups = s.hits = s.strikes = 0
        s.samples = s.seen = 0
        s.recent, s.older = set(), set()
        s.gap = self._next_gap()
        log.info("cache for model %s: %s (%s)", model, "bypass" if bypass else "on", why)

    def _next_gap(self) -> int:
        k = self._params.sample_every
        return 1 if k <= 1 else self._rng.randint(1, 2 * k - 1)
