"""Real processes for the test suite: free ports, redis-server, workers, the proxy.

Every helper here waits with a deadline and every process it starts is stopped
by the caller (fixtures do it in their teardown). Output goes to a log file in
the test's tmp dir so a failing test can print it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

ROOT = Path(__file__).resolve().parent.parent
# Set to 1 by `scripts/test.sh --fast`: no process may start (tests/conftest.py).
FAST_ENV = "TFSLB_TEST_FAST"
TEST_MODELS = ROOT / "tests" / "data" / "models"


_ISSUED: set[int] = set()
_PR_SET_PDEATHSIG = 1
try:                                    # looked up here: the forked child only calls it
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):       # not Linux: children of a killed run may stay
    _PRCTL = None


def die_with_us() -> Callable[[], None] | None:
    """A `preexec_fn` for Popen: the child gets SIGKILL when this process dies, even by
    SIGKILL (Linux PR_SET_PDEATHSIG), and kills itself if it already has.

    Called by every launcher here (and by tests/browser.py). The kernel ties the
    signal to the *thread* that forks, so it is set only from the main thread (whose
    end is the process's): a child started from another thread (asyncio.to_thread)
    would die when that thread ends, so it gets None, and may outlive a killed run.
    A child in a process group of its own (start_new_session) still gets the signal;
    its own children are its business (the proxy's workers die with their supervisor).
    """
    if _PRCTL is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()
    prctl = _PRCTL

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:      # the parent died before prctl: the signal is lost
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago and that this test session
    has not handed out before (the kernel may offer the same one twice, and our
    servers bind with SO_REUSEPORT, so two of them would silently share it)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _ISSUED:
            _ISSUED.add(port)
            return port
    raise RuntimeError("no fresh free port after 100 tries")


class ProcessDied(RuntimeError):
    """A process a test waits for has exited: waiting longer cannot help."""


def tcp_open(address: str) -> bool:
    """Whether "host:port" accepts a TCP connection now."""
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=1.0):
        return True


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.05) -> None:
    """Poll `check` until it returns True; raise TimeoutError naming `what`.

    Exceptions from `check` count as "not yet", except ProcessDied."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except ProcessDied:
            raise
        except Exception:
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 10.0, context: ssl.SSLContext | None = None,
         ) -> tuple[int, dict[str, str], bytes]:
    """One blocking HTTP call; returns (status, headers, body) for any status.
    `context`: for https:// URLs (a test's own CA)."""
    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def get_json(url: str, timeout: float = 10.0) -> Any:
    status, _, body = http("GET", url, timeout=timeout)
    assert status == 200, (url, status, body)
    return json.loads(body)


class Proc:
    """A child process with its output in a log file; `stop()` is idempotent.
    It dies with this process, even killed (`die_with_us`)."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.cmd = cmd
        self.grpc: str | None = None     # "host:port" of its gRPC server, if it has one
        self.log_path = log_dir / f"{name}.log"
        full_env = dict(os.environ)
        full_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        full_env["PYTHONUNBUFFERED"] = "1"
        if env:
            full_env.update(env)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT,
            start_new_session=True, preexec_fn=die_with_us(),
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        if not self._log.closed:
            self._log.close()
        return self.popen.returncode

    def wait_http(self, url: str, timeout: float,
                  ok: Callable[[int, bytes], bool] | None = None) -> None:
        """Wait until `url` answers (and `ok(status, body)` holds), or fail with the log."""
        def check() -> bool:
            if not self.alive():
                raise ProcessDied(
                    f"{self.name} exited with {self.popen.returncode}:\n{self.log()}")
            status, _, body = http("GET", url, timeout=2.0)
            return ok(status, body) if ok else status < 500
        try:
            wait_until(check, timeout, f"{self.name} at {url}", interval=0.1)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- {self.name} log ---\n{self.log()}") from None


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


class RedisServer:
    """A private redis-server on a free port; `kill()` and `start()` simulate outages."""

    def __init__(self, log_dir: Path, port: int | None = None):
        self.port = port or free_port()
        self.log_dir = log_dir
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (.ci/run installs it)"
        self.proc = Proc(f"redis-{self.port}", [
            exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--maxmemory", "256mb", "--maxmemory-policy", "allkeys-lru",
        ], self.log_dir)
        wait_until(self._ping, 10.0, f"redis-server on {self.port}")

    def _ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def kill(self) -> None:
        if self.proc:
            self.proc.signal(signal.SIGKILL)
            self.proc.popen.wait(5)
            self.proc.stop()

    def stop(self) -> None:
        if self.proc:
            self.proc.stop()


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.stop()


def write_config(path: Path, doc: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


class ProxyProc:
    """`tfserving-lb serve` in a child process, with its REST and admin URLs."""

    def __init__(self, log_dir: Path, nodes: list[dict[str, Any]], *, name: str = "proxy",
                 grpc: bool = False, workers: int = 1, metrics: bool = False,
                 tls: dict[str, Any] | None = None, **sections: Any):
        self.rest_port, self.admin_port = free_port(), free_port()
        # with `tls` (listen.tls) the REST front is https (tests.certs names 127.0.0.1)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.rest_port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.grpc = f"127.0.0.1:{free_port()}" if grpc else None   # the gRPC front, if asked
        # listen.metrics, if asked: GET /metrics alone
        self.metrics = f"http://127.0.0.1:{free_port()}" if metrics else None
        listen = {"rest": f"127.0.0.1:{self.rest_port}", "grpc": self.grpc,
                  "admin": f"127.0.0.1:{self.admin_port}", "tls": tls}
        if self.metrics:
            listen["metrics"] = self.metrics.removeprefix("http://")
        doc: dict[str, Any] = {"listen": listen, "nodes": nodes, **sections}
        self.config_path = write_config(log_dir / f"{name}-{self.rest_port}.yaml", doc)
        self.proc = Proc(f"{name}-{self.rest_port}",
                         lb_cmd("serve", "--config", str(self.config_path),
                                "--workers", str(workers)), log_dir)
        try:
            self.proc.wait_http(f"{self.admin}/stats", 30.0, lambda s, _b: s == 200)
            if self.grpc:
                wait_until(lambda: tcp_open(str(self.grpc)), 10.0, f"{name} gRPC front")
        except BaseException:
            self.proc.stop()                 # a proxy that did not come up is not left behind
            raise

    def stats(self) -> Any:
        return get_json(f"{self.admin}/stats")

    def stop(self) -> int | None:
        return self.proc.stop()


def node(name: str, url: str, weight: float = 1.0) -> dict[str, Any]:
    return {"name": name, "rest": url, "weight": weight}


def rewrite_config(path: Path, doc: dict[str, Any]) -> None:
    """Replace a config file atomically (write aside, rename), as deploy tools do,
    so a watcher never reads half a file."""
    import yaml

    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)


def read_config(path: Path) -> dict[str, Any]:
    import yaml

    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


def scrape(admin_url: str) -> dict[str, Metric]:
    """GET /metrics parsed by prometheus_client: {family name: Metric}."""
    from prometheus_client.parser import text_string_to_metric_families

    status, _, body = http("GET", f"{admin_url}/metrics")
    assert status == 200, (status, body)
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def family_of(name: str) -> str:
    """The family a sample name belongs to (tfslb_x_total -> tfslb_x)."""
    for suffix in ("_total", "_count", "_sum", "_bucket"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    """The value of one sample (`name` as exposed, e.g. tfslb_requests_total)."""
    for s in families[family_of(name)].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise KeyError(f"{name}{labels} not in /metrics")
