"""Model rollouts through one endpoint: node groups, splits, sticky and header routing,
shadow traffic that compares predictions, and progressive rollouts that roll back.

Folders by concern, one module each; every module but `service` and `admin` is pure
(no I/O, time passed in) and tested in-process:

    settings   the config models (`models.M.split`, `match`, `sticky_by`, `shadow`,
               `rollout`), validated at the config boundary (`lb.config` uses them)
    split      share ranges, the low-discrepancy sequence, the router: call -> group
    compare    two answers to one input, output by output (REST JSON, gRPC wire)
    windows    per-group and per-shadow counters over time, the disagreement sample
    progress   the rollout's state machine and its gates
    shadow     shadow copies: selection, cap, budget, shedding, the `Ticket` of a
               call, the pair compared once both answers are in; copies leave
               through the front's `Transport`
    service    `Rollouts`: the edge the fronts and the composition root talk to
    admin      `/shadow/M`, `/rollout/M` and pause / resume / abort on the admin port
    metrics    the Prometheus families, read at scrape time

The request path gives a call its group (`lb.request.call.Call.group`, None: any node);
`lb.pool.nodes.NodePool.pick` only considers nodes of that group.
"""
