"""Processes for the benchmarks: MNIST workers, a private redis-server, proxies.

Used by scripts/bench_*.py. Every process is started on a free 127.0.0.1
port, waited for with a deadline and stopped by `Bench.close()` (also on
errors). Nothing here imports TensorFlow: workers are child processes.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from backends.pool import start_pool, stop_pool, wait_available

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out"


_ISSUED: set[int] = set()


def free_port() -> int:
    """A free 127.0.0.1 port not handed out before in this run (the kernel may offer
    one twice; the proxy binds with SO_REUSEPORT, so a duplicate would be shared)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _ISSUED:
            _ISSUED.add(port)
            return port


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


class Bench:
    """Owns every process of one benchmark run."""

    def __init__(self) -> None:
        OUT.mkdir(exist_ok=True)
        self.logs = OUT / "logs"
        self.logs.mkdir(exist_ok=True)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.others: list[subprocess.Popen[bytes]] = []

    def mnist_model(self) -> Path:
        base = OUT / "models" / "mnist"
        if not (base / "1" / "saved_model.pb").exists():
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
            subprocess.run([sys.executable, "-m", "lb", "export-mnist", str(base)],
                           check=True, timeout=600, env=env)
        return base

    def start_workers(self, model: str, base: Path, delays_ms: list[float]) -> list[str]:
        ports = [free_port() for _ in delays_ms]
        self.workers += start_pool(model, base, ports, delays_ms, log_dir=self.logs)
        urls = [f"http://127.0.0.1:{p}" for p in ports]
        for url in urls:
            wait_available(url, model, timeout=120.0)
        return urls

    def start_redis(self) -> str:
        exe = shutil.which("redis-server")
        if not exe:
            raise RuntimeError("redis-server is not installed (bash scripts/setup.sh)")
        port = free_port()
        self.others.append(subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--maxmemory", "512mb", "--maxmemory-policy", "allkeys-lru"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                return f"redis://127.0.0.1:{port}/0"
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def start_proxy(self, name: str, nodes: list[dict[str, Any]],
                    **sections: Any) -> tuple[str, str, subprocess.Popen[bytes]]:
        """`tfserving-lb serve` with these nodes; returns (url, admin url, process)."""
        rest, admin = free_port(), free_port()
        doc = {"listen": {"rest": f"127.0.0.1:{rest}", "grpc": None,
                          "admin": f"127.0.0.1:{admin}"}, "nodes": nodes, **sections}
        path = self.logs / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen([sys.executable, "-m", "lb", "serve", "--config", str(path)],
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.others.append(proc)
        _wait_http(f"http://127.0.0.1:{admin}/stats", 30.0)
        return f"http://127.0.0.1:{rest}", f"http://127.0.0.1:{admin}", proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def close(self) -> None:
        for proc in reversed(self.others):
            if proc.poll() is None:
                self.stop(proc)
        stop_pool(self.workers, timeout=10.0)
