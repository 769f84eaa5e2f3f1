"""Processes for the benchmarks: MNIST workers, a private redis-server, proxies, nginx.

Used by scripts/bench_*.py. Every process is started on a free 127.0.0.1
port, waited for with a deadline and stopped by `Bench.close()` (also on
errors); a proxy started with `--workers N` runs in its own process group,
so stopping it never leaves a child behind. Nothing here imports TensorFlow:
workers are child processes (nginx: harness/nginx.py). `worker_counts` and
`settle_workers` read the MNIST workers' own counters (batch rows per call, and
when a backlog has drained). The charts live in
scripts/charts.py.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from backends.pool import start_pool, stop_pool, wait_available
from harness import nginx, procs
from harness.procs import free_port, loopback_context, wait_http
from harness.proxy import ProxyProc
from harness.redis import RedisServer

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out"




def http_get(url: str, timeout: float = 2.0, method: str = "GET", body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """`harness.procs.http` as the benchmarks call it: GET by default, a short
    timeout, https on loopback unverified (certificates made by the run)."""
    return procs.http(method, url, body, headers, timeout, loopback_context(url))


def proxy_stats(admin: str, processes: int = 1, timeout: float = 10.0) -> dict[int, Any]:
    """`/stats` behind `admin` ({pid: doc}). The proxy answers for all its processes
    in one document (`processes` lists them); a proxy from before that answered for
    the process that took the connection, so for one of those ask on fresh
    connections until N pids answered (or the deadline passed: fewer entries)."""
    host, _, port = admin.removeprefix("http://").partition(":")
    found: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    while len(found) < processes and time.monotonic() < deadline:
        conn = http.client.HTTPConnection(host, int(port), timeout=2.0)
        try:
            conn.request("GET", "/stats")
            resp = conn.getresponse()
            if resp.status == 200:
                doc = orjson.loads(resp.read())
                found[int(doc["pid"])] = doc
                if "processes" in doc:          # one document for the whole proxy
                    return found
        except OSError:
            time.sleep(0.05)
        finally:
            conn.close()
    return found


def processes_up(doc: dict[str, Any]) -> int:
    """How many processes a /stats document answers for (1 for a proxy from before
    `processes`)."""
    if "processes" not in doc:
        return 1
    return sum(1 for p in doc["processes"] if p.get("state") == "up")


HEDGE_SETTINGS = frozenset({"enabled", "max_ratio"})     # in /stats "hedge": not counters


def proxy_report(admin: str | None, processes: int) -> dict[str, Any]:
    """From every process's /stats: the hedge counters summed (None: /stats has no
    "hedge" key; settings such as max_ratio are the same in each, kept as they are)
    and the node requests each process sent (the SO_REUSEPORT spread)."""
    if admin is None:
        return {"hedge": None}
    docs = proxy_stats(admin, processes, timeout=10.0)
    whole = [d for d in docs.values() if "processes" in d]
    if whole:                       # one document: counters already summed
        own = whole[0]["processes"]
        spread = sorted(sum(int(n.get("requests", 0)) for n in p.get("nodes", ())) for p in own)
        return {"hedge": merge_hedge(whole), "processes_seen": len(own),
                "requests_per_process": spread}
    spread = sorted(sum(int(n.get("requests", 0)) for n in d["nodes"]) for d in docs.values())
    return {"hedge": merge_hedge(list(docs.values())), "processes_seen": len(docs),
            "requests_per_process": spread}


def merge_hedge(docs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The "hedge" sections of several processes' /stats as one: counters summed,
    settings kept; None when no document has one."""
    hedge: dict[str, Any] | None = None
    for doc in docs:
        if isinstance(doc.get("hedge"), dict):
            hedge = hedge or {}
            for k, v in doc["hedge"].items():
                if k in HEDGE_SETTINGS:
                    hedge[k] = v
                elif isinstance(v, int | float) and not isinstance(v, bool):
                    hedge[k] = hedge.get(k, 0) + v
    return hedge


def wait_proxy_ready(admin: str, processes: int = 1, timeout: float = 30.0) -> None:
    """Until every process behind `admin` answers /stats with all nodes healthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        docs = proxy_stats(admin, processes, timeout=min(5.0, deadline - time.monotonic()))
        if sum(processes_up(d) for d in docs.values()) == processes and all(
                n.get("healthy") for d in docs.values() for n in d["nodes"]):
            return
        time.sleep(0.2)
    raise TimeoutError(f"{admin}: {processes} process(es) with healthy nodes not seen "
                       f"within {timeout}s")


def worker_counts(workers: list[str]) -> tuple[int, int]:
    """(inference requests, batch rows) the workers at these URLs served so far,
    summed from their `/_worker/stats`: rows / requests is the batch size they saw."""
    reqs = rows = 0
    for url in workers:
        status, _h, body = http_get(f"{url}/_worker/stats", timeout=5.0)
        if status != 200:
            raise RuntimeError(f"{url}/_worker/stats answered {status}")
        doc = orjson.loads(body)
        reqs, rows = reqs + int(doc["requests"]), rows + int(doc["rows"])
    return reqs, rows


def settle_workers(workers: list[str], timeout: float = 20.0,
                   poll_s: float = 0.3) -> tuple[int, int]:
    """`worker_counts` once they stop moving for `poll_s` (or at the deadline), so
    the backlog of one overloaded run does not spill into the next run."""
    deadline = time.monotonic() + timeout
    last = worker_counts(workers)
    while time.monotonic() < deadline:
        time.sleep(poll_s)
        now = worker_counts(workers)
        if now == last:
            return now
        last = now
    return last


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


class Bench:
    """Owns every process of one benchmark run."""

    def __init__(self) -> None:
        OUT.mkdir(exist_ok=True)
        self.logs = OUT / "logs"
        self.logs.mkdir(exist_ok=True)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.others: list[subprocess.Popen[bytes]] = []
        self._groups: set[int] = set()
        # `kill` or `timeout` stops the run like Ctrl-C: the caller's `finally:
        # bench.close()` runs, and no worker or nginx outlives it.
        signal.signal(signal.SIGTERM, _exit_on_sigterm)

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
        """A private redis-server (harness/redis.py, 512 MB, LRU); its URL."""
        server = RedisServer(self.logs, maxmemory_mb=512)
        server.start()
        assert server.proc is not None
        self.others.append(server.proc.popen)
        return server.url

    def start_simnode(self, name: str, mean_ms: float, *, slots: int = 2,
                      model: str = "mnist") -> str:
        """A simulated node (harness/simnode.py, sigma 0.5) on a free port; its URL."""
        from harness import simnode

        port = free_port()
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
        self.others.append(subprocess.Popen(simnode.command(port, mean_ms, slots=slots,
                                                            model=model),
                                            stdout=log, stderr=subprocess.STDOUT))
        log.close()
        wait_http(f"http://127.0.0.1:{port}/v1/models/{model}", 15.0)
        return f"http://127.0.0.1:{port}"

    def start_proxy(self, name: str, nodes: list[dict[str, Any]], *, workers: int = 1,
                    ready: bool = True, env: dict[str, str] | None = None,
                    exe: str | None = None, source: Path | None = None,
                    listen: dict[str, str] | None = None, tls: dict[str, Any] | None = None,
                    **sections: Any) -> tuple[str, str, subprocess.Popen[bytes]]:
        """`tfserving-lb serve [--workers N]` with these nodes and `env` added to the
        environment; returns (url, admin url, process). With `ready`, returns once
        every process sees every node healthy. `exe`: another install's console
        script (e.g. a venv's bin/tfserving-lb) instead of this interpreter's `lb`;
        `source`: run the proxy of another checkout (its `lb/` imported first: a
        before/after comparison in one run); `listen`: more listen settings (e.g.
        {"metrics": "127.0.0.1:port"}); `tls`: listen.tls (the URL is https)."""
        proxy = ProxyProc(self.logs, nodes, name=name, workers=workers, tls=tls, listen=listen,
                          exe=exe, source=source, env=env, **sections)
        self.others.append(proxy.proc.popen)
        self._groups.add(proxy.proc.pid)    # its own session: stopped as one group
        if ready:
            wait_proxy_ready(proxy.admin, workers, 30.0)
        return proxy.url, proxy.admin, proxy.proc.popen

    def start_nginx(self, name: str, http_conf: str, wait_url: str, *,
                    processes: int = 1) -> subprocess.Popen[bytes]:
        """`harness.nginx.start` under bench-out/nginx/NAME, stopped by `close()`."""
        proc = nginx.start(OUT / "nginx" / name, http_conf, wait_url, processes=processes)
        self.others.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.pid in self._groups:        # children of `--workers N` outliving it
            self._groups.discard(proc.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def close(self) -> None:
        for proc in reversed(self.others):
            if proc.poll() is None or proc.pid in self._groups:
                self.stop(proc)
        stop_pool(self.workers, timeout=10.0)
