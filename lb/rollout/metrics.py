"""The Prometheus families of groups, shadows and rollouts, read at scrape time.

Called by `lb.admin.metrics.StateCollector.collect` (`families(proxy.rollouts)`), so a
scrape reads the live objects of `lb.rollout.service` and the request path
counts nothing more for them. Labels: model and group, both bounded by the
config (only routed models are listed).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from lb.rollout.progress import Phase
from lb.rollout.service import Rollouts

PREFIX = "tfslb_"


def _group_families(rollouts: Rollouts) -> Iterator[Metric]:
    def counter(name: str, doc: str) -> CounterMetricFamily:
        return CounterMetricFamily(PREFIX + name, doc, labels=["model", "group"])

    routed = counter("group_routed", "Calls of a routed model given to the group")
    diverted = counter("group_diverted", "Calls meant for the group while it had no "
                                         "healthy node (given to the other groups)")
    answered = counter("group_answered", "Inference calls the group answered (or failed)")
    errors = counter("group_errors", "Inference calls of the group that failed (5xx, none)")
    share = GaugeMetricFamily(PREFIX + "group_share", "Percent of the model's traffic the "
                              "group gets now (after unhealthy groups')", labels=["model", "group"])
    for name, doc in rollouts.stats().items():
        for group, g in doc["groups"].items():
            labels = [name, group]
            routed.add_metric(labels, g["routed"])
            diverted.add_metric(labels, g["diverted"])
            answered.add_metric(labels, g["answered"])
            errors.add_metric(labels, g["errors"])
            share.add_metric(labels, g["effective"])
    yield from (routed, diverted, answered, errors, share)


def _shadow_families(rollouts: Rollouts) -> Iterator[Metric]:
    def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> CounterMetricFamily:
        return CounterMetricFamily(PREFIX + name, doc, labels=["model", *extra])

    def gauge(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(PREFIX + name, doc, labels=["model"])

    pairs = counter("shadow_pairs", "Shadowed calls whose two answers are in")
    rows = counter("shadow_compared_rows", "Rows compared by argmax")
    agreed = counter("shadow_agreed_rows", "Rows whose argmax agreed (agreement over time: "
                                           "rate of this / rate of compared rows)")
    errors = counter("shadow_errors", "Pairs with a failed side (5xx or no answer)", ("side",))
    skipped = counter("shadow_skipped", "Copies not sent (shedding, cap, budget, no_node, "
                                        "send_failed) or not paired (client_left)", ("reason",))
    agreement = gauge("shadow_agreement", "Argmax agreement over the shadow's window")
    max_abs = gauge("shadow_max_abs_diff", "Largest absolute difference over the window")
    mean_abs = gauge("shadow_mean_abs_diff", "Mean absolute difference over the window")
    ratio = gauge("shadow_latency_ratio", "Shadow / primary latency over the window "
                                          "(geometric mean)")
    inflight = gauge("shadow_inflight", "Shadow copies in flight")
    now = time.monotonic()
    for name, m in rollouts.models.items():
        if m.shadow is None:
            continue
        st = m.shadow.stats
        doc = st.as_dict(now)
        total, window = doc["totals"], doc["window"]
        pairs.add_metric([name], total["pairs"])
        rows.add_metric([name], total["class_rows"])
        agreed.add_metric([name], total["agreed"])
        errors.add_metric([name, "primary"], st.primary_errors)
        errors.add_metric([name, "shadow"], st.shadow_errors)
        for reason, count in st.skipped.items():
            skipped.add_metric([name, reason], count)
        for fam, key in ((agreement, "agreement"), (max_abs, "max_abs_diff"),
                         (mean_abs, "mean_abs_diff"), (ratio, "latency_ratio")):
            if window[key] is not None:
                fam.add_metric([name], window[key])
        inflight.add_metric([name], m.shadow.inflight)
    yield from (pairs, rows, agreed, errors, skipped, agreement, max_abs, mean_abs, ratio,
                inflight)


def _rollout_families(rollouts: Rollouts) -> Iterator[Metric]:
    share = GaugeMetricFamily(PREFIX + "rollout_share", "Percent of traffic to the "
                              "rollout's `to` group", labels=["model"])
    step = GaugeMetricFamily(PREFIX + "rollout_step", "The rollout's step (1-based)",
                             labels=["model"])
    state = GaugeMetricFamily(PREFIX + "rollout_state", "1 for the rollout's state",
                              labels=["model", "state"])
    aborts = CounterMetricFamily(PREFIX + "rollout_aborts", "Rollouts aborted (by a gate "
                                 "or the operator)", labels=["model"])
    for name, m in rollouts.models.items():
        p = m.progress
        if p is None:
            continue
        share.add_metric([name], p.share)
        step.add_metric([name], p.index + 1)
        for phase in Phase:
            state.add_metric([name, str(phase)], 1.0 if p.phase is phase else 0.0)
        aborts.add_metric([name], p.aborts)
    yield from (share, step, state, aborts)


def families(rollouts: Rollouts) -> Iterator[Metric]:
    """Every family of this module."""
    yield from _group_families(rollouts)
    yield from _shadow_families(rollouts)
    yield from _rollout_families(rollouts)
