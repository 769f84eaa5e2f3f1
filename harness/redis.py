"""A private redis-server on a free 127.0.0.1 port (never the machine's :6379).

Called by the suite's fixtures (tests/conftest.py: `redis_server`, `private_redis`)
and scripts/benchenv.py (`Bench.start_redis`). Guarantees: `start()` returns once
the server answers PING (10 s); nothing is saved to disk; `kill()` (SIGKILL) and
`start()` on the same port simulate an outage; the server dies with this process.
"""

from __future__ import annotations

import shutil
import signal
import socket
from pathlib import Path

from harness.procs import Proc, free_port, wait_until


class RedisServer:
    """A private redis-server on a free port; `kill()` and `start()` simulate outages."""

    def __init__(self, log_dir: Path, port: int | None = None, maxmemory_mb: int = 256):
        self.port = port or free_port()
        self.log_dir = log_dir
        self.maxmemory_mb = maxmemory_mb
        self.proc: Proc | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if not exe:
            raise RuntimeError("redis-server is not installed (bash scripts/setup.sh)")
        self.proc = Proc(f"redis-{self.port}", [
            exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--maxmemory", f"{self.maxmemory_mb}mb",
            "--maxmemory-policy", "allkeys-lru",
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
