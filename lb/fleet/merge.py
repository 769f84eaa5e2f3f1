"""Merging the `/stats` documents of several proxy processes into one, by declared rules.

Called by `lb.fleet.view` (every read of `/stats`, and every history tick) with
the documents of the live processes and the counters carried over from the
processes that are gone. The rules themselves are declared in `lb.fleet.rules`
(`STATS`): this module only knows how to apply them. Pure: no I/O, no clock.

A rule tree mirrors the document: `Fields` for a dict with known keys, `Each`
for a dict keyed by data (models, node names), `ByName` for a list of dicts
matched by a key ("name"), and a leaf rule for each value:

* `COUNTER`: summed over the live processes, plus the carried-over counts of
  processes that were replaced, so the total never drops when a process goes;
* `SUM`: summed over the live processes (in flight, queue lengths, bytes);
* `MAX`, `MIN`, `ANY`: over the live processes (None values ignored);
* `MEAN` (`MEAN_POSITIVE` ignores zeros, e.g. a τ without samples);
* `SAME`: a setting or state every process should agree on: the most common value;
* `NUMBERS`: for a subtree without declared keys: numbers summed, the rest `SAME`;
* derived, computed from the merged siblings: `Ratio` (hit rates, rows per
  batch), `Share` (a list entry's share of a field summed over the list), and
  `WMean` (an average weighted by sibling counts of each process).

Guarantees: every key present in any live document is present in the result
(an undeclared key falls back to its tree's default, else `SAME`); None stays
None when every process has None; the result of one document is that document
with its derived values recomputed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

Doc = dict[str, Any]


def _numbers(values: Sequence[Any]) -> list[float | int]:
    return [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


class Leaf:
    """A rule for one value; `values[i]` sits in `parents[i]` (the dict that holds it)."""

    __slots__ = ("name",)
    derived = False          # computed from the merged siblings instead

    def __init__(self, name: str) -> None:
        self.name = name

    def merge(self, values: list[Any], carried: Any, parents: list[Doc]) -> Any:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class _Counter(Leaf):
    __slots__ = ()

    def merge(self, values: list[Any], carried: Any, parents: list[Doc]) -> Any:
        nums = _numbers(values)
        if not nums and not isinstance(carried, int | float):
            return values[0] if values else None
        total = sum(nums) + (carried if isinstance(carried, int | float) else 0)
        return round(total, 6) if isinstance(total, float) else total


class _Sum(Leaf):
    __slots__ = ()

    def merge(self, values: list[Any], carried: Any, parents: list[Doc]) -> Any:
        nums = _numbers(values)
        if not nums:
            return values[0] if values else None
        total = sum(nums)
        return round(total, 6) if isinstance(total, float) else total


class _Pick(Leaf):
    __slots__ = ("fn",)

    def __init__(self, name: str, fn: Any) -> None:
        super().__init__(name)
        self.fn = fn

    def merge(self, values: list[Any], carried: Any, parents: list[Doc]) -> Any:
        present = [v for v in values if v is not None]
        return self.fn(present) if present else None


class _Mean(Leaf):
    __slots__ = ("positive",)

    def __init__(self, name: str, positive: bool) -> None:
        super().__init__(name)
        self.positive = positive

    def merge(self, values: list[Any], carried: Any, parents: list[Doc]) -> Any:
        nums = [v for v in _numbers(values) if v > 0 or not self.positive]
        if not nums:
            return 0.0 if self.positive or _numbers(values) else None
        return nums[0] if len(nums) == 1 else round(sum(nums) / len(nums), 6)


class _Same(Leaf):
    __slots__ = ()

    def merge(self, values: list[Any], carried: Any, parents: list[Doc]) -> Any:
        if not values:
            return None
        counts = Counter(_hashable(v) for v in values)
        best = max(counts.values())
        return next(v for v in values if counts[_hashable(v)] == best)


class _Numbers(Leaf):
    __slots__ = ()

    def merge(self, values: list[Any], carried: Any, parents: list[Doc]) -> Any:
        if values and len(_numbers(values)) == len(values):
            return SUM.merge(values, carried, parents)
        return SAME.merge(values, carried, parents)


class Ratio(Leaf):
    """merged[num] / Σ merged[dens] (0.0 when the denominator is 0)."""

    __slots__ = ("dens", "digits", "num")
    derived = True

    def __init__(self, num: str, dens: tuple[str, ...], digits: int = 4) -> None:
        super().__init__(f"Ratio({num}/{'+'.join(dens)})")
        self.num, self.dens, self.digits = num, dens, digits

    def merge(self, values: list[Any], carried: Any, parents: list[Doc]) -> Any:
        raise AssertionError("derived: see derive")

    def derive(self, merged: Doc) -> float:
        den = sum(_numbers([merged.get(d) for d in self.dens]))
        num = merged.get(self.num)
        return round(num / den, self.digits) if den and isinstance(num, int | float) else 0.0


class WMean(Leaf):
    """The processes' values averaged with weights Σ of sibling keys in each process."""

    __slots__ = ("digits", "weights")

    def __init__(self, weights: tuple[str, ...], digits: int = 3) -> None:
        super().__init__(f"WMean({'+'.join(weights)})")
        self.weights, self.digits = weights, digits

    def merge(self, values: list[Any], carried: Any, parents: list[Doc]) -> Any:
        total = weight_sum = 0.0
        for value, parent in zip(values, parents, strict=True):
            w = sum(_numbers([parent.get(k) for k in self.weights]))
            if isinstance(value, int | float) and w > 0:
                total += value * w
                weight_sum += w
        return round(total / weight_sum, self.digits) if weight_sum else 0.0


class Share(Leaf):
    """In a `ByName` list: this entry's `field` over the sum of `field` of all entries."""

    __slots__ = ("digits", "field")
    derived = True

    def __init__(self, field: str, digits: int = 4) -> None:
        super().__init__(f"Share({field})")
        self.field, self.digits = field, digits

    def merge(self, values: list[Any], carried: Any, parents: list[Doc]) -> Any:
        raise AssertionError("derived: see ByName")


COUNTER = _Counter("COUNTER")
SUM = _Sum("SUM")
MAX = _Pick("MAX", max)
MIN = _Pick("MIN", min)
ANY = _Pick("ANY", any)
MEAN = _Mean("MEAN", positive=False)
MEAN_POSITIVE = _Mean("MEAN_POSITIVE", positive=True)
SAME = _Same("SAME")
NUMBERS = _Numbers("NUMBERS")
KEY = SAME                    # the key of a ByName entry: equal by construction

Rule = Any   # Leaf | Fields | Each | ByName


class Fields:
    """A dict with declared keys; `default` for undeclared ones (None: inferred)."""

    __slots__ = ("default", "rules")

    def __init__(self, rules: Mapping[str, Rule], default: Leaf | None = None) -> None:
        self.rules = dict(rules)
        self.default = default

    def rule(self, key: str, sample: Any) -> Rule:
        found = self.rules.get(key)
        if found is not None:
            return found
        if isinstance(sample, dict):
            return Fields({}, self.default)
        return self.default or SAME

    def merge(self, docs: list[Any], carried: Any) -> Doc | None:
        present = [d for d in docs if isinstance(d, dict)]
        if not present:
            return None
        carried = carried if isinstance(carried, dict) else {}
        keys = list(dict.fromkeys(k for d in present for k in d))
        out: Doc = {}
        later: list[tuple[str, Ratio]] = []
        for key in keys:
            holders = [d for d in present if key in d]
            values = [d[key] for d in holders]
            rule = self.rule(key, values[0])
            if isinstance(rule, Ratio):
                later.append((key, rule))
                out[key] = None
            elif isinstance(rule, Share):
                out[key] = None                     # filled in by the enclosing ByName
            elif isinstance(rule, Leaf):
                out[key] = rule.merge(values, carried.get(key), holders)
            else:
                out[key] = rule.merge(values, carried.get(key))
        for key, ratio in later:
            out[key] = ratio.derive(out)
        return out


class Each:
    """A dict keyed by data (model names, node names): every value merged by `rule`."""

    __slots__ = ("rule",)

    def __init__(self, rule: Rule) -> None:
        self.rule = rule

    def merge(self, docs: list[Any], carried: Any) -> Doc | None:
        present = [d for d in docs if isinstance(d, dict)]
        if not present:
            return None
        carried = carried if isinstance(carried, dict) else {}
        out: Doc = {}
        for key in dict.fromkeys(k for d in present for k in d):
            holders = [d for d in present if key in d]
            values = [d[key] for d in holders]
            if isinstance(self.rule, Leaf):
                out[key] = self.rule.merge(values, carried.get(key), holders)
            else:
                out[key] = self.rule.merge(values, carried.get(key))
        return out


class ByName:
    """A list of dicts matched across processes by `key`, in order of first appearance."""

    __slots__ = ("fields", "key")

    def __init__(self, fields: Fields, key: str = "name") -> None:
        self.fields = fields
        self.key = key

    def merge(self, docs: list[Any], carried: Any) -> list[Doc] | None:
        lists = [d for d in docs if isinstance(d, list)]
        if not lists:
            return None
        before = {e[self.key]: e for e in carried or () if isinstance(e, dict)}
        groups: dict[Any, list[Doc]] = {}
        for entries in lists:
            for entry in entries:
                groups.setdefault(entry[self.key], []).append(entry)
        out = [self.fields.merge(group, before.get(name)) or {} for name, group in groups.items()]
        for key, rule in self.fields.rules.items():
            if isinstance(rule, Share):
                total = sum(_numbers([e.get(rule.field) for e in out]))
                for e in out:
                    value = e.get(rule.field)
                    e[key] = (round(value / total, rule.digits)
                              if total and isinstance(value, int | float) else 0.0)
        return out


def merge(tree: Fields, docs: list[Doc], carried: Doc | None = None) -> Doc:
    """One document for the processes' `docs` (live), with `carried` counters added."""
    return tree.merge(list(docs), carried) or {}


def counters(tree: Rule, doc: Any) -> Any:
    """The COUNTER leaves of `doc` (with ByName keys): what a replaced process leaves behind."""
    if isinstance(tree, Fields) and isinstance(doc, dict):
        out = {}
        for key, value in doc.items():
            rule = tree.rule(key, value)
            kept = counters(rule, value)
            if kept is not None:
                out[key] = kept
        return out or None
    if isinstance(tree, Each) and isinstance(doc, dict):
        out = {k: kept for k, v in doc.items() if (kept := counters(tree.rule, v)) is not None}
        return out or None
    if isinstance(tree, ByName) and isinstance(doc, list):
        entries = []
        for entry in doc:
            kept = counters(tree.fields, entry)
            if kept:
                entries.append({**kept, tree.key: entry[tree.key]})
        return entries or None
    if tree is COUNTER and isinstance(doc, int | float) and not isinstance(doc, bool):
        return doc
    return None


def add_counters(a: Any, b: Any, key: str = "name") -> Any:
    """The sum of two `counters` documents (keys and list entries united)."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: add_counters(a.get(k), b.get(k), key) for k in dict.fromkeys([*a, *b])}
    if isinstance(a, list) and isinstance(b, list):
        by = {e[key]: e for e in a}
        for e in b:
            by[e[key]] = {**add_counters(by.get(e[key]), e, key), key: e[key]}
        return list(by.values())
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a + b
    return b
