"""Helpers shared by tests/ and scripts/ (never shipped: not in the wheel, not in lb/).

tests/ and scripts/ import from here and never from each other (tests/test_imports.py):
* procs: free ports, waits with deadlines, one-shot HTTP, `Proc` (a logged child
  process that dies with its parent), `ensure_tool` (apt-get for nginx, wrk);
* usage: CPU seconds (a process, its tree) and RSS from /proc;
* wrk: runs wrk (closed loop, in C) and reads its report; its Lua scripts;
* nginx: a non-daemon nginx under its own prefix (stubs, balancers, yardsticks);
* proxy: `ProxyProc`, `tfserving-lb serve` on free ports, and `write_config`;
* redis: `RedisServer`, a private redis-server on a free port;
* workers: `tfserving-lb worker` processes (TensorFlow), started together;
* simnode: a simulated TF Serving node (slots, lognormal service, stalls);
* certs: a CA and certificate pairs made at run time;
* grpcwire: a PredictRequest written by hand (gRPC load without TensorFlow).
"""
