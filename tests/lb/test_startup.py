"""A cold start: workers and the proxy started at the same moment, load from the first
second. Requests that arrive before any node has the model AVAILABLE wait for it
(limits.queue_timeout_s) instead of failing; past the bound they get 503 +
Retry-After in TF Serving's error shape (and UNAVAILABLE over gRPC)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import grpc
import orjson

from tests.lb.grpcload import PREDICT, predict_bytes
from tests.load import OpenLoad
from tests.procs import Proc, ProxyProc, free_port, get_json, http, lb_cmd, wait_until

HP2 = "half_plus_two"


def _worker(logs_dir: Path, models: Path, name: str) -> tuple[Proc, dict[str, object]]:
    port, grpc_port = free_port(), free_port()
    proc = Proc(name, lb_cmd("worker", "--port", str(port), "--grpc-port", str(grpc_port),
                             "--model", f"{HP2}={models / 'half_plus_two_cpu'}"), logs_dir)
    return proc, {"name": name, "rest": f"http://127.0.0.1:{port}",
                  "grpc": f"127.0.0.1:{grpc_port}"}


def test_cold_start_serves_every_request(logs_dir: Path, test_models: Path) -> None:
    started = [_worker(logs_dir, test_models, f"cold-{i}") for i in range(3)]
    procs = [p for p, _ in started]
    try:
        proxy = ProxyProc(logs_dir, [n for _, n in started], name="proxy-cold", grpc=True,
                          cache={"backend": "none"},
                          health={"interval_s": 0.5, "timeout_s": 0.5},
                          limits={"queue_timeout_s": 60, "request_timeout_s": 90})
        try:
            assert proxy.grpc
            with grpc.insecure_channel(proxy.grpc) as channel, OpenLoad(
                    f"{proxy.url}/v1/models/{HP2}:predict",
                    lambda i: orjson.dumps({"instances": [float(i % 100)]}),
                    rate=20, max_s=120, timeout_s=100) as load:
                # A gRPC call in the first second waits too, and is answered.
                reply = channel.unary_unary(PREDICT)(predict_bytes(HP2, 2.0), timeout=90)
                assert reply
                wait_until(lambda: all(n["healthy"] and n["requests"] > 0
                                       for n in proxy.stats()["nodes"]), 90.0,
                           "every worker up and serving")
                time.sleep(2.0)                           # load goes on after start-up
            waits = proxy.stats()["waits"]
        finally:
            proxy.stop()
    finally:
        for p in procs:
            p.stop()
    failed = load.failed()
    longest = max(s.latency_ms for s in load.samples)
    print(f"cold start: {len(load.samples)} requests, {len(failed)} failed, longest "
          f"{longest / 1000:.1f} s; waits {waits}")
    assert not failed, failed[:5]
    assert len(load.samples) >= 40
    assert waits["waits"] >= 1 and waits["timeouts"] == 0
    assert waits["max_s"] * 1000 <= longest + 50


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
