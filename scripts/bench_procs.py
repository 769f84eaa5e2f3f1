"""`serve --workers N` as one proxy: counted exactly, scraped, and a worker killed.

    flock -x /tmp/tfslb-heavy.lock .venv/bin/python scripts/bench_procs.py \\
        [--workers 4] [--requests 10000] [--rate 400] [--reads 20] [--scrape-s 5]

Three nginx `return 200` stubs (bench_raw's) behind `tfserving-lb serve
--workers N` (cache none, listen.metrics on). Three measurements, each printed
as figures and written to bench-out/bench_procs.json:

1. Counting: `--requests` POSTs open loop at `--rate` over 32 kept-alive
   connections (the kernel spreads them over the workers), while /metrics is
   scraped on the metrics port every `--scrape-s`. Then `--reads` reads of
   /stats: how many show `requests.total` equal to what was sent, and the
   processes' own totals; the sum of /metrics `tfslb_requests_total`.
2. rate(): from successive scrapes during the load, as Prometheus computes it
   (increase over the scrape interval), against the rate the sender kept: the
   largest deviation of one interval, and over the whole window.
3. A worker killed: the same load on a new connection per request; a worker gets
   SIGKILL in the middle while /stats and /metrics are read every 0.2 s. Counters
   that went backwards (must be 0), requests that failed against those in flight
   when it died (the client's view: started and not finished), and how long the
   supervisor took to have a new worker serving.

127.0.0.1 only; bounded in time. Run it under the exclusive lock.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
from prometheus_client.parser import text_string_to_metric_families

from harness import loadgen
from harness.procs import free_port
from scripts.bench_raw import MODEL, predict_body, start_stubs
from scripts.benchenv import OUT, Bench, http_get


def requests_total(text: bytes) -> float:
    """The sum of tfslb_requests_total in a /metrics text."""
    for fam in text_string_to_metric_families(text.decode()):
        if fam.name == "tfslb_requests":
            return float(sum(s.value for s in fam.samples if s.name == "tfslb_requests_total"))
    return 0.0


class Scraper:
    """GET /metrics every `every_s` (and /stats with `stats`) in a thread: the times
    and request totals seen, and every counter that went backwards."""

    def __init__(self, metrics: str, every_s: float, admin: str | None = None) -> None:
        self.metrics, self.every_s, self.admin = metrics, every_s, admin
        self.seen: list[tuple[float, float]] = []        # (perf_counter mid-scrape, total)
        self.backwards: list[str] = []
        self._last: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _check(self, figures: dict[str, float]) -> None:
        for key, value in figures.items():
            if value < self._last.get(key, value):
                self.backwards.append(f"{key}: {self._last[key]} -> {value}")
            self._last[key] = value

    def _once(self) -> None:
        t0 = time.perf_counter()
        status, _, body = http_get(f"{self.metrics}/metrics", timeout=5.0)
        t1 = time.perf_counter()
        if status != 200:
            return
        figures: dict[str, float] = {}
        for fam in text_string_to_metric_families(body.decode()):
            if fam.type in ("counter", "histogram"):
                for s in fam.samples:
                    if not s.name.startswith(("process_", "python_")):
                        figures[f"{s.name}{sorted(s.labels.items())}"] = s.value
        self.seen.append(((t0 + t1) / 2, requests_total(body)))
        if self.admin:
            doc = orjson.loads(http_get(f"{self.admin}/stats", timeout=5.0)[2])
            figures["stats requests.total"] = doc["requests"]["total"]
            figures.update({f"stats node {n['name']} requests": n["requests"]
                            for n in doc["nodes"]})
        self._check(figures)

    def _run(self) -> None:
        next_at = time.perf_counter()
        while not self._stop.is_set():
            self._once()
            next_at += self.every_s
            self._stop.wait(max(0.0, next_at - time.perf_counter()))

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def stats(admin: str) -> dict[str, Any]:
    status, _, body = http_get(f"{admin}/stats", timeout=5.0)
    assert status == 200, status
    return dict(orjson.loads(body))


def counting(url: str, admin: str, metrics: str, args: argparse.Namespace) -> dict[str, Any]:
    body = predict_body()
    with Scraper(metrics, args.scrape_s) as scraper:
        before = scraper.seen[-1][1] if scraper.seen else 0.0
        res = loadgen.run(loadgen.open_loop(f"{url}/v1/models/{MODEL}:predict", lambda _i: body,
                                            args.rate, args.requests, connections=32))
        time.sleep(1.5)                    # the last second's counts are in
    reads = [stats(admin) for _ in range(args.reads)]
    exact = sum(1 for d in reads if d["requests"]["total"] == args.requests)
    own = [[p["requests"]["total"] for p in d["processes"]] for d in reads]
    summed = requests_total(http_get(f"{metrics}/metrics", timeout=5.0)[2])
    return {"load": res.summary(), "reads": args.reads, "reads_exact": exact,
            "stats_totals": sorted({d["requests"]["total"] for d in reads}),
            "per_process": own[-1], "metrics_sum": summed, "scraped_before": before,
            "rate": rates(scraper.seen, res)}


def rates(seen: list[tuple[float, float]], res: loadgen.Result) -> dict[str, Any]:
    """rate() over successive scrapes inside the steady part of the load."""
    if not res.spans:
        return {}
    start = min(s[0] for s in res.spans) + 1.0
    end = max(s[0] for s in res.spans) - 1.0
    inside = [(t, n) for t, n in seen if start <= t <= end]
    sent = res.sent_rps
    steps = [(n1 - n0) / (t1 - t0) for (t0, n0), (t1, n1) in itertools.pairwise(inside)]
    whole = ((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
             if len(inside) > 1 else float("nan"))
    return {"sent_rps": round(sent, 2), "scrapes": len(inside),
            "interval_rates": [round(r, 2) for r in steps],
            "max_interval_dev_pct": round(max((abs(r / sent - 1) * 100 for r in steps),
                                              default=float("nan")), 3),
            "window_rate": round(whole, 2), "window_dev_pct": round(abs(whole / sent - 1) * 100, 3)}


def kill_one(url: str, admin: str, metrics: str, args: argparse.Namespace) -> dict[str, Any]:
    body = predict_body()
    victim = next(p["pid"] for p in stats(admin)["processes"] if p["state"] == "up")
    count = int(args.rate * 12)
    out: dict[str, Any] = {"victim": victim}
    with Scraper(metrics, 0.2, admin) as scraper:
        def kill() -> None:
            time.sleep(4.0)
            out["killed_at"] = time.perf_counter()
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                doc = stats(admin)
                up = [p["pid"] for p in doc["processes"] if p["state"] == "up"]
                if len(up) == args.workers and victim not in up:
                    out["replaced_after_s"] = round(time.perf_counter() - out["killed_at"], 2)
                    return
                time.sleep(0.1)
        killer = threading.Thread(target=kill)
        killer.start()
        res = loadgen.run(loadgen.open_loop(f"{url}/v1/models/{MODEL}:predict", lambda _i: body,
                                            args.rate, count, connections=32, fresh=True))
        killer.join(40)
        time.sleep(1.5)
    t = out["killed_at"]
    in_flight = sum(1 for start, end, _ in res.spans if start <= t < end)
    failed = [(start, end, st) for start, end, st in res.spans if st != 200]
    out.update({"sent": res.sent, "ok": res.ok, "failed": len(failed),
                "failed_started_after_kill": sum(1 for f in failed if f[0] > t),
                "failed_start_ms_after_kill": [round((f[0] - t) * 1000, 1) for f in failed],
                "failed_end_ms_after_kill": [round((f[1] - t) * 1000, 1) for f in failed],
                "in_flight_at_kill": in_flight, "reads": len(scraper.seen),
                "backwards": scraper.backwards[:20], "backwards_count": len(scraper.backwards),
                "stats_total_after": stats(admin)["requests"]["total"]})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=400.0)
    parser.add_argument("--reads", type=int, default=20)
    parser.add_argument("--scrape-s", type=float, default=5.0)
    args = parser.parse_args()
    bench = Bench()
    try:
        ports = start_stubs(bench)
        nodes = [{"name": f"n{i}", "rest": f"http://127.0.0.1:{p}"} for i, p in enumerate(ports)]
        metrics = f"http://127.0.0.1:{free_port()}"
        url, admin, _ = bench.start_proxy(
            "procs", nodes, workers=args.workers, cache={"backend": "none"},
            hedge={"enabled": False}, listen={"metrics": metrics.removeprefix("http://")})
        out = {"workers": args.workers, "counting": counting(url, admin, metrics, args),
               "kill": kill_one(url, admin, metrics, args)}
    finally:
        bench.close()
    OUT.mkdir(exist_ok=True)
    (OUT / "bench_procs.json").write_text(json.dumps(out, indent=1))
    report(out, args)
    return 0


def report(out: dict[str, Any], args: argparse.Namespace) -> None:
    c, k = out["counting"], out["kill"]
    r = c["rate"]
    print(f"\n--workers {args.workers}, {args.requests} requests open loop at {args.rate:g}/s "
          f"(sent at {c['load']['sent_rps']}/s, {c['load']['failed']} failed)")
    print(f"/stats reads with requests.total == {args.requests}: {c['reads_exact']} of "
          f"{c['reads']} (totals seen {c['stats_totals']}; per process {c['per_process']})")
    print(f"sum of /metrics tfslb_requests_total: {c['metrics_sum']:.0f}")
    print(f"rate() from scrapes every {args.scrape_s:g} s: intervals {r.get('interval_rates')} "
          f"vs sent {r.get('sent_rps')}/s; worst interval {r.get('max_interval_dev_pct')} %, "
          f"whole window {r.get('window_rate')}/s ({r.get('window_dev_pct')} %)")
    print(f"SIGKILL of worker {k['victim']}: new worker serving after "
          f"{k.get('replaced_after_s')} s; "
          f"{k['reads']} reads of /stats+/metrics, counters backwards: {k['backwards_count']}; "
          f"failed {k['failed']} (started {k['failed_start_ms_after_kill']} ms after the kill) "
          f"of {k['sent']}, in flight at the kill: {k['in_flight_at_kill']}; "
          f"/stats total after: {k['stats_total_after']} (ok {k['ok']})")


if __name__ == "__main__":
    raise SystemExit(main())
