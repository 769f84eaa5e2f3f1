"""Headless Debian chromium driven over the Chrome DevTools Protocol, for page tests.

`Chromium` starts the browser in its own process group with a throw-away
profile and `kill()`s the whole group (renderers, GPU and zygote helpers
included), whatever state it is in. `Page` speaks CDP over aiohttp's
websocket client: `send` waits for the reply with a deadline, and every
error the page reports (uncaught exceptions, console.error, error-level log
entries such as failed loads) is kept in `errors`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp

from harness.procs import die_with_us, free_port

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,2200"]
REPLY_TIMEOUT_S = 10.0


class Chromium:
    """One headless browser process group; output goes to `log_path`."""

    def __init__(self, tmp: Path) -> None:
        if not os.access(CHROMIUM, os.X_OK):
            raise RuntimeError(f"{CHROMIUM} is not installed: run scripts/setup.sh")
        self.port = free_port()
        self.log_path = tmp / "chromium.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={tmp / 'chromium-profile'}",
             f"--remote-debugging-port={self.port}", "about:blank"],
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_us())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._log.close()

    async def page_ws_url(self, session: aiohttp.ClientSession, within_s: float = 20.0) -> str:
        """The websocket URL of the browser's first page, once its DevTools port answers."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(f"http://127.0.0.1:{self.port}/json/list") as r:
                    for target in await r.json(content_type=None):
                        if target.get("type") == "page":
                            return str(target["webSocketDebuggerUrl"])
            await asyncio.sleep(0.2)
        raise TimeoutError(f"no chromium page target within {within_s}s:\n{self.log()}")


class Page:
    """A CDP session on one page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.errors: list[str] = []
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read(), name="cdp-reader")

    @classmethod
    async def open(cls, browser: Chromium, session: aiohttp.ClientSession) -> Page:
        url = await browser.page_ws_url(session)
        ws = await session.ws_connect(url, max_msg_size=0,
                                     timeout=aiohttp.ClientWSTimeout(ws_close=10.0))
        page = cls(ws)
        await page.send("Runtime.enable")
        await page.send("Log.enable")
        await page.send("Page.enable")
        return page

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.ws.close()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self._ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[msg_id] = fut
        await self.ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
        try:
            reply = await asyncio.wait_for(fut, REPLY_TIMEOUT_S)
        finally:
            self._waiting.pop(msg_id, None)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return dict(reply.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of `expression` in the page; raises on a JavaScript exception."""
        res = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"evaluate failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    async def screenshot(self) -> bytes:
        """The whole page as PNG."""
        res = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return base64.b64decode(res["data"])

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            doc = json.loads(msg.data)
            fut = self._waiting.get(doc.get("id", 0))
            if fut is not None and not fut.done():
                fut.set_result(doc)
            elif "method" in doc:
                self._note(doc["method"], doc.get("params", {}))
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("CDP websocket closed"))

    def _note(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            desc = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"exception: {desc}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = [a.get("value", a.get("description")) for a in params.get("args", [])]
            self.errors.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
