"""Config reload: SIGHUP, a change of the file, or `POST /reload` → one `reload()`.

Started by `lb.admin.app.serve_admin_side` (`Reloader.start` installs the SIGHUP
handler and the file watcher when the proxy was started from a file); `POST
/reload` on the admin app (`lb.admin.app`) awaits `reload()` directly; under
`serve --workers N` the worker's control socket (`lb.fleet.control`) does, with
the text the supervisor read.

Guarantees:

* Validate first: the file is read and validated by `load_config` off the
  event loop, under a deadline. An unreadable or invalid file changes nothing;
  the failure is logged (logger `lb.reload`), counted and kept as the last
  error in `ConfigStatus` (`/stats` "config", `tfslb_config_reload_failures_total`).
* Apply atomically: a valid config is applied in one synchronous step on the
  event loop (`lb.server.Proxy.reconfigure`, which hands it to each
  component's own `reconfigure`), so no request sees a half-applied config and
  none is dropped: requests in flight on a removed node finish on the `Node`
  they hold. Nodes whose name stays keep their counters, in-flight work, τ and
  health.
* Live: nodes, weights, URLs, policy, models (cost, row_cache), health, admin
  token, log, reload, auth (API keys: `lb.edge`, which reads its keys file
  first and may refuse the reload). Sections in `RESTART_ONLY` (sockets, the cache store,
  connection pools, body limit, gRPC message limits) keep their running
  value; a change there is logged as needing a restart.
* Reloads never overlap (one lock); the watcher does not reload again for a
  file version that SIGHUP or POST already read.
* Under `serve --workers N` (`follow=False`) a worker neither watches the file
  nor reloads on SIGHUP: the supervisor reads and validates the file once and
  hands the same text to every worker (`reload(reason, text=...)`), so all of
  them run one config version (`ConfigStatus.version`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Protocol

from lb.admin.source import ConfigStatus
from lb.config import Config, config_version, load_config, parse_text
from lb.errors import ConfigError

log = logging.getLogger("lb.reload")

READ_TIMEOUT_S = 5.0         # reading and validating the file
LOCK_TIMEOUT_S = 10.0        # waiting for a reload already running

Stamp = tuple[int, int, int]


def file_stamp(path: str) -> Stamp | None:
    """(mtime_ns, size, inode) of `path`, None while it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def describe_changes(old: Config, new: Config) -> str:
    """A one-line summary of node changes for the log, e.g. '+c -b a weight 1->4'."""
    before = {n.name: n for n in old.nodes}
    after = {n.name: n for n in new.nodes}
    parts = [f"+{name}" for name in after if name not in before]
    parts += [f"-{name}" for name in before if name not in after]
    for name, node in after.items():
        was = before.get(name)
        if was is not None and was.weight != node.weight:
            parts.append(f"{name} weight {was.weight:g}->{node.weight:g}")
        if was is not None and (was.rest, was.grpc) != (node.rest, node.grpc):
            parts.append(f"{name} address")
    if old.policy != new.policy:
        parts.append("policy")
    if old.models != new.models:
        parts.append("models")
    return " ".join(parts) or "no node changes"


class Reconfigurable(Protocol):
    """The proxy as the reloader sees it (`lb.server.Proxy`)."""

    @property
    def cfg(self) -> Config: ...
    @property
    def status(self) -> ConfigStatus: ...

    def reconfigure(self, new: Config) -> Config: ...


class Reloader:
    """Owns reloading one proxy's config; see the module docstring."""

    def __init__(self, proxy: Reconfigurable, path: str | None, follow: bool = True) -> None:
        self.path = path
        self.follow = follow
        self.status = proxy.status
        self.status.path = path
        self._proxy = proxy
        self._lock = asyncio.Lock()
        self._seen = file_stamp(path) if path is not None else None
        self._pending: set[asyncio.Task[tuple[bool, str]]] = set()

    def start(self) -> list[asyncio.Task[None]]:
        """Install the SIGHUP handler and start the file watcher (if started from a
        file); the caller cancels the returned task and then calls `close()`."""
        if self.path is None:
            return []
        if not self.follow:      # the supervisor reloads every worker; SIGHUP must not kill
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._not_here)
            return []
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.on_sighup)
        return [asyncio.create_task(self.watch(), name="config-watch")]

    @staticmethod
    def _not_here() -> None:
        log.warning("SIGHUP to a worker is ignored: send it to the supervisor, which "
                    "reloads every worker with one version of the file")

    def on_sighup(self) -> None:
        task = asyncio.create_task(self.reload("SIGHUP"), name="config-reload:SIGHUP")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self) -> None:
        """Remove the SIGHUP handler and cancel reloads it started (shutdown)."""
        if self.path is not None:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)

    async def watch(self) -> None:
        """Poll the file every `reload.poll_s` (live setting); reload when its
        (mtime, size, inode) changed. Runs until cancelled."""
        assert self.path is not None
        while True:
            await asyncio.sleep(self._proxy.cfg.reload.poll_s)
            if not self._proxy.cfg.reload.watch:
                continue
            stamp = file_stamp(self.path)
            if stamp is not None and stamp != self._seen:
                await self.reload("file changed")

    async def reload(self, reason: str, text: str | None = None) -> tuple[bool, str]:
        """Read, validate and apply the file (or `text`, the file's content as the
        supervisor read it); returns (applied, message).

        Never raises for a bad file: the running config stays and the failure
        is recorded. Waits at most LOCK_TIMEOUT_S for a reload already running.
        """
        if self.path is None:
            return self._failed(reason, "the proxy was not started from a config file")
        try:
            async with asyncio.timeout(LOCK_TIMEOUT_S):
                await self._lock.acquire()
        except TimeoutError:
            return self._failed(reason, "another reload is still running")
        try:
            self._seen = file_stamp(self.path)
            try:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    if text is not None:
                        cfg = await asyncio.to_thread(parse_text, text, self.path)
                    else:
                        cfg = await asyncio.to_thread(load_config, self.path)
            except ConfigError as exc:
                return self._failed(reason, str(exc))
            except TimeoutError:
                return self._failed(reason, f"{self.path}: not read within {READ_TIMEOUT_S}s")
            try:
                return True, self.apply(cfg, reason)
            except ConfigError as exc:       # e.g. a discovery nameserver it cannot use
                return self._failed(reason, str(exc))
        finally:
            self._lock.release()

    def apply(self, new: Config, reason: str = "reload") -> str:
        """Apply a validated config in one step on the event loop; returns the summary."""
        old = self._proxy.cfg
        cfg = self._proxy.reconfigure(new)
        summary = describe_changes(old, cfg)
        self.status.reloads += 1
        self.status.last_result = "ok"
        self.status.loaded_at = time.time()
        self.status.version = config_version(new)
        log.info("config reloaded from %s (%s): %s", self.path, reason, summary)
        return summary

    def _failed(self, reason: str, message: str) -> tuple[bool, str]:
        self.status.failures += 1
        self.status.last_result = "failed"
        self.status.last_error = message
        log.error("config reload (%s) failed; the running config stays:\n%s", reason, message)
        return False, message
