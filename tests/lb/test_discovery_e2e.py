"""DNS discovery end to end: workers on 127.0.0.x found through a real DNS server,
added, removed and kept through a DNS failure while open-loop load runs through the
proxy. Zero requests may fail."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from harness.loadgen import OpenLoad
from tests.dnsserver import dns_server
from tests.procs import Proc, ProxyProc, free_port, lb_cmd, wait_until

HP2 = "half_plus_two"
NAME = "tf-serving.test"


def _worker(logs_dir: Path, models: Path, host: str, port: int) -> Proc:
    proc = Proc(f"dns-worker-{host}", lb_cmd(
        "worker", "--host", host, "--port", str(port),
        "--model", f"{HP2}={models / 'half_plus_two_cpu'}"), logs_dir)
    proc.wait_http(f"http://{host}:{port}/v1/models/{HP2}", 120.0,
                   lambda s, b: s == 200 and b'"AVAILABLE"' in b)
    return proc


def _nodes(p: ProxyProc) -> dict[str, Any]:
    return {n["name"]: n for n in p.stats()["nodes"]}


def test_dns_changes_under_load_lose_no_request(logs_dir: Path, test_models: Path) -> None:
    port = free_port()
    hosts = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    workers = [_worker(logs_dir, test_models, h, port) for h in hosts]
    try:
        with dns_server() as dns:
            dns.set_records(NAME, hosts[:2], ttl=1)
            p = ProxyProc(logs_dir, [], name="proxy-dns", cache={"backend": "none"},
                          discovery={"dns": NAME, "rest_port": port, "grpc_port": None,
                                     "interval_s": 0.5, "timeout_s": 0.5,
                                     "nameserver": dns.address},
                          health={"interval_s": 0.5, "timeout_s": 0.5},
                          policy={"slow_start_s": 1.0})
            try:
                figures = _scenario(p, dns, hosts)
            finally:
                p.stop()
    finally:
        for w in workers:
            w.stop()
    print("dns discovery under load:", figures)


def _scenario(p: ProxyProc, dns: Any, hosts: list[str]) -> dict[str, Any]:
    wait_until(lambda: set(_nodes(p)) == set(hosts[:2]), 10.0, "the first two nodes")
    body = lambda i: orjson.dumps({"instances": [float(i % 100)]})  # noqa: E731
    with OpenLoad(f"{p.url}/v1/models/{HP2}:predict", body, rate=60, max_s=60) as load:
        time.sleep(1.5)
        changed = time.monotonic()                         # a third worker appears
        dns.set_records(NAME, hosts, ttl=1)
        wait_until(lambda: _nodes(p).get(hosts[2], {}).get("requests", 0) > 0, 15.0,
                   "traffic on the new node")
        to_traffic = time.monotonic() - changed
        dns.fail(NAME, "servfail")                         # DNS down: keep the last set
        time.sleep(1.5)
        kept = set(_nodes(p))
        failures = p.stats()["discovery"]["consecutive_failures"]
        dns.fail(NAME, None)
        dns.set_records(NAME, hosts[1:], ttl=1)            # the first one leaves
        wait_until(lambda: hosts[0] not in _nodes(p), 10.0, "the removed node to leave")
        time.sleep(1.5)
    failed = load.failed()
    assert kept == set(hosts) and failures >= 1
    assert not failed, failed[:5]
    assert len(load.samples) >= 200
    return {"sent": len(load.samples), "failed": len(failed),
            "dns_change_to_traffic_s": round(to_traffic, 2),
            "nodes_kept_through_servfail": sorted(kept)}
