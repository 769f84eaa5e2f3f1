"""`tfserving-lb serve --workers N`: N proxy processes on the same ports, one proxy to read.

Called by `lb.cli` when N > 1. Each worker is a complete `serve` process (its
own event loop, node state, health checks and memory cache); they share the
REST and gRPC ports through SO_REUSEPORT, so the kernel spreads connections
over them, and share cached results only through Redis (`cache.backend: tiered`
or `redis`). Workers bind no admin port: the supervisor serves `listen.admin`
and `listen.metrics` for all of them (`lb.fleet.view.FleetView` over each
worker's control socket, `lb.fleet.control`), so `/stats`, `/metrics`,
`/history` and the dashboard answer for the whole proxy.

The supervisor guarantees: SIGTERM/SIGINT are forwarded to every worker;
SIGHUP, a change of the file and `POST /reload` reload every worker with the
same validated text; a worker that dies unexpectedly is replaced after a
back-off (at most `MAX_RESTARTS` per minute, then the supervisor gives up and
stops the rest), from the config text the supervisor holds, and its counts carry
over into the totals; on shutdown every worker gets `GRACE_S` to drain before it
is killed. Its private directory (control sockets) is removed on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path

from aiohttp import web

from lb.admin.app import make_admin_app, make_metrics_app, warn_if_exposed
from lb.config import parse_text, split_hostport
from lb.fleet.control import CONTROL_ENV, SUPERVISOR_ENV
from lb.fleet.view import FleetView, Worker

log = logging.getLogger("lb.server")

GRACE_S = 15.0
MAX_RESTARTS = 5
READY_S = 60.0               # workers answering their control socket before the admin port
POLL_S = 0.2                 # how often exits are noticed


class Supervisor:
    def __init__(self, config_path: str, workers: int) -> None:
        self.config_path = config_path
        self.size = workers
        self._stop = asyncio.Event()
        self._restarts: deque[float] = deque()
        self._generation = 0
        self._dir = ""
        self._gave_up = False
        self._pending: asyncio.Task[object] | None = None    # the latest SIGHUP reload
        self.fleet: FleetView

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or workers crash too often); the exit code."""
        from lb.server import run

        code: list[int] = []

        text = Path(self.config_path).read_text()

        async def main() -> None:
            code.append(await self._main(text))

        run(main)
        return code[0] if code else 1

    async def _main(self, text: str) -> int:
        cfg = parse_text(text, self.config_path)            # lb.cli validated it already
        self._dir = tempfile.mkdtemp(prefix="tfslb-")
        self.fleet = FleetView(cfg, text, self.config_path, self.size)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        tasks: list[asyncio.Task[object]] = []
        runners: list[web.AppRunner] = []
        try:
            for slot in range(self.size):
                await self._spawn(slot)
            monitor = asyncio.create_task(self._monitor(), name="supervise")
            await self._wait_ready()
            try:
                await self._serve_admin(runners)
            except OSError as exc:           # the port is taken: stop the workers, exit 1
                log.error("cannot serve the admin or metrics port: %s", exc)
                self._gave_up = True
                self._stop.set()
            tasks = [asyncio.create_task(self.fleet.tick_loop(), name="history"),
                     asyncio.create_task(self.fleet.watch_loop(), name="config-watch")]
            await monitor
            return await self._drain()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for runner in runners:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(runner.cleanup(), 2.0)
            await self.fleet.close()
            shutil.rmtree(self._dir, ignore_errors=True)

    def _on_sighup(self) -> None:
        task = asyncio.create_task(self.fleet.reload("SIGHUP"), name="config-reload:SIGHUP")
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
        self._pending = task          # referenced until the next SIGHUP

    async def _spawn(self, slot: int) -> None:
        self._generation += 1
        socket = os.path.join(self._dir, f"w{slot}.{self._generation}.sock")
        env = {**os.environ, CONTROL_ENV: socket, SUPERVISOR_ENV: str(os.getpid())}
        cmd = [sys.executable, "-m", "lb", "serve", "--config", self.config_path,
               "--workers", "1"]
        child = await asyncio.to_thread(_start, cmd, env, self.fleet.text)
        self.fleet.add(Worker(slot, child, socket))
        log.info("started proxy process %d (worker %d)", child.pid, slot)

    async def _wait_ready(self) -> None:
        """Until every worker answers on its control socket (bounded by READY_S)."""
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline and not self._stop.is_set():
            replies = await asyncio.gather(*(w.ask("GET", "/healthz", limit_s=1.0)
                                             for w in self.fleet.workers.values()))
            if replies and all(r is not None for r in replies):
                return
            await asyncio.sleep(0.1)
        log.warning("not every worker answered within %.0f s; serving the admin port anyway",
                    READY_S)

    async def _serve_admin(self, runners: list[web.AppRunner]) -> None:
        """listen.admin and listen.metrics over the fleet (their runners added to `runners`)."""
        cfg = self.fleet.cfg
        warn_if_exposed(cfg.listen.admin, cfg.admin.token)
        sites = [(make_admin_app(self.fleet), cfg.listen.admin)]
        if cfg.listen.metrics:
            sites.append((make_metrics_app(self.fleet), cfg.listen.metrics))
        for app, address in sites:
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
            await runner.setup()
            runners.append(runner)
            host, port = split_hostport(address)
            await web.TCPSite(runner, host, port, backlog=128).start()

    async def _monitor(self) -> None:
        """Replace workers that exit, until told to stop or they crash too often."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), POLL_S)
            if self._stop.is_set():
                return
            for slot, worker in list(self.fleet.workers.items()):
                if worker.proc.poll() is None:
                    continue
                await self.fleet.remove(slot)
                if not self._may_restart(worker):
                    self._gave_up = True
                    self._stop.set()
                    return
                await asyncio.sleep(min(0.5 * len(self._restarts), 2.0))
                if self._stop.is_set():
                    return
                await self._spawn(slot)
                self.fleet.restarts += 1

    def _may_restart(self, worker: Worker) -> bool:
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > 60:
            self._restarts.popleft()
        if len(self._restarts) >= MAX_RESTARTS:
            log.error("proxy processes keep exiting (last: %d with %s); stopping",
                      worker.pid, worker.proc.returncode)
            return False
        self._restarts.append(now)
        log.warning("proxy process %d exited with %s; restarting", worker.pid,
                    worker.proc.returncode)
        return True

    async def _drain(self) -> int:
        """SIGTERM to every worker, GRACE_S to exit, then SIGKILL; 0 if all exited 0."""
        children = [w.proc for w in self.fleet.workers.values()]
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        codes = []
        for child in children:
            try:
                codes.append(await asyncio.to_thread(
                    child.wait, max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                log.error("proxy process %d did not stop in %.0f s; killing it",
                          child.pid, GRACE_S)
                child.kill()
                codes.append(await asyncio.to_thread(child.wait, 5))
        return 0 if codes and all(c == 0 for c in codes) and not self._gave_up else 1


def _start(cmd: list[str], env: dict[str, str], text: str) -> subprocess.Popen[bytes]:
    """Start a worker and write the config text on its stdin (then closed)."""
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, env=env)
    assert child.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        child.stdin.write(text.encode())
    with contextlib.suppress(BrokenPipeError):
        child.stdin.close()
    return child
