"""Processes on loopback for the tests and the benchmarks: free ports, waits with a
deadline, one-shot HTTP, `Proc`, a child process logged to a file, and
`ensure_tool` (apt-get installs a missing nginx or wrk, before anything is measured).

Called by tests/procs.py (the suite's launchers) and scripts/ (benchenv and the
bench_*.py). Every wait here has a deadline; every process `Proc` starts is
stopped by its caller, and dies with this process even if it is killed
(`die_with_us`). Imports nothing of lb/, cache/ or backends/.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


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


def loopback_context(url: str) -> ssl.SSLContext | None:
    """For https on loopback with certificates made by the run: not verified."""
    return ssl._create_unverified_context() if url.startswith("https:") else None


def wait_http(url: str, timeout: float) -> None:
    """Until `url` answers 200 (https unverified), or TimeoutError naming it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1.0, context=loopback_context(url)) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def get_json(url: str, timeout: float = 10.0) -> Any:
    status, _, body = http("GET", url, timeout=timeout)
    assert status == 200, (url, status, body)
    return json.loads(body)


class Proc:
    """A child process with its output in a log file, in a session of its own (cwd: the
    repository, or `cwd`); `stop()` is idempotent and leaves nothing of its session
    running. It dies with this process, even killed (`die_with_us`)."""

    def __init__(self, name: str, cmd: list[str], log_dir: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None):
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
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd or ROOT,
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
        # Its session's other processes (a supervisor's children) do not outlive it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        if not self._log.closed:
            self._log.close()
        return self.popen.returncode

    def wait_http(self, url: str, timeout: float,
                  ok: Callable[[int, bytes], bool] | None = None, interval: float = 0.1) -> None:
        """Wait until `url` answers (and `ok(status, body)` holds), or fail with the log."""
        def check() -> bool:
            if not self.alive():
                raise ProcessDied(
                    f"{self.name} exited with {self.popen.returncode}:\n{self.log()}")
            status, _, body = http("GET", url, timeout=2.0)
            return ok(status, body) if ok else status < 500
        try:
            wait_until(check, timeout, f"{self.name} at {url}", interval=interval)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- {self.name} log ---\n{self.log()}") from None


def ensure_tool(exe: str, apt_pkg: str) -> str:
    """The path of `exe`; when missing, installs `apt_pkg` with apt-get first."""
    found = shutil.which(exe) or next((p for p in (f"/usr/sbin/{exe}", f"/usr/bin/{exe}")
                                      if Path(p).exists()), None)
    if found:
        return found
    print(f"bench: {exe} is missing, installing {apt_pkg} (apt-get)", file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [*sudo, "apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=120",
               apt_pkg]
    if subprocess.run(install, env=env, timeout=900).returncode != 0:
        subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env, timeout=900, check=True)
        subprocess.run(install, env=env, timeout=900, check=True)
    found = shutil.which(exe) or (f"/usr/sbin/{exe}" if Path(f"/usr/sbin/{exe}").exists()
                                  else None)
    if not found:
        raise RuntimeError(f"{apt_pkg} installed but {exe} is not on PATH")
    return found
