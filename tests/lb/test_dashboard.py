"""The dashboard in a real headless chromium against a real proxy and pool under load,
and `/history` over HTTP. The browser is driven over CDP (tests/browser.py)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from harness.loadgen import OpenLoad
from lb.admin.dashboard import PAGE
from tests.browser import Chromium, Page
from tests.lb.conftest import Pool
from tests.procs import ProxyProc, get_json, http, node, read_config, rewrite_config

RATE = 60.0                  # requests/s of background load: bounded, for a 2-core box
LOAD_S = 12.0
RELOAD_AFTER_S = 5.0         # then "slow" is removed and "late" added

# DOM facts the page exposes: points per series per chart, markers, headline numbers.
FACTS = """(() => {
  const charts = {};
  for (const svg of document.querySelectorAll("svg[data-chart]")) {
    charts[svg.dataset.chart] = Object.fromEntries([...svg.querySelectorAll("path[data-series]")]
      .map(p => [`${p.dataset.kind}:${p.dataset.series}`, +p.dataset.points]));
  }
  const text = id => document.getElementById(id)?.textContent ?? "";
  return {charts, markers: document.querySelectorAll("svg[data-chart=rps] line.ev").length,
          rps: text("now-rps"), hit: text("now-hit"), err: text("err"),
          events: [...document.querySelectorAll("#events li")].map(li => li.textContent),
          rows: [...document.querySelectorAll("#nodes tbody tr")].map(r => r.cells[0].textContent),
          procs: [...document.querySelectorAll("#procs tbody tr")].map(r => r.cells[2].textContent),
          rss: text("now-rss"),
          polls: window.dashboard.polls, failures: window.dashboard.failures};
})()"""

HOVER = """(() => {
  const svg = document.querySelector("svg[data-chart=p99]"), r = svg.getBoundingClientRect();
  svg.dispatchEvent(new MouseEvent("mousemove", {clientX: r.left + r.width * 0.97,
                                                 clientY: r.top + r.height / 2}));
  const cursor = document.querySelector("svg[data-chart=rps] line.cursor");
  return {legend: svg.nextElementSibling.textContent, cursor: cursor.getAttribute("visibility")};
})()"""


def test_page_has_no_external_urls() -> None:
    refs = re.findall(r"""\b(?:src|href|action)\s*=\s*["']?([^"'\s>]+)""", PAGE)
    assert refs == ["data:,"], refs                 # only the empty favicon
    assert not re.search(r"""["'(]\s*(?:https?:)?//""", PAGE)
    assert "@import" not in PAGE and "url(" not in PAGE and "<link rel=\"stylesheet" not in PAGE
    fetched = re.findall(r"""fetch\(([^,)]+)""", PAGE)
    assert fetched == ["url", '"stats"'], fetched    # relative: history?since=…, stats


def body(i: int) -> bytes:
    """Every even request is new (a miss, a node answers), odd ones repeat ten rows (hits)."""
    x = float(i) if i % 2 == 0 else float(-(i % 10))
    return json.dumps({"instances": [x]}).encode()


def _grpc_model_status(address: str) -> None:
    """One GetModelStatus call, the request written by hand: {model_spec: {name}}."""
    name = b"half_plus_two"
    spec = b"\x0a" + bytes([len(name)]) + name
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary("/tensorflow.serving.ModelService/GetModelStatus")
        call(b"\x0a" + bytes([len(spec)]) + spec, timeout=10.0)


def test_history_endpoint(logs_dir: Path, hp2_pool: Pool) -> None:
    a = {**node("a", hp2_pool.fast[0]), "grpc": hp2_pool.procs[0].grpc}
    p = ProxyProc(logs_dir, [a], name="proxy-history", grpc=True)
    try:
        url = f"{p.url}/v1/models/half_plus_two:predict"
        for i in range(5):
            assert http("POST", url, {"instances": [float(i % 2)]})[0] == 200
        for _ in range(3):                           # the gRPC front is observed too
            _grpc_model_status(str(p.grpc))
        deadline = time.monotonic() + 5.0
        while not get_json(f"{p.admin}/history")["points"] and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.2)                              # the requests' second has closed
        doc = get_json(f"{p.admin}/history")
        assert doc["interval_s"] == 1.0 and doc["window_s"] == 300.0
        assert doc["pid"] == p.stats()["pid"]
        assert sum(pt["rps"] for pt in doc["points"]) == pytest.approx(8.0, abs=0.5)
        assert sum(pt["direct_rps"] for pt in doc["points"]) == pytest.approx(3.0, abs=0.5)
        assert sum(pt["nodes"]["a"]["rps"] for pt in doc["points"]) == pytest.approx(5.0, abs=0.5)
        assert set(doc["points"][-1]["nodes"]) == {"a"}
        last = doc["points"][-1]["t"]
        newer = get_json(f"{p.admin}/history?since={last}")["points"]
        assert all(pt["t"] > last for pt in newer)
        for bad in ("abc", "nan", "inf"):
            status, _, reply = http("GET", f"{p.admin}/history?since={bad}")
            assert status == 400 and b"since" in reply
    finally:
        p.stop()


async def _wait_for(page: Page, check: Any, within_s: float, what: str) -> dict[str, Any]:
    """Poll the page's FACTS until `check(facts)` holds; fail with the last facts."""
    deadline = time.monotonic() + within_s
    facts: dict[str, Any] = {}
    while time.monotonic() < deadline:
        facts = await page.evaluate(FACTS)
        if check(facts):
            return facts
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; page: {facts}; errors: {page.errors}")


def _charted(facts: dict[str, Any]) -> bool:
    c = facts["charts"]
    if not c or not c.get("rps") or not c.get("p99") or not c.get("hit"):
        return False
    fast = [f"node:fast-{i}" for i in range(3)]
    return (c["rps"].get("total:all", 0) >= 10 and all(c["rps"].get(k, 0) >= 10 for k in fast)
            and c["rps"].get("direct:no node (cache)", 0) >= 5
            and c["rps"].get("node:slow", 0) >= 3 and c["rps"].get("node:late", 0) >= 2
            and c["p99"].get("total:all", 0) >= 8 and c["hit"].get("total:hit rate", 0) >= 5
            and all(c["inflight"].get(k, 0) >= 10 for k in fast)
            and c["inflight"].get("total:all", 0) >= 10
            and c.get("memory", {}).get("total:RSS (all processes)", 0) >= 10
            and c["memory"].get("total:cache budget", 0) >= 10
            and facts["procs"] == ["up", "up"] and float(facts["rss"] or 0) > 40
            and all(c["share"].get(k, 0) >= 10 for k in fast)
            and any("slow removed" in e for e in facts["events"])
            and any("late added" in e for e in facts["events"])
            and any("config reloaded" in e for e in facts["events"])
            and facts["markers"] >= 3 and float(facts["rps"] or 0) > 0
            and sorted(facts["rows"]) == ["fast-0", "fast-1", "fast-2", "late"])


async def _reload_without_slow(p: ProxyProc, pool: Pool) -> None:
    doc = read_config(p.config_path)
    doc["nodes"] = [n for n in doc["nodes"] if n["name"] != "slow"] + [node("late", pool.slow)]
    rewrite_config(p.config_path, doc)
    status, _, reply = await asyncio.to_thread(http, "POST", f"{p.admin}/reload")
    assert status == 200, reply


async def test_dashboard_in_headless_chromium(logs_dir: Path, hp2_pool: Pool,
                                              tmp_path: Path) -> None:
    browser = Chromium(tmp_path)
    proxy: ProxyProc | None = None
    try:
        nodes = [node(f"fast-{i}", u) for i, u in enumerate(hp2_pool.fast)]
        # Two processes: every chart is the whole proxy's (the supervisor merges them).
        proxy = ProxyProc(logs_dir, [*nodes, node("slow", hp2_pool.slow)],
                          name="proxy-dashboard-ui", cache={"backend": "memory"},
                          reload={"watch": False}, workers=2)
        with OpenLoad(f"{proxy.url}/v1/models/half_plus_two:predict", body, RATE,
                      max_s=LOAD_S) as load:
            started = time.monotonic()
            async with aiohttp.ClientSession() as session:
                page = await Page.open(browser, session)
                try:
                    await page.send("Page.navigate", url=f"{proxy.admin}/dashboard")
                    await asyncio.sleep(max(0.0, started + RELOAD_AFTER_S - time.monotonic()))
                    await _reload_without_slow(proxy, hp2_pool)
                    facts = await _wait_for(page, _charted, 25.0, "charts with data")
                    assert page.errors == [], page.errors
                    assert facts["err"] == "" and facts["failures"] == 0, facts
                    assert 0.0 < float(facts["hit"]) < 1.0, facts     # hits and misses
                    hover = await page.evaluate(HOVER)
                    assert hover["cursor"] == "visible" and "late" in hover["legend"], hover
                    png = await page.screenshot()
                    assert png.startswith(b"\x89PNG") and len(png) > 20_000, len(png)
                    await asyncio.to_thread((tmp_path / "dashboard.png").write_bytes, png)
                    assert page.errors == [], page.errors
                    load.stop()
                    assert not load.failed(), load.failed()[:5]
                    await asyncio.to_thread(proxy.stop)          # the proxy goes away ...
                    facts = await _wait_for(page, lambda f: f["failures"] >= 2, 10.0,
                                            "failed polls shown")
                    assert facts["err"].startswith("cannot read /history"), facts
                    assert facts["charts"]["rps"]["total:all"] >= 10   # ... the charts stay
                finally:
                    await page.close()
    finally:
        browser.kill()
        if proxy is not None:
            proxy.stop()
