"""The proxy's edge: TLS on the fronts and to the nodes, API keys, rate limits.

    config.py     the sections listen.tls, upstream.tls, auth, rate_limit (pydantic)
    tls.py        the fronts' certificate pair: SSLContext, gRPC credentials, rotation
    node_tls.py   TLS to the nodes: the REST client's SSLContext, gRPC channel credentials
    keys.py       API keys and client-certificate identities: who is asking, for what
    ratelimit.py  budgets per key (and model): local GCRA buckets
    shared.py     the same budgets kept in Redis for every replica, failing open to local
    gate.py       the check both fronts make first, before admission; its counters
    metrics.py    its families for /metrics (read at scrape time)

`lb.server` builds one `Edge` (gate.py) per proxy and hooks it into both fronts.
"""
