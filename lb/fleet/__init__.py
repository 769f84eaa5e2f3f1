"""One proxy at any process count: the admin side of `serve --workers N`.

`rules` declares how each figure adds up across processes; `merge` (for /stats)
and `prom` (for /metrics) apply those rules; `procinfo` reads a process's own
memory, CPU and descriptors; `control` is a worker's side (its state over a
Unix socket to the supervisor); `view` (`FleetView`) is what the supervisor's
admin port reads: all the workers. One process reads itself (`lb.admin.app.LocalView`)
through the same rules, so both answer in one shape.
docs/ARCHITECTURE.md ("Several processes") says how they fit.
"""
