"""`tfserving-lb serve --workers N`: N proxy processes on the same ports.

Called by `lb.cli` when N > 1. Each child is a complete `serve` process (its
own event loop, node state, health checks and memory cache); they share the
listening ports through SO_REUSEPORT, so the kernel spreads connections over
them, and share cached results only through Redis (`cache.backend: tiered` or
`redis`). `/stats` and `/metrics` answer for the process that took the
connection (`pid` in `/stats` says which).

The supervisor guarantees: SIGTERM/SIGINT/SIGHUP are forwarded to every
child; a child that dies unexpectedly is restarted after a back-off (at most
`MAX_RESTARTS` per minute, then the supervisor gives up and stops the rest);
on shutdown every child gets `GRACE_S` to drain before it is killed.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections import deque
from types import FrameType

log = logging.getLogger("lb.server")

GRACE_S = 15.0
MAX_RESTARTS = 5


class Supervisor:
    def __init__(self, config_path: str, workers: int) -> None:
        self.config_path = config_path
        self.workers = workers
        self.children: list[subprocess.Popen[bytes]] = []
        self._stopping = False
        self._restarts: deque[float] = deque()

    def _spawn(self) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "lb", "serve", "--config", self.config_path,
               "--workers", "1"]
        child = subprocess.Popen(cmd)
        log.info("started proxy process %d", child.pid)
        return child

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stopping = True
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signum)

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._forward)
        self.children = [self._spawn() for _ in range(self.workers)]
        while not self._stopping:
            time.sleep(0.2)
            if not self._replace_dead():
                self._forward(signal.SIGTERM, None)
                break
        return self._drain()

    def _replace_dead(self) -> bool:
        """Restart children that exited; False when they crash too often."""
        for i, child in enumerate(self.children):
            if child.poll() is None or self._stopping:
                continue
            now = time.monotonic()
            while self._restarts and now - self._restarts[0] > 60:
                self._restarts.popleft()
            if len(self._restarts) >= MAX_RESTARTS:
                log.error("proxy processes keep exiting (last: %d with %s); stopping",
                          child.pid, child.returncode)
                return False
            self._restarts.append(now)
            log.warning("proxy process %d exited with %s; restarting", child.pid,
                        child.returncode)
            time.sleep(min(0.5 * len(self._restarts), 2.0))
            self.children[i] = self._spawn()
        return True

    def _drain(self) -> int:
        deadline = time.monotonic() + GRACE_S
        codes = []
        for child in self.children:
            try:
                codes.append(child.wait(max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                log.error("proxy process %d did not stop in %.0f s; killing it",
                          child.pid, GRACE_S)
                child.kill()
                codes.append(child.wait(5))
        return 0 if all(c == 0 for c in codes) else 1
