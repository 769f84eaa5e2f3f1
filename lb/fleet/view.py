"""The supervisor's view of its workers: `/stats`, `/metrics`, `/history` and reloads for all.

Called by `lb.supervisor` (membership: `add`, `remove`; the loops `tick_loop`
and `watch_loop`; `reload` on SIGHUP) and by `lb.admin.app`'s handlers, for which it
is the `AdminView` of `serve --workers N`. It talks to each worker over the
worker's control socket (`lb.fleet.control`), so the request path pays nothing
for it: a worker only counts, as one process does, and is asked at read time.

Guarantees:

* Reads answer for the whole proxy: the live workers' documents merged by
  `lb.fleet.rules` (`/stats`), their families merged by `lb.fleet.prom`
  (`/metrics`), one history ring fed once a second with every worker's second.
  A worker that does not answer within `ASK_TIMEOUT_S` is shown with its last
  document (state "stale"), so its counts never drop out of a total.
* Counters never go backwards while the supervisor runs, a worker replaced
  included: every read and every tick (once a second) keeps each worker's latest
  counts, and `remove` carries them over into the totals. A worker killed
  outright loses what it counted since its last tick (at most a second); one
  that exits normally loses nothing it reported.
* Reloads (SIGHUP, a change of the file, POST /reload) read and validate the
  file once, then hand the same text to every worker: `/stats` `config.version`
  is the one version, and `config.consistent` says whether every worker runs it.
  A replaced worker starts from the text the supervisor holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import CollectorRegistry, GCCollector, ProcessCollector

from lb.admin.history import History, Second, merge_seconds, second_of
from lb.admin.metrics import config_metrics
from lb.admin.source import ConfigStatus
from lb.config import Config, config_version, parse_text
from lb.errors import ConfigError
from lb.fleet.merge import add_counters, counters, merge
from lb.fleet.procinfo import figures
from lb.fleet.prom import Family, MetricMerger, families_of, fleet_metrics, render
from lb.fleet.rules import STATS, own_figures
from lb.reload import LOCK_TIMEOUT_S, READ_TIMEOUT_S, file_stamp

log = logging.getLogger("lb.fleet")

ASK_TIMEOUT_S = 2.0          # a worker's answer to a read or a tick
RELOAD_TIMEOUT_S = READ_TIMEOUT_S + 10.0


class Worker:
    """One worker process as the supervisor knows it."""

    __slots__ = ("answered", "last", "proc", "session", "slot", "socket")

    def __init__(self, slot: int, proc: subprocess.Popen[bytes], socket: str) -> None:
        self.slot = slot
        self.proc = proc
        self.socket = socket
        self.session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=socket))
        self.last: dict[str, Any] | None = None     # its latest /stats document
        self.answered = False                       # did it answer the latest ask

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ask(self, method: str, path: str, data: bytes | None = None,
                  limit_s: float = ASK_TIMEOUT_S, **headers: str) -> Any:
        """One JSON call on the control socket; None when it fails or takes over `limit_s`."""
        try:
            async with self.session.request(
                    method, f"http://worker{path}", data=data, headers=headers,
                    timeout=aiohttp.ClientTimeout(total=limit_s)) as reply:
                if reply.status != 200:
                    return None
                return await reply.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None


class FleetView:
    """See the module docstring; one per supervisor."""

    def __init__(self, cfg: Config, text: str, path: str, workers: int) -> None:
        self.cfg, self.text, self.path = cfg, text, path
        self.size = workers
        self.status = ConfigStatus(path=path, version=config_version(cfg))
        self.history = History()
        self.workers: dict[int, Worker] = {}
        self.restarts = 0               # workers replaced since start
        self._metrics = MetricMerger()
        self._carried: Any = None       # /stats counters of replaced workers
        self._families: list[Any] = []  # the latest merged /metrics
        self._lock = asyncio.Lock()          # reloads
        self._reading = asyncio.Lock()       # snapshots
        self._seen = file_stamp(path)
        self._own = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self._own)
        GCCollector(registry=self._own)

    # -- membership (the supervisor) ------------------------------------------------

    def add(self, worker: Worker) -> None:
        self.workers[worker.slot] = worker

    async def remove(self, slot: int) -> None:
        """The worker in `slot` is gone: carry its counts over, close its session."""
        worker = self.workers.pop(slot, None)
        if worker is None:
            return
        if worker.last is not None:
            self._carried = add_counters(self._carried, counters(STATS, worker.last))
        self._metrics.retire(worker.pid)
        await worker.session.close()
        with contextlib.suppress(OSError):
            os.unlink(worker.socket)

    async def close(self) -> None:
        for worker in list(self.workers.values()):
            await worker.session.close()

    # -- reads (the admin port) -----------------------------------------------------

    def token(self) -> str | None:
        return self.cfg.admin.token

    async def _ask_all(self, method: str, path: str) -> dict[Worker, Any]:
        """The answers of the workers that answered and are still members."""
        workers = list(self.workers.values())
        replies = await asyncio.gather(*(w.ask(method, path) for w in workers))
        for worker, reply in zip(workers, replies, strict=True):
            worker.answered = reply is not None
        return {w: r for w, r in zip(workers, replies, strict=True)
                if r is not None and self.workers.get(w.slot) is w}

    async def _refresh(self, method: str = "GET", path: str = "/snapshot") -> dict[Worker, Any]:
        """Every worker's snapshot (stats and families of one moment): the latest counts
        of each, for the totals and for what a worker leaves behind if it dies now."""
        async with self._reading:     # one at a time: a worker's snapshots in their order
            replies = await self._ask_all(method, path)
            self._take(replies)
        return replies

    def _take(self, replies: dict[Worker, Any]) -> None:
        sources: dict[int, list[Family]] = {}
        for worker, reply in replies.items():
            worker.last = reply["stats"]
            sources[worker.pid] = reply["families"]
        self._families = self._merge_families(sources)

    async def stats(self) -> dict[str, Any]:
        await self._refresh()
        return self._stats_doc()

    def _stats_doc(self) -> dict[str, Any]:
        known = [w for w in self.workers.values() if w.last is not None]
        docs = [w.last for w in known if w.last is not None]
        out = merge(STATS, docs, self._carried)
        own = figures()
        out["pid"] = os.getpid()
        out["workers"] = self.size
        out["restarts"] = self.restarts
        out["supervisor"] = {"pid": os.getpid(), **own}
        memory, process = out.setdefault("memory", {}), out.setdefault("process", {})
        memory["rss_bytes"] = memory.get("rss_bytes", 0) + own["rss_bytes"]
        process["cpu_seconds"] = round(process.get("cpu_seconds", 0.0) + own["cpu_seconds"], 3)
        process["open_fds"] = process.get("open_fds", 0) + own["open_fds"]
        versions = {(d.get("config") or {}).get("version") for d in docs}
        out["config"] = {**self.status.as_dict(), "consistent": versions == {self.status.version}}
        out["processes"] = [
            own_figures(w.last, w.slot, "up" if w.answered else "stale") if w.last is not None
            else {"worker": w.slot, "pid": w.pid, "state": "starting"}
            for w in sorted(self.workers.values(), key=lambda w: w.slot)]
        return out

    async def metrics(self) -> bytes:
        await self._refresh()
        return render(self._families)

    def _merge_families(self, sources: dict[int, list[Family]]) -> list[Any]:
        sources = {**sources, os.getpid(): families_of([self._own])}
        merged = [f for f in self._metrics.merge(sources)
                  if not f.name.startswith("tfslb_config_")]
        merged.extend(config_metrics(self.status))
        merged.extend(fleet_metrics(len(self.workers), self.restarts))
        return merged

    async def healthy(self) -> bool:
        replies = await self._ask_all("GET", "/healthz")
        return any(r.get("healthy") for r in replies.values())

    # -- once a second ----------------------------------------------------------------

    async def tick(self, now_wall: float) -> None:
        """Close one second of history with every worker's second and documents."""
        totals: list[Second] = []
        nodes: dict[str, list[Second]] = {}
        for reply in (await self._refresh("POST", "/tick")).values():
            totals.append(second_of(reply["second"]["total"]))
            for name, raw in reply["second"]["nodes"].items():
                nodes.setdefault(name, []).append(second_of(raw))
        by_node = {name: merge_seconds(parts) for name, parts in nodes.items()}
        self.history.close(now_wall, self._stats_doc(), merge_seconds(totals), by_node)

    async def tick_loop(self, interval_s: float = 1.0) -> None:
        """`tick` every `interval_s` until cancelled (the history's clock, as History.run)."""
        wall0, mono0 = time.time(), time.monotonic()
        next_at = mono0 + interval_s
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            now = time.monotonic()
            next_at = max(next_at + interval_s, now + interval_s / 2)
            try:
                await self.tick(wall0 + (now - mono0))
            except Exception:
                log.exception("history tick failed")

    # -- reloads ----------------------------------------------------------------------

    async def watch_loop(self) -> None:
        """Reload when the file changes (`reload.watch`, every `reload.poll_s`)."""
        while True:
            await asyncio.sleep(self.cfg.reload.poll_s)
            if not self.cfg.reload.watch:
                continue
            stamp = file_stamp(self.path)
            if stamp is not None and stamp != self._seen:
                await self.reload("file changed")

    async def reload(self, reason: str) -> tuple[bool, dict[str, Any]]:
        """Read and validate the file once; hand the same text to every worker."""
        try:
            async with asyncio.timeout(LOCK_TIMEOUT_S):
                await self._lock.acquire()
        except TimeoutError:
            return self._failed(reason, "another reload is still running")
        try:
            self._seen = file_stamp(self.path)
            try:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    text = await asyncio.to_thread(Path(self.path).read_text)
                    cfg = await asyncio.to_thread(parse_text, text, self.path)
            except OSError as exc:
                return self._failed(reason, f"{self.path}: cannot read: {exc.strerror or exc}")
            except ConfigError as exc:
                return self._failed(reason, str(exc))
            except TimeoutError:
                return self._failed(reason, f"{self.path}: not read within {READ_TIMEOUT_S}s")
            return await self._push(reason, text, cfg)
        finally:
            self._lock.release()

    async def _push(self, reason: str, text: str, cfg: Config) -> tuple[bool, dict[str, Any]]:
        workers = list(self.workers.values())
        replies = await asyncio.gather(*(w.ask("POST", "/reload", text.encode(),
                                                 RELOAD_TIMEOUT_S, **{"X-Reason": reason})
                                           for w in workers))
        bad = [(w, r) for w, r in zip(workers, replies, strict=True)
               if r is None or not r.get("reloaded")]
        if bad:
            worker, reply = bad[0]
            error = (reply or {}).get("error") or f"worker {worker.pid} did not answer"
            return self._failed(reason, f"{len(bad)} of {len(workers)} workers: {error}")
        self.cfg, self.text = cfg, text
        self.status.reloads += 1
        self.status.last_result = "ok"
        self.status.loaded_at = time.time()
        self.status.version = config_version(cfg)
        changes = replies[0]["changes"] if replies else "no workers"
        log.info("config reloaded from %s (%s) in %d workers: %s", self.path, reason,
                 len(workers), changes)
        return True, {"reloaded": True, "config": self.status.as_dict(), "changes": changes}

    def _failed(self, reason: str, message: str) -> tuple[bool, dict[str, Any]]:
        self.status.failures += 1
        self.status.last_result = "failed"
        self.status.last_error = message
        log.error("config reload (%s) failed; the running config stays:\n%s", reason, message)
        return False, {"reloaded": False, "config": self.status.as_dict(), "error": message}

