"""Merging the Prometheus metrics of several processes into one exposition.

Called by `lb.fleet.view` at every scrape (and history tick) with each live
process's families as `families_of` wrote them (a worker sends them as JSON over
its control socket). The rules are `lb.fleet.rules`'.

Guarantees:

* A counter (and every sample of a histogram) never goes backwards between two
  merges, whatever happens to the processes: each process's series is kept
  monotonic (a restart of a series inside a process, e.g. a node removed and
  added again, is added to an offset, as Prometheus' `rate()` would), a series a
  process stops reporting keeps its last value, and `retire(pid)` folds a process
  that is gone into the carried-over totals.
* Gauges come from the live processes only: summed, max or min when declared,
  else one series per process with a `pid` label. `process_*` and `python_*`
  families are per process (label `pid`); `TOTALS` adds their sums.
* Families keep their help and type; an empty family is still exposed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lb.fleet.rules import (
    GAUGE_MAX,
    GAUGE_MIN,
    GAUGE_RATIO,
    GAUGE_SUM,
    PER_PROCESS_PREFIXES,
    TOTALS,
)

# One family as sent between processes: [name, type, help, unit, [[sample, labels, value]]].
Family = list[Any]
Key = tuple[str, str, tuple[tuple[str, str], ...]]      # family, sample name, labels
COUNTING = ("counter", "histogram", "summary")


def families_of(collectors: Iterable[Collector]) -> list[Family]:
    """The families of `collectors` now, in a JSON-friendly form."""
    out: list[Family] = []
    for collector in collectors:
        for m in collector.collect():
            out.append([m.name, m.type, m.documentation, m.unit,
                        [[s.name, s.labels, s.value] for s in m.samples
                         if not s.name.endswith("_created")]])
    return out


def _with_totals(families: list[Family]) -> list[Family]:
    """A process's families plus one-sample families of TOTALS' sources."""
    by_sample = {s[0]: s[2] for f in families for s in f[4] if not s[1]}
    extra = [[name, typ, doc, "", [[name + ("_total" if typ == "counter" else ""), {},
                                    by_sample[src]]]]
             for name, (src, typ, doc) in TOTALS.items() if src in by_sample]
    return families + extra


def _per_process(name: str) -> bool:
    return name.startswith(PER_PROCESS_PREFIXES)


class _Series:
    """One process's counter samples: raw last values and offsets for restarts."""

    __slots__ = ("offset", "raw")

    def __init__(self) -> None:
        self.raw: dict[Key, float] = {}
        self.offset: dict[Key, float] = {}

    def update(self, key: Key, value: float) -> None:
        before = self.raw.get(key)
        if before is not None and value < before:           # the series restarted
            self.offset[key] = self.offset.get(key, 0.0) + before
        self.raw[key] = value

    def values(self) -> Iterator[tuple[Key, float]]:
        for key, raw in self.raw.items():
            yield key, raw + self.offset.get(key, 0.0)


class MetricMerger:
    """The merging state of one proxy (kept by its view for the life of the proxy)."""

    def __init__(self) -> None:
        self._processes: dict[int, _Series] = {}
        self._retired: dict[Key, float] = {}
        self._meta: dict[str, tuple[str, str, str]] = {}     # name -> type, help, unit
        self._order: dict[Key, None] = {}                    # counter keys, first seen first

    def retire(self, pid: int) -> None:
        """`pid` is gone: its counts stay in the totals from now on."""
        series = self._processes.pop(pid, None)
        if series is not None:
            for key, value in series.values():
                self._retired[key] = self._retired.get(key, 0.0) + value

    def merge(self, sources: dict[int, list[Family]]) -> list[Metric]:
        """One list of families for the live processes' `sources` (pid -> families)."""
        gauges: dict[str, dict[tuple[tuple[str, str], ...], list[float]]] = {}
        per_process: dict[str, list[tuple[str, dict[str, str], float]]] = {}
        for pid, families in sources.items():
            series = self._processes.setdefault(pid, _Series())
            for name, typ, doc, unit, samples in _with_totals(families):
                self._meta.setdefault(name, (typ, doc, unit))
                per_process.setdefault(name, [])
                gauges.setdefault(name, {})
                for sample, labels, value in samples:
                    if _per_process(name):
                        per_process[name].append((sample, {**labels, "pid": str(pid)}, value))
                    elif typ in COUNTING:
                        key = (name, sample, tuple(sorted(labels.items())))
                        self._order.setdefault(key)
                        series.update(key, float(value))
                    elif name in GAUGE_RATIO:
                        continue                    # derived from the merged counters
                    elif name in GAUGE_SUM or name in GAUGE_MAX or name in GAUGE_MIN:
                        gauges[name].setdefault(tuple(sorted(labels.items())), []).append(value)
                    else:
                        per_process[name].append((sample, {**labels, "pid": str(pid)}, value))
        return self._build(self._counters(), gauges, per_process)

    def _counters(self) -> dict[Key, float]:
        totals = dict.fromkeys(self._order, 0.0)
        for series in self._processes.values():
            for key, value in series.values():
                totals[key] += value
        for key, value in self._retired.items():
            totals[key] += value
        return totals

    def _build(self, counters: dict[Key, float],
               gauges: dict[str, dict[tuple[tuple[str, str], ...], list[float]]],
               per_process: dict[str, list[tuple[str, dict[str, str], float]]]) -> list[Metric]:
        by_family: dict[str, list[tuple[str, dict[str, str], float]]] = {}
        for (name, sample, labels), value in counters.items():
            by_family.setdefault(name, []).append((sample, dict(labels), value))
        for name, values in gauges.items():
            for label_set, found in values.items():
                by_family.setdefault(name, []).append((name, dict(label_set), _gauge(name, found)))
        for name, (num, dens) in GAUGE_RATIO.items():
            if name in self._meta:
                by_family[name] = _ratio(name, counters, num, dens)
        for name, samples in per_process.items():
            by_family.setdefault(name, []).extend(samples)
        out = []
        for name, (typ, doc, unit) in self._meta.items():
            family = Metric(name, doc, typ, unit)
            for sample, sample_labels, value in by_family.get(name, ()):
                family.add_sample(sample, sample_labels, value)
            out.append(family)
        return out


def _gauge(name: str, values: list[float]) -> float:
    if name in GAUGE_MAX:
        return max(values)
    if name in GAUGE_MIN:
        return min(values)
    return float(sum(values))


def _ratio(name: str, counters: dict[Key, float], num: str,
           dens: tuple[str, ...]) -> list[tuple[str, dict[str, str], float]]:
    """num / Σ dens by labels, from the merged counter samples."""
    sums: dict[tuple[tuple[str, str], ...], list[float]] = {}
    for (_, sample, labels), value in counters.items():
        if sample == num:
            sums.setdefault(labels, [0.0, 0.0])[0] += value
        if sample in dens:
            sums.setdefault(labels, [0.0, 0.0])[1] += value
    return [(name, dict(labels), n / d if d else 0.0) for labels, (n, d) in sums.items()]


class MergedCollector(Collector):
    """A prometheus_client collector over already merged families (for generate_latest)."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        yield from self._families


def render(families: list[Metric]) -> bytes:
    """The Prometheus text format of merged families."""
    return generate_latest(MergedCollector(families))


def fleet_metrics(workers: int, restarts: int) -> list[Metric]:
    """`tfslb_workers` (processes serving now) and `tfslb_worker_restarts_total`."""
    live = GaugeMetricFamily("tfslb_workers", "Proxy processes serving (serve --workers N)")
    live.add_metric([], workers)
    replaced = CounterMetricFamily("tfslb_worker_restarts",
                                   "Proxy processes replaced after they exited")
    replaced.add_metric([], restarts)
    return [live, replaced]
