"""`tfserving-lb serve` in a child process on free ports, for the tests and the benchmarks.

Called by the proxy's end-to-end tests (through tests/procs.py), scripts/benchenv.py
(`Bench.start_proxy`) and scripts/bench_grpc.py. Guarantees: a `ProxyProc` exists
only once its admin port answers /stats (and its gRPC front accepts, if asked),
within 30 s; one that did not come up is stopped before the error propagates.
It runs in a session of its own, so `stop()` leaves none of `--workers N`'s
children behind, and it dies with this process (harness/procs.py `Proc`).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from harness.procs import Proc, free_port, get_json, tcp_open, wait_until


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    """`doc` as YAML at `path` (key order kept, as a person would write it)."""
    import yaml

    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class ProxyProc:
    """`tfserving-lb serve` in a child process, with its REST and admin URLs.

    `sections` are more top-level config sections (cache, hedge, ...); `listen`
    more listen settings; `exe` another install's console script instead of this
    interpreter's `python -m lb`; `source` another checkout to run from (its lb/
    is imported first: before/after in one run); `env` added to the environment;
    `poll_s` how often start-up is polled (a benchmark timing it polls finer)."""

    def __init__(self, log_dir: Path, nodes: list[dict[str, Any]], *, name: str = "proxy",
                 grpc: bool = False, workers: int = 1, metrics: bool = False,
                 tls: dict[str, Any] | None = None, listen: dict[str, Any] | None = None,
                 exe: str | None = None, source: Path | None = None,
                 env: dict[str, str] | None = None, poll_s: float = 0.1, **sections: Any):
        self.rest_port, self.admin_port = free_port(), free_port()
        # with `tls` (listen.tls) the REST front is https (harness.certs names 127.0.0.1)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.rest_port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.grpc = f"127.0.0.1:{free_port()}" if grpc else None   # the gRPC front, if asked
        # listen.metrics, if asked: GET /metrics alone
        self.metrics = f"http://127.0.0.1:{free_port()}" if metrics else None
        settings = {"rest": f"127.0.0.1:{self.rest_port}", "grpc": self.grpc,
                    "admin": f"127.0.0.1:{self.admin_port}", "tls": tls}
        if self.metrics:
            settings["metrics"] = self.metrics.removeprefix("http://")
        doc: dict[str, Any] = {"listen": {**settings, **(listen or {})}, "nodes": nodes,
                               **sections}
        self.config_path = write_config(log_dir / f"{name}-{self.rest_port}.yaml", doc)
        cmd = [exe] if exe else [sys.executable, "-m", "lb"]
        self.proc = Proc(f"{name}-{self.rest_port}",
                         [*cmd, "serve", "--config", str(self.config_path),
                          "--workers", str(workers)], log_dir, env=env, cwd=source)
        try:
            self.proc.wait_http(f"{self.admin}/stats", 30.0, lambda s, _b: s == 200,
                                interval=poll_s)
            if self.grpc:
                wait_until(lambda: tcp_open(str(self.grpc)), 10.0, f"{name} gRPC front",
                           interval=poll_s)
        except BaseException:
            self.proc.stop()                 # a proxy that did not come up is not left behind
            raise

    def stats(self) -> Any:
        return get_json(f"{self.admin}/stats")

    def stop(self) -> int | None:
        return self.proc.stop()
