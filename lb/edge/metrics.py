"""The edge's families for /metrics (`lb.admin.metrics` asks `Edge.metrics` at scrape time).

Read from the live objects when scraped; nothing is counted here. Labels carry key
ids, never keys or their hashes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from lb.edge.gate import Edge


def edge_metrics(edge: Edge, prefix: str) -> list[Metric]:
    out: list[Metric] = []
    if edge.keys is not None:
        by_key = CounterMetricFamily(prefix + "auth_requests",
                                     "Requests with a known key: allowed, forbidden (403, "
                                     "model out of scope), limited (429, over budget)",
                                     labels=["key", "result"])
        for key_id, p in edge.keys.principals.items():
            by_key.add_metric([key_id, "allowed"], p.allowed)
            by_key.add_metric([key_id, "forbidden"], p.forbidden)
            by_key.add_metric([key_id, "limited"], p.limited)
        unauth = CounterMetricFamily(prefix + "auth_unauthenticated",
                                     "Requests refused 401: no key, an unknown key, or a "
                                     "malformed header", labels=["reason"])
        for reason, count in edge.unauthenticated.items():
            unauth.add_metric([reason], count)
        out += [by_key, unauth]
    if edge.shared is not None:
        st = edge.shared.stats()
        up = GaugeMetricFamily(prefix + "ratelimit_shared_up",
                               "1 while rate limits are kept in Redis, 0 while each proxy "
                               "uses its own buckets (Redis out of reach)")
        up.add_metric([], 1.0 if st["state"] == "redis" else 0.0)
        errors = CounterMetricFamily(prefix + "ratelimit_redis_errors",
                                     "Round trips to Redis that failed (decided locally)")
        errors.add_metric([], st["errors"])
        local = CounterMetricFamily(prefix + "ratelimit_local_decisions",
                                    "Rate checks decided by local buckets instead of Redis")
        local.add_metric([], st["local_decisions"])
        out += [up, errors, local]
    if edge.tls is not None:
        tls = edge.tls
        rotations = CounterMetricFamily(prefix + "tls_rotations",
                                        "Certificate pairs of the fronts reloaded from files")
        rotations.add_metric([], tls.rotations)
        failures = CounterMetricFamily(prefix + "tls_rotation_failures",
                                       "Changed certificate files that could not be used")
        failures.add_metric([], tls.failures)
        out += [rotations, failures]
        if tls.not_after is not None:
            expiry = GaugeMetricFamily(prefix + "tls_cert_expiry_timestamp_seconds",
                                       "End of validity of the fronts' certificate")
            expiry.add_metric([], tls.not_after)
            out.append(expiry)
    return out
