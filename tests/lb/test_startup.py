"""A cold start: workers and the proxy started at the same moment, load from the first
second, over REST and gRPC. Requests that arrive before any node has the model
AVAILABLE wait for it (limits.queue_timeout_s) instead of failing, and no request goes
to a node before it has the model AVAILABLE: the workers load one after the other
(`--load-delay-s`), so for seconds some serve while others load. Past the bound a
request gets 503 + Retry-After in TF Serving's error shape (UNAVAILABLE over gRPC).
A node that DNS discovery adds while it loads gets its first request once it serves."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import orjson
import pytest

from harness.grpcwire import PREDICT, predict_bytes
from harness.loadgen import OpenLoad
from tests.dnsserver import dns_server
from tests.procs import Proc, ProxyProc, free_port, get_json, http, lb_cmd, wait_until

HP2 = "half_plus_two"
pytestmark = pytest.mark.slow


def _worker(logs_dir: Path, models: Path, name: str, delay_s: float = 0.0,
            host: str = "127.0.0.1", port: int = 0) -> tuple[Proc, dict[str, object]]:
    port, grpc_port = port or free_port(), free_port()
    proc = Proc(name, lb_cmd("worker", "--host", host, "--port", str(port),
                             "--grpc-port", str(grpc_port), "--load-delay-s", str(delay_s),
                             "--model", f"{HP2}={models / 'half_plus_two_cpu'}"), logs_dir)
    return proc, {"name": name, "rest": f"http://{host}:{port}",
                  "grpc": f"{host}:{grpc_port}"}


class GrpcOpenLoad:
    """Predicts over one gRPC channel at a fixed rate from a thread; every call's status
    code is kept. Bounded by `max_s` and each call's `timeout_s`."""

    def __init__(self, target: str, rate: float, max_s: float, timeout_s: float) -> None:
        self.target, self.rate, self.max_s, self.timeout_s = target, rate, max_s, timeout_s
        self.codes: list[grpc.StatusCode] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GrpcOpenLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 10)
        assert not self._thread.is_alive(), "gRPC load thread did not stop"

    def _run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            method = channel.unary_unary(PREDICT)
            futures: list[Any] = []
            start = time.monotonic()
            i = 0
            while not self._stop.is_set() and time.monotonic() - start < self.max_s:
                self._stop.wait(max(0.0, start + i / self.rate - time.monotonic()))
                futures.append(method.future(predict_bytes(HP2, float(i % 100)),
                                             timeout=self.timeout_s))
                i += 1
            for fut in futures:
                try:
                    fut.result()
                    self.codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as err:
                    self.codes.append(err.code())

    def failed(self) -> list[grpc.StatusCode]:
        return [c for c in self.codes if c != grpc.StatusCode.OK]


def test_cold_start_serves_every_request(logs_dir: Path, test_models: Path) -> None:
    started = [_worker(logs_dir, test_models, f"cold-{i}", delay_s=4.0 * i) for i in range(3)]
    procs = [p for p, _ in started]
    try:
        proxy = ProxyProc(logs_dir, [n for _, n in started], name="proxy-cold", grpc=True,
                          cache={"backend": "none"},
                          health={"interval_s": 0.5, "timeout_s": 0.5},
                          limits={"queue_timeout_s": 60, "request_timeout_s": 90})
        try:
            assert proxy.grpc
            with GrpcOpenLoad(proxy.grpc, rate=10, max_s=120, timeout_s=90) as gload, \
                    OpenLoad(f"{proxy.url}/v1/models/{HP2}:predict",
                             lambda i: orjson.dumps({"instances": [float(i % 100)]}),
                             rate=20, max_s=120, timeout_s=100) as load:
                wait_until(lambda: all(n["healthy"] and n["requests"] > 0
                                       for n in proxy.stats()["nodes"]), 90.0,
                           "every worker up and serving")
                time.sleep(2.0)                           # load goes on after start-up
            stats = proxy.stats()
        finally:
            proxy.stop()
    finally:
        for p in procs:
            p.stop()
    failed, waits = load.failed(), stats["waits"]
    longest = max(s.latency_ms for s in load.samples)
    print(f"cold start: {len(load.samples)} REST requests, {len(failed)} failed, longest "
          f"{longest / 1000:.1f} s; {len(gload.codes)} gRPC, {len(gload.failed())} failed; "
          f"waits {waits}; node errors {[n['errors'] for n in stats['nodes']]}")
    assert not failed, failed[:5]
    assert not gload.failed(), gload.failed()[:5]
    assert len(load.samples) >= 40 and len(gload.codes) >= 20
    # No node was sent a request before it had the model AVAILABLE: none refused one.
    assert [n["errors"] for n in stats["nodes"]] == [0, 0, 0]
    assert waits["waits"] >= 1 and waits["timeouts"] == 0
    assert waits["max_s"] * 1000 <= longest + 50


def test_a_node_dns_adds_while_it_loads_gets_requests_once_it_serves(
        logs_dir: Path, test_models: Path) -> None:
    port = free_port()
    ready, _ = _worker(logs_dir, test_models, "dns-ready", host="127.0.0.2", port=port)
    late, _ = _worker(logs_dir, test_models, "dns-late", delay_s=6.0, host="127.0.0.3",
                      port=port)
    try:
        ready.wait_http(f"http://127.0.0.2:{port}/v1/models/{HP2}", 120.0,
                        lambda s, b: s == 200 and b'"AVAILABLE"' in b)
        with dns_server() as dns:
            dns.set_records("tf.test", ["127.0.0.2"], ttl=1)
            proxy = ProxyProc(logs_dir, [], name="proxy-dns-late", cache={"backend": "none"},
                              discovery={"dns": "tf.test", "rest_port": port,
                                         "grpc_port": None, "interval_s": 0.5,
                                         "timeout_s": 0.5, "nameserver": dns.address},
                              health={"interval_s": 0.5, "timeout_s": 0.5})
            try:
                with OpenLoad(f"{proxy.url}/v1/models/{HP2}:predict",
                              lambda i: orjson.dumps({"instances": [float(i % 100)]}),
                              rate=30, max_s=90, timeout_s=30) as load:
                    time.sleep(1.0)
                    dns.set_records("tf.test", ["127.0.0.2", "127.0.0.3"], ttl=1)
                    wait_until(lambda: any(n["name"] == "127.0.0.3" and n["requests"] > 0
                                           for n in proxy.stats()["nodes"]), 90.0,
                               "the late node serving")
                    time.sleep(1.0)
                nodes = {n["name"]: n for n in proxy.stats()["nodes"]}
            finally:
                proxy.stop()
    finally:
        ready.stop()
        late.stop()
    failed = load.failed()
    print(f"dns node joining while it loads: {len(load.samples)} requests, {len(failed)} "
          f"failed; late node {nodes['127.0.0.3']['requests']} requests, "
          f"{nodes['127.0.0.3']['errors']} errors")
    assert not failed, failed[:5]
    assert nodes["127.0.0.3"]["errors"] == 0


def test_past_the_queue_bound_503_with_retry_after(logs_dir: Path, test_models: Path) -> None:
    proc, node = _worker(logs_dir, test_models, "never-ready")
    proc.stop()                                     # the node never comes up
    proxy = ProxyProc(logs_dir, [node], name="proxy-bound", grpc=True,
                      cache={"backend": "none"}, limits={"queue_timeout_s": 0.5})
    try:
        start = time.monotonic()
        status, headers, body = http("POST", f"{proxy.url}/v1/models/{HP2}:predict",
                                     {"instances": [1.0]})
        assert status == 503 and headers.get("Retry-After") == "1"
        assert set(json.loads(body)) == {"error"}
        assert time.monotonic() - start < 5.0
        assert proxy.grpc
        with grpc.insecure_channel(proxy.grpc) as channel:
            try:
                channel.unary_unary(PREDICT)(predict_bytes(HP2, 2.0), timeout=10)
                raise AssertionError("expected UNAVAILABLE")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
        waits = get_json(f"{proxy.admin}/stats")["waits"]
        assert waits["timeouts"] >= 2
        metrics = http("GET", f"{proxy.admin}/metrics")[2].decode()
        assert "tfslb_model_waits_total" in metrics and "tfslb_model_wait_timeouts_total" in metrics
    finally:
        proxy.stop()
