"""Start and stop a local pool of worker processes (for the demo and benchmarks).

Called by the proxy demo in `lb/` and by scripts; never imports TensorFlow (the
workers it starts do, in their own processes). Each worker is
`[sys.executable, "-m", "lb", "worker", ...]`, so it runs the same interpreter
and package as the caller.

Guarantees: `start_pool` returns one Popen per port, in order, already started
(not yet AVAILABLE: use `wait_available`); `stop_pool` sends SIGTERM, waits up
to `timeout` and kills what is left, so no worker outlives it.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

logger = logging.getLogger("backends")


def worker_cmd(model_name: str, base_path: Path | str, port: int, delay_ms: float = 0.0,
               *, host: str = "127.0.0.1", threads: int = 2,
               extra: list[str] | None = None) -> list[str]:
    """The command line of one worker serving `model_name` from `base_path` on `port`."""
    return [
        sys.executable, "-m", "lb", "worker",
        "--model-name", model_name, "--model-base-path", str(base_path),
        "--host", host, "--port", str(port), "--delay-ms", str(delay_ms),
        "--threads", str(threads), *(extra or []),
    ]


def start_pool(model_name: str, base_path: Path | str, ports: list[int],
               delays_ms: list[float] | None = None, *, log_dir: Path | None = None,
               host: str = "127.0.0.1", threads: int = 1) -> list[subprocess.Popen[bytes]]:
    """Launch one worker per port (delay `delays_ms[i]`, default 0); output to
    `log_dir/worker-PORT.log` when given, else inherited from the caller."""
    delays = list(delays_ms or [])
    if len(delays) > len(ports):
        raise ValueError("more delays than ports")
    delays += [0.0] * (len(ports) - len(delays))
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    procs = []
    for port, delay in zip(ports, delays, strict=True):
        out: IO[bytes] | None = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            out = open(log_dir / f"worker-{port}.log", "ab")  # noqa: SIM115 - child owns it
        cmd = worker_cmd(model_name, base_path, port, delay, host=host, threads=threads)
        procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None,
                                      env=env, start_new_session=True))
        if out is not None:
            out.close()  # the child has its own copy of the descriptor
        logger.info("started worker pid %d on port %d (delay %.1f ms)",
                    procs[-1].pid, port, delay)
    return procs


def stop_pool(procs: list[subprocess.Popen[bytes]], timeout: float = 10.0) -> list[int | None]:
    """SIGTERM every worker, wait until `timeout` (shared), SIGKILL stragglers; exit codes."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("worker pid %d did not stop in %.0f s; killing it", proc.pid, timeout)
            proc.kill()
            proc.wait(5)
    return [proc.returncode for proc in procs]


def model_state(url: str, model: str, timeout: float = 2.0) -> list[str]:
    """The states of `model`'s versions at worker `url` ([] when it does not answer 200)."""
    try:
        with urllib.request.urlopen(f"{url}/v1/models/{model}", timeout=timeout) as resp:
            body = json.loads(resp.read())
    except (OSError, urllib.error.URLError, ValueError):
        return []
    return [str(v.get("state")) for v in body.get("model_version_status", [])]


def wait_available(url: str, model: str, timeout: float = 60.0,
                   proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until a version of `model` at `url` is AVAILABLE; TimeoutError after
    `timeout` s, RuntimeError at once if `proc` (the worker) exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "AVAILABLE" in model_state(url, model):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"worker for {url} exited with code {proc.returncode}")
        time.sleep(0.1)
    raise TimeoutError(f"{model} not AVAILABLE at {url} after {timeout:.0f} s")
