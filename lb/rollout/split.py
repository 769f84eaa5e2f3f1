"""Which node group answers a call: header match, then sticky hash, then the split. Pure.

Called by `lb.rollout.service.Rollouts.route` once per call of a routed model
(one with `split`, `match`, `sticky_by`, `shadow` or `rollout`), with a way to
read the request's headers and the set of the model's groups that have a
healthy node. Nothing here reads a clock or a socket.

How a group is chosen:
1. `match`: the first rule whose header equals its value names the group,
   whatever the split (testers, internal clients);
2. a point u in [0, 1): with `sticky_by`, a hash of the header's value (or the
   API key), the same for the same value in every process; otherwise the next
   point of a golden-ratio sequence (u += 0.618... mod 1), whose points fill
   [0, 1) evenly in any run of consecutive calls (low discrepancy: over 1,000
   calls each group's count is within a few calls of its share, where random
   draws would stray by ±0.7 points for a 5 % share);
3. the group whose share range holds u. The ranges are laid out in a fixed
   order (the split's order; a rollout's `to` group first), so a change of
   shares between two groups moves exactly the clients in the range that
   changed hands, the least any scheme can move (Envoy's weighted clusters
   with a hash do the same). With more than two groups, a change between
   groups that are not neighbours in the list also shifts the ones between.
4. When that group has no healthy node, the call takes u in the ranges of the
   healthy groups instead (their shares scaled up, order kept), and the group
   is counted as `diverted`. When no group is healthy, the first choice stands
   (the pool then tries that group's nodes anyway, as it does without groups).

Guarantees: `choose` never raises and always returns a group the model names;
counts per group (`routed`, `diverted`, `matched`) are exact.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

GOLDEN = 0.6180339887498949          # (sqrt(5) - 1) / 2
_HASH_PERSON = b"tfslb-sticky"
_SPAN = float(1 << 64)

Headers = Callable[[str], "str | None"]       # lower-case name -> value, None when absent


def hash_unit(value: str) -> float:
    """A point in [0, 1) for a sticky value: the same in every process and version."""
    digest = hashlib.blake2b(value.encode("utf-8", "surrogateescape"), digest_size=8,
                             person=_HASH_PERSON).digest()
    return int.from_bytes(digest, "big") / _SPAN


class Ranges:
    """Share ranges over [0, 1): group i owns [bounds[i-1], bounds[i]). Groups with a
    share of 0 own nothing."""

    __slots__ = ("bounds", "groups")

    def __init__(self, shares: Sequence[tuple[str, float]]) -> None:
        kept = [(g, s) for g, s in shares if s > 0]
        total = sum(s for _, s in kept)
        self.groups: list[str] = [g for g, _ in kept]
        self.bounds: list[float] = []
        run = 0.0
        for _, s in kept:
            run += s
            self.bounds.append(run / total)
        if self.bounds:
            self.bounds[-1] = 1.0          # no gap at the top from rounding

    def __bool__(self) -> bool:
        return bool(self.groups)

    def lookup(self, u: float) -> str:
        """The group whose range holds u (0 <= u < 1); the ranges must not be empty."""
        i = bisect.bisect_right(self.bounds, u)
        return self.groups[min(i, len(self.groups) - 1)]

    def shares(self) -> dict[str, float]:
        """Percent per group, from the ranges' widths."""
        out, low = {}, 0.0
        for g, high in zip(self.groups, self.bounds, strict=True):
            out[g] = round((high - low) * 100.0, 6)
            low = high
        return out


class Golden:
    """The golden-ratio sequence of points in [0, 1) for calls without a sticky key."""

    __slots__ = ("u",)

    def __init__(self, start: float = 0.0) -> None:
        self.u = start

    def next(self) -> float:
        u = self.u + GOLDEN
        self.u = u - 1.0 if u >= 1.0 else u
        return self.u


@dataclass(slots=True)
class Rule:
    """One `match` rule: header `header` equal to `value` -> `group`."""

    header: str
    value: str
    group: str


@dataclass(slots=True)
class Choice:
    """What `ModelRouter.choose` decided, for counting by the caller."""

    group: str
    wanted: str               # the group before diverting (== group unless diverted)
    how: str                  # "match" | "sticky" | "split"


@dataclass(slots=True)
class ModelRouter:
    """One routed model's rules and counters (see the module docstring)."""

    shares: list[tuple[str, float]]
    rules: list[Rule] = field(default_factory=list)
    sticky_header: str | None = None
    sticky_api_key: bool = False
    seq: Golden = field(default_factory=Golden)
    routed: dict[str, int] = field(default_factory=dict)
    diverted: dict[str, int] = field(default_factory=dict)
    matched: int = 0
    _base: Ranges = field(init=False)
    _healthy_key: frozenset[str] | None = field(init=False, default=None)
    _effective: Ranges = field(init=False)

    def __post_init__(self) -> None:
        self.set_shares(self.shares)

    def set_shares(self, shares: Sequence[tuple[str, float]]) -> None:
        """New shares (a reload, a rollout step); the sequence and counters go on."""
        self.shares = list(shares)
        self._base = Ranges(self.shares)
        self._healthy_key = None
        self._effective = self._base

    def groups(self) -> list[str]:
        """Every group this model names in its split or rules, in order."""
        out = [g for g, _ in self.shares]
        out += [r.group for r in self.rules if r.group not in out]
        return out

    def effective(self, healthy: Collection[str]) -> Ranges:
        """The share ranges over the healthy groups (cached per healthy set)."""
        key = frozenset(healthy)
        if key != self._healthy_key:
            self._healthy_key = key
            kept = [(g, s) for g, s in self.shares if g in key]
            self._effective = Ranges(kept) if any(s > 0 for _, s in kept) else Ranges([])
        return self._effective

    def choose(self, headers: Headers, healthy: Collection[str],
               api_key: str | None = None) -> Choice:
        """The group for one call; counts it."""
        for rule in self.rules:
            if headers(rule.header) == rule.value:
                self.matched += 1
                return self._count(Choice(rule.group, rule.group, "match"))
        key = api_key if self.sticky_api_key else (
            headers(self.sticky_header) if self.sticky_header is not None else None)
        if key is not None:
            u, how = hash_unit(key), "sticky"
        else:
            u, how = self.seq.next(), "split"
        base = self._base
        if not base:                         # every share 0: only matches reach it
            first = self.shares[0][0] if self.shares else ""
            return self._count(Choice(first, first, how))
        wanted = base.lookup(u)
        if wanted in healthy:
            return self._count(Choice(wanted, wanted, how))
        self.diverted[wanted] = self.diverted.get(wanted, 0) + 1
        eff = self.effective(healthy)
        return self._count(Choice(eff.lookup(u) if eff else wanted, wanted, how))

    def _count(self, choice: Choice) -> Choice:
        self.routed[choice.group] = self.routed.get(choice.group, 0) + 1
        return choice

    def effective_shares(self, healthy: Collection[str]) -> dict[str, float]:
        """Percent per group now: the split, with unhealthy groups' shares given to
        the others (when no group is healthy, the split as it is)."""
        eff = self.effective(healthy)
        shares = eff.shares() if eff else self._base.shares()
        return {g: shares.get(g, 0.0) for g, _ in self.shares}
