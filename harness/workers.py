"""`tfserving-lb worker` (TensorFlow) in child processes, started together, waited for.

Called by the test suite (tests/conftest.py, tests/lb/conftest.py and the tests,
through tests/procs.py) and scripts/bench_grpc.py. Guarantees: `start_workers`
returns only once every worker's first model is AVAILABLE (and its gRPC port
accepts, if it has one), within the timeout; if any fails, all are stopped. The
workers die with this process (harness/procs.py `Proc`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.procs import ROOT, Proc, free_port, tcp_open, wait_until

TEST_MODELS = ROOT / "tests" / "data" / "models"    # half_plus_two and friends, in git


def model_available(model: str) -> Callable[[int, bytes], bool]:
    def ok(status: int, body: bytes) -> bool:
        if status != 200:
            return False
        states = [v["state"] for v in json.loads(body)["model_version_status"]]
        return "AVAILABLE" in states
    return ok


def lb_cmd(*args: str) -> list[str]:
    """The console script, run through the interpreter under test."""
    return [sys.executable, "-m", "lb", *args]


def start_workers(log_dir: Path, specs: list[dict[str, Any]],
                  timeout: float = 120.0) -> list[tuple[Proc, str]]:
    """Start several workers at once (TF start-up overlaps), then wait for each.

    Each spec: {"models": {name: path}, "delay_ms": float, "name": str, "extra": [...],
    "grpc": bool (default True)}. The first model of each worker must become AVAILABLE
    within `timeout`; with gRPC, `proc.grpc` is its "127.0.0.1:port" and it answers.
    """
    started = []
    for spec in specs:
        port = spec.get("port") or free_port()
        args = ["worker", "--port", str(port), "--delay-ms", str(spec.get("delay_ms", 0.0))]
        grpc_addr = f"127.0.0.1:{free_port()}" if spec.get("grpc", True) else None
        if grpc_addr:
            args += ["--grpc-port", grpc_addr.rpartition(":")[2]]
        for model, path in spec["models"].items():
            args += ["--model", f"{model}={path}"]
        args += spec.get("extra", [])
        proc = Proc(spec.get("name") or f"worker-{port}", lb_cmd(*args), log_dir)
        proc.grpc = grpc_addr
        started.append((proc, f"http://127.0.0.1:{port}", next(iter(spec["models"]))))
    try:
        for proc, url, first in started:
            proc.wait_http(f"{url}/v1/models/{first}", timeout, model_available(first))
            if proc.grpc:
                def grpc_open(address: str = proc.grpc) -> bool:
                    return tcp_open(address)

                wait_until(grpc_open, 30.0, f"{proc.name} gRPC")
    except BaseException:
        for proc, _, _ in started:
            proc.stop()
        raise
    return [(proc, url) for proc, url, _ in started]


def start_worker(log_dir: Path, models: dict[str, Path], *, port: int | None = None,
                 delay_ms: float = 0.0, name: str | None = None, extra: list[str] | None = None,
                 timeout: float = 120.0) -> tuple[Proc, str]:
    """Start `tfserving-lb worker` serving `models` and wait until the first is AVAILABLE."""
    spec = {"models": models, "port": port, "delay_ms": delay_ms, "name": name,
            "extra": extra or []}
    return start_workers(log_dir, [spec], timeout)[0]
