"""`serve --workers N`: N processes on one port, one proxy to read (lb.supervisor, lb.fleet)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness.loadgen import OpenLoad
from tests.lb.conftest import Pool
from tests.procs import (
    ProxyProc,
    RedisServer,
    get_json,
    http,
    node,
    read_config,
    rewrite_config,
    scrape,
    wait_until,
)

HP2 = "half_plus_two"
HANDOVER_S = 0.05         # a killed process's socket outlives SIGKILL by this much at most


def _ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def _worker_pids(doc: dict[str, Any]) -> list[int]:
    return [int(p["pid"]) for p in doc["processes"] if p["state"] == "up"]


def test_workers_share_the_port_and_stop_together(logs_dir: Path, hp2_pool: Pool,
                                                  redis_server: RedisServer) -> None:
    p = ProxyProc(logs_dir, [node("a", hp2_pool.fast[0])], name="proxy-workers", workers=2,
                  cache={"backend": "tiered", "redis_url": redis_server.url})
    try:
        wait_until(lambda: len(_worker_pids(p.stats())) == 2, 20.0, "both workers up")
        doc = p.stats()
        pids = set(_worker_pids(doc))
        assert doc["pid"] == p.proc.pid and p.proc.pid not in pids     # the supervisor answers
        assert all(_ppid(pid) == p.proc.pid for pid in pids)           # for its own workers
        assert {e["worker"] for e in doc["processes"]} == {0, 1} and doc["workers"] == 2
        body = {"instances": [float(time.time() % 1000)]}
        replies = [http("POST", f"{p.url}/v1/models/{HP2}:predict", body) for _ in range(10)]
        assert all(r[0] == 200 for r in replies)
        # The processes share entries through Redis: after the first miss, only hits.
        assert [r[1]["X-Cache"] for r in replies].count("MISS") == 1
        p.proc.signal(signal.SIGTERM)
        assert p.proc.popen.wait(30) == 0, p.proc.log()
        for pid in pids:
            def exited(pid: int = pid) -> bool:
                return not os.path.exists(f"/proc/{pid}")

            wait_until(exited, 10, f"{pid} to exit")
    finally:
        p.stop()


def _requests_total(families: dict[str, Any]) -> float:
    return float(sum(s.value for s in families["tfslb_requests"].samples
                     if s.name == "tfslb_requests_total"))


@pytest.mark.slow
def test_every_admin_endpoint_answers_for_all_workers(logs_dir: Path, hp2_pool: Pool) -> None:
    nodes = [node("a", hp2_pool.fast[0]), node("b", hp2_pool.fast[1])]
    p = ProxyProc(logs_dir, nodes, name="proxy-fleet", workers=2, metrics=True,
                  cache={"backend": "none"})
    try:
        wait_until(lambda: len(_worker_pids(p.stats())) == 2, 20.0, "both workers up")
        sent = 60
        for i in range(sent):           # a new connection each: the kernel spreads them
            assert http("POST", f"{p.url}/v1/models/{HP2}:predict",
                        {"instances": [float(i)]})[0] == 200
        for _ in range(10):             # whichever process took the connection before
            doc = p.stats()
            assert doc["requests"]["total"] == sent, doc["requests"]
            own = [e["requests"]["total"] for e in doc["processes"]]
            assert sum(own) == sent and min(own) > 0, own
            assert sum(n["requests"] for n in doc["nodes"]) == sent
            assert _requests_total(scrape(p.admin)) == sent
        fams = scrape(str(p.metrics))              # the scrapers' port: the same figures
        assert _requests_total(fams) == sent
        pids = {str(pid) for pid in _worker_pids(doc)} | {str(doc["pid"])}
        for name in ("process_resident_memory_bytes", "process_cpu_seconds",
                     "process_open_fds", "python_gc_collections"):
            assert {s.labels["pid"] for s in fams[name].samples} == pids, name
        rss = sum(s.value for s in fams["process_resident_memory_bytes"].samples)
        assert fams["tfslb_resident_memory_bytes"].samples[0].value == rss
        assert doc["memory"]["rss_bytes"] > 2 * 20 * 2**20       # three Python processes
        assert http("GET", f"{p.metrics}/stats")[0] == 404       # /metrics alone, read-only
        assert http("POST", f"{p.metrics}/reload", b"")[0] in (404, 405)
        time.sleep(1.5)                 # the last requests' second has closed

        def history_counted() -> bool:
            points = get_json(f"{p.admin}/history")["points"]
            return bool(round(sum(pt["rps"] for pt in points)) == sent)
        wait_until(history_counted, 5.0, "/history to count every request")
        assert get_json(f"{p.admin}/history")["points"][-1]["memory"]["rss_bytes"] > 0
    finally:
        p.stop()


class _Watch:
    """Reads /stats and /metrics counters over and over; records any that went back."""

    def __init__(self, p: ProxyProc) -> None:
        self.p = p
        self.backwards: list[str] = []
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _figures(self) -> dict[str, float]:
        doc = self.p.stats()
        fams = scrape(self.p.admin)
        out = {"stats requests": doc["requests"]["total"],
               "metrics requests": _requests_total(fams),
               "cpu seconds": fams["tfslb_cpu_seconds"].samples[0].value}
        for n in doc["nodes"]:
            out[f"node {n['name']} requests"] = n["requests"]
        for s in fams["tfslb_node_requests"].samples:
            out[f"metrics {s.name} {sorted(s.labels.items())}"] = s.value
        for s in fams["tfslb_request_duration_seconds"].samples:
            out[f"metrics {s.name} {sorted(s.labels.items())}"] = s.value
        return out

    def _run(self) -> None:
        last: dict[str, float] = {}
        while not self._stop.is_set():
            now = self._figures()
            self.backwards += [f"{k}: {last[k]} -> {v}" for k, v in now.items()
                               if k in last and v < last[k]]
            last = {**last, **now}
            self.reads += 1
            time.sleep(0.1)

    def __enter__(self) -> _Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def _body(i: int) -> bytes:
    return json.dumps({"instances": [float(i)]}).encode()


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_no_counter_goes_back(logs_dir: Path,
                                                              hp2_pool: Pool) -> None:
    nodes = [node("a", hp2_pool.fast[0]), node("b", hp2_pool.fast[1])]
    p = ProxyProc(logs_dir, nodes, name="proxy-kill", workers=2, cache={"backend": "none"})
    rate = 40.0
    try:
        wait_until(lambda: len(_worker_pids(p.stats())) == 2, 20.0, "both workers up")
        victim = _worker_pids(p.stats())[0]
        with _Watch(p) as watch, OpenLoad(f"{p.url}/v1/models/{HP2}:predict", _body, rate,
                                          max_s=30.0, fresh=True) as load:
            time.sleep(3.0)
            killed_at = time.monotonic()
            os.kill(victim, signal.SIGKILL)

            def replaced() -> bool:
                doc = p.stats()
                pids = _worker_pids(doc)
                return len(pids) == 2 and victim not in pids and doc["restarts"] == 1
            wait_until(replaced, 20.0, "a new worker in place of the killed one")
            time.sleep(2.0)                    # the new worker serves its share
            load.stop()
        assert watch.reads > 20 and watch.backwards == [], watch.backwards
        # Failed: only requests the killed worker held, in flight (the client's view:
        # started, not answered) or handed to it by the kernel in the few ms its
        # listening socket outlived the kill (SO_REUSEPORT's accept queue).
        failed = load.failed()
        held = [s for s in load.samples
                if s.at <= killed_at + HANDOVER_S and killed_at < s.at + s.latency_ms / 1000.0]
        assert all(s.at <= killed_at + HANDOVER_S for s in failed), failed
        assert len(failed) <= len(held), (failed, len(held))
        ok = len(load.samples) - len(failed)
        time.sleep(1.5)
        total = p.stats()["requests"]["total"]
        # What the killed worker counted after its last report (a second at most) is lost.
        assert ok - rate <= total <= len(load.samples), (ok, total)
        assert _requests_total(scrape(p.admin)) == total
    finally:
        p.stop()


def _version(p: ProxyProc) -> str:
    doc = p.stats()
    versions = {e["config"]["version"] for e in doc["processes"]}
    assert doc["config"]["consistent"] is True and versions == {doc["config"]["version"]}, doc
    return str(doc["config"]["version"])


def _b_weight(p: ProxyProc) -> float:
    return float(next(n["weight"] for n in p.stats()["nodes"] if n["name"] == "b"))


@pytest.mark.slow
def test_reload_reaches_every_worker_under_load(logs_dir: Path, hp2_pool: Pool) -> None:
    nodes = [node("a", hp2_pool.fast[0]), node("b", hp2_pool.fast[1])]
    p = ProxyProc(logs_dir, nodes, name="proxy-fleet-reload", workers=2,
                  cache={"backend": "none"}, reload={"watch": False, "poll_s": 0.2})
    try:
        wait_until(lambda: len(_worker_pids(p.stats())) == 2, 20.0, "both workers up")
        versions = [_version(p)]

        def edit(weight: float, watch: bool = False) -> None:
            doc = read_config(p.config_path)
            doc["nodes"][1]["weight"] = weight
            doc["reload"]["watch"] = watch
            rewrite_config(p.config_path, doc)

        def reloaded_to(weight: float) -> None:
            wait_until(lambda: _b_weight(p) == weight and _version(p) not in versions, 10.0,
                       f"every worker on weight {weight}")
            versions.append(_version(p))

        with OpenLoad(f"{p.url}/v1/models/{HP2}:predict", _body, 40.0, max_s=20.0) as load:
            time.sleep(1.0)
            edit(2.0)
            p.proc.signal(signal.SIGHUP)                       # 1. SIGHUP to the supervisor
            reloaded_to(2.0)
            edit(3.0)
            status, _, reply = http("POST", f"{p.admin}/reload", b"")   # 2. POST /reload
            assert status == 200 and json.loads(reply)["reloaded"] is True, reply
            reloaded_to(3.0)
            edit(4.0, watch=True)
            assert http("POST", f"{p.admin}/reload", b"")[0] == 200
            reloaded_to(4.0)
            time.sleep(0.5)
            edit(5.0, watch=True)                              # 3. a change of the file
            reloaded_to(5.0)
            time.sleep(1.0)
            load.stop()
        assert len(load.samples) > 100 and load.failed() == [], load.failed()[:5]
        assert len(set(versions)) == 5 and p.stats()["config"]["reloads"] == 4
        bad = read_config(p.config_path)
        bad["nodes"][1]["weight"] = -1
        rewrite_config(p.config_path, bad)
        wait_until(lambda: p.stats()["config"]["failures"] == 1, 10.0, "the rejected reload")
        assert _version(p) == versions[-1]                     # every worker kept serving it
    finally:
        p.stop()


def test_metrics_port_of_one_process(logs_dir: Path, hp2_pool: Pool) -> None:
    p = ProxyProc(logs_dir, [node("a", hp2_pool.fast[2])], name="proxy-metrics-port",
                  metrics=True)
    try:
        assert http("POST", f"{p.url}/v1/models/{HP2}:predict", {"instances": [1.0]})[0] == 200
        fams = scrape(str(p.metrics))
        assert _requests_total(fams) == 1 and fams["tfslb_workers"].samples[0].value == 1
        assert {s.labels["pid"] for s in fams["process_open_fds"].samples} == \
            {str(p.stats()["pid"])}
        for path in ("/stats", "/history", "/dashboard", "/healthz"):
            assert http("GET", f"{p.metrics}{path}")[0] == 404, path
        assert http("POST", f"{p.metrics}/reload", b"")[0] in (404, 405)
        assert p.stats()["processes"][0]["pid"] == p.stats()["pid"]
    finally:
        p.stop()
