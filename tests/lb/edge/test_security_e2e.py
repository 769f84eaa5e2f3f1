"""The edge end to end: real proxies (`tfserving-lb serve`) over TLS with real
handshakes (certificates made by the tests), API keys and rate limits, in front of
the suite's TensorFlow workers; a TLS worker for TLS to nodes; a real redis-server
for shared budgets; real gRPC clients.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from harness.certs import CA, Pair
from harness.grpcwire import PREDICT, predict_bytes
from harness.loadgen import OpenLoad
from tests.lb.conftest import Pool
from tests.procs import (
    Proc,
    ProxyProc,
    RedisServer,
    free_port,
    http,
    lb_cmd,
    read_config,
    rewrite_config,
    scrape,
    tcp_open,
    wait_until,
)

pytestmark = pytest.mark.slow

HP2 = "half_plus_two"
PREDICT_URL = f"/v1/models/{HP2}:predict"
KEY_A = "ka-" + secrets.token_hex(16)       # unique strings: grepped for in logs and stats
KEY_B = "kb-" + secrets.token_hex(16)
HEALTH_CHECK = "/grpc.health.v1.Health/Check"


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass
class Pki:
    ca: CA
    other: CA
    server: Pair            # the proxy's fronts (localhost, 127.0.0.1)
    client: Pair            # a client certificate: CN=svc-a,O=ml
    stranger: Pair          # the same subject from another CA
    expired_client: Pair
    node_ca: CA
    node: Pair              # a TLS worker's certificate: localhost only (no IP)
    proxy_client: Pair      # what the proxy presents to mTLS nodes


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    base = tmp_path_factory.mktemp("pki")
    ca, other, node_ca = CA(base / "ca"), CA(base / "other", "other"), CA(base / "n", "node-ca")
    return Pki(ca, other, ca.issue("server", "localhost"),
               ca.issue("client", "svc-a", client=True, org="ml"),
               other.issue("stranger", "svc-a", client=True, org="ml"),
               ca.issue("old", "svc-a", client=True, org="ml", expired=True),
               node_ca, node_ca.issue("node", "localhost", hosts=("localhost",)),
               node_ca.issue("proxy", "tfserving-lb", client=True))


def ctx(pki: Pki, pair: Pair | None = None) -> ssl.SSLContext:
    c = ssl.create_default_context(cafile=str(pki.ca.path))
    if pair is not None:
        c.load_cert_chain(pair.cert, pair.key)
    return c


def tls_section(pki: Pki, **more: Any) -> dict[str, Any]:
    return {"cert": str(pki.server.cert), "key": str(pki.server.key), **more}


def body(x: float = 1.0, rows: int = 1) -> bytes:
    return json.dumps({"instances": [x + i for i in range(rows)]}).encode()


def call(proxy: ProxyProc, pki: Pki, path: str = PREDICT_URL, data: bytes | None = None,
         headers: dict[str, str] | None = None, pair: Pair | None = None,
         ) -> tuple[int, dict[str, str], bytes]:
    method = "POST" if data is not None else "GET"
    return http(method, proxy.url + path, data, headers, context=ctx(pki, pair))


def raw_tls(port: int, pki: Pki, request: bytes) -> bytes:
    """Send raw bytes over TLS; what came back before the server closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
            ctx(pki).wrap_socket(sock, server_hostname="localhost") as tls:
        tls.sendall(request)
        out = b""
        while chunk := tls.recv(65536):
            out += chunk
            if b"\r\n\r\n" in out:
                head, _, rest = out.partition(b"\r\n\r\n")
                size = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                if len(rest) >= size:
                    return out
        return out


def raw_plain(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


def grpc_call(target: str, pki: Pki, method: str, data: bytes,
              metadata: tuple[tuple[str, str], ...] = (), pair: Pair | None = None,
              ) -> grpc.StatusCode:
    async def go() -> grpc.StatusCode:
        creds = grpc.ssl_channel_credentials(
            pki.ca.pem, pair.key.read_bytes() if pair else None,
            pair.cert.read_bytes() if pair else None)
        async with grpc.aio.secure_channel(
                target, creds, options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
            try:
                await ch.unary_unary(method)(data, timeout=10, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK
    return asyncio.run(go())


def node_of(pool: Pool, i: int = 0) -> dict[str, Any]:
    return {"name": f"n{i}", "rest": pool.fast[i], "grpc": pool.procs[i].grpc}


def attempts(proxy: ProxyProc) -> int:
    return sum(int(n["requests"]) for n in proxy.stats()["nodes"])


def assert_no_secret(text: str) -> None:
    for secret in (KEY_A, KEY_B, sha(KEY_A), sha(KEY_B)):
        assert secret not in text


# --- the fronts over TLS with API keys ---------------------------------------------------


def test_tls_fronts_with_keys_scopes_and_bad_input(logs_dir: Path, hp2_pool: Pool,
                                                   pki: Pki) -> None:
    proxy = ProxyProc(logs_dir, [node_of(hp2_pool)], name="edge-keys", grpc=True,
                      tls=tls_section(pki), cache={"backend": "memory"},
                      log={"access": True},
                      auth={"keys": [{"id": "team-a", "sha256": sha(KEY_A), "models": [HP2]},
                                     {"id": "team-b", "sha256": [sha(KEY_B)],
                                      "models": ["other*"]}],
                            "open": ["health"]})
    try:
        a = {"x-api-key": KEY_A}
        assert call(proxy, pki, "/healthz")[0] == 200                 # open
        status, hdrs, got = call(proxy, pki, data=body(7.0))
        assert status == 401 and json.loads(got)["error"].startswith("missing API key")
        assert hdrs["WWW-Authenticate"].startswith("Bearer")
        assert call(proxy, pki, f"/v1/models/{HP2}")[0] == 401        # status: not open
        assert call(proxy, pki, f"/v1/models/{HP2}/metadata")[0] == 401
        status, hdrs, got = call(proxy, pki, data=body(7.0), headers=a)
        assert status == 200 and hdrs["X-Cache"] == "MISS"
        assert json.loads(got) == {"predictions": [5.5]}
        status, hdrs, _ = call(proxy, pki, data=body(7.0),
                               headers={"Authorization": f"Bearer {KEY_A}"})
        assert status == 200 and hdrs["X-Cache"] == "HIT"
        sent = attempts(proxy)
        hits = proxy.stats()["cache"]["hits"]
        # refused: never the cache (a hit waits for this body), never a node
        for headers, want, message in [
                ({}, 401, "missing API key"),
                ({"x-api-key": KEY_A + "x"}, 401, "invalid API key"),
                ({"Authorization": f"Basic {KEY_A}"}, 401, "malformed"),
                ({"Authorization": "Bearer"}, 401, "malformed"),
                ({"Authorization": "Bearer " + "k" * 6000}, 401, "malformed"),
                ({"x-api-key": KEY_B}, 403, "key 'team-b' may not call model 'half_plus_two'")]:
            status, _h, got = call(proxy, pki, data=body(7.0), headers=headers)
            assert status == want and message in json.loads(got)["error"], (headers, got)
        port = proxy.rest_port
        reply = raw_tls(port, pki, b"POST " + PREDICT_URL.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                        b"Authorization: Bearer \xff\xfek\r\nContent-Length: 2\r\n\r\n{}")
        assert reply.startswith(b"HTTP/1.1 401 ") and b'"error"' in reply
        reply = raw_tls(port, pki, b"GET /healthz HTTP/1.1\r\nAuthorization: Bearer "
                        + b"k" * 9000 + b"\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 431 ")                     # the HTTP limit
        assert attempts(proxy) == sent and proxy.stats()["cache"]["hits"] == hits
        # the TLS port refuses what is not TLS: closed, no reply
        for junk in (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(512)):
            got_back = raw_plain(port, junk)
            assert b"HTTP/" not in got_back and (not got_back or got_back[0] == 0x15)
        # gRPC over TLS: the same keys and refusals
        target = str(proxy.grpc)
        req = predict_bytes(HP2, 2.0)
        assert grpc_call(target, pki, PREDICT, req) == grpc.StatusCode.UNAUTHENTICATED
        assert grpc_call(target, pki, PREDICT, req, (("x-api-key", KEY_A),)) == grpc.StatusCode.OK
        assert grpc_call(target, pki, PREDICT, req,
                         (("authorization", f"Bearer {KEY_A}"),)) == grpc.StatusCode.OK
        assert grpc_call(target, pki, PREDICT, req, (("x-api-key", KEY_B),)) \
            == grpc.StatusCode.PERMISSION_DENIED
        assert grpc_call(target, pki, PREDICT, req, (("x-api-key", "nope"),)) \
            == grpc.StatusCode.UNAUTHENTICATED
        assert grpc_call(target, pki, HEALTH_CHECK, b"") == grpc.StatusCode.OK   # open
        stats = proxy.stats()
        keys = stats["security"]["auth"]["by_key"]
        assert keys["team-a"]["allowed"] == 4 and keys["team-b"]["forbidden"] == 2
        assert stats["security"]["auth"]["unauthenticated"] == {
            "missing": 5, "invalid": 2, "malformed": 4}
        assert stats["security"]["tls"]["enabled"] is True
        metrics = scrape(proxy.admin)
        samples = {(s.labels.get("key"), s.labels.get("result")): s.value
                   for s in metrics["tfslb_auth_requests"].samples}
        assert samples[("team-a", "allowed")] == 4
        _s, _h, text = http("GET", proxy.admin + "/metrics")
        _s, _h, doc = http("GET", proxy.admin + "/stats")
        assert_no_secret(text.decode() + doc.decode())
    finally:
        proxy.stop()
    log = proxy.proc.log_path.read_text()
    assert "Traceback" not in log and '" 401 ' in log               # access log lines
    assert_no_secret(log)


def test_mtls_front_client_certificate_stands_for_a_key(logs_dir: Path, hp2_pool: Pool,
                                                       pki: Pki) -> None:
    proxy = ProxyProc(logs_dir, [node_of(hp2_pool)], name="edge-mtls", grpc=True,
                      tls=tls_section(pki, client_ca=str(pki.ca.path), require_client_cert=True),
                      cache={"backend": "none"},
                      auth={"keys": [{"id": "svc-a", "subject": "CN=svc-a,O=ml",
                                      "models": ["half_*"]}]})
    try:
        status, _h, got = call(proxy, pki, data=body(3.0), pair=pki.client)
        assert status == 200 and json.loads(got) == {"predictions": [3.5]}
        for pair in (None, pki.stranger, pki.expired_client):         # no handshake
            with pytest.raises(OSError):
                call(proxy, pki, data=body(3.0), pair=pair)
        req = predict_bytes(HP2, 1.0)
        assert grpc_call(str(proxy.grpc), pki, PREDICT, req, pair=pki.client) \
            == grpc.StatusCode.OK
        assert grpc_call(str(proxy.grpc), pki, PREDICT, req) == grpc.StatusCode.UNAVAILABLE
        assert proxy.stats()["security"]["auth"]["by_key"]["svc-a"]["allowed"] == 2
    finally:
        proxy.stop()
    assert "Traceback" not in proxy.proc.log_path.read_text()


# --- rotation under load -----------------------------------------------------------------


def swap(live: Pair, new: Pair) -> None:
    """Rewrite the key, then the certificate (each an atomic rename): between the two
    the files do not match, as a Secret update can leave them for a moment."""
    for part in ("key", "cert"):
        target: Path = getattr(live, part)
        tmp = target.with_suffix(".new")
        tmp.write_bytes(getattr(new, part).read_bytes())
        os.replace(tmp, target)
        time.sleep(0.3)


def served_cn(port: int, pki: Pki) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
            ctx(pki).wrap_socket(sock, server_hostname="localhost") as tls:
        cert = tls.getpeercert()
    assert cert is not None
    names = {str(rdn[0][0]): str(rdn[0][1]) for rdn in cert["subject"]}
    return names["commonName"]


def test_rotation_under_open_loop_load_fails_nothing(logs_dir: Path, hp2_pool: Pool,
                                                     pki: Pki, tmp_path: Path) -> None:
    live = Pair(tmp_path / "tls.crt", tmp_path / "tls.key")
    swap(live, pki.server)
    fresh = pki.ca.issue("rotated", "rotated", hosts=("localhost", "127.0.0.1"))
    proxy = ProxyProc(logs_dir, [node_of(hp2_pool, i) for i in range(3)], name="edge-rot",
                      grpc=True, cache={"backend": "none"},
                      tls={"cert": str(live.cert), "key": str(live.key), "poll_s": 0.1})
    try:
        url = proxy.url + PREDICT_URL
        assert served_cn(proxy.rest_port, pki) == "localhost"
        channel_ok: list[grpc.StatusCode] = []

        async def grpc_before_and_after() -> None:
            creds = grpc.ssl_channel_credentials(pki.ca.pem)
            async with grpc.aio.secure_channel(
                    str(proxy.grpc), creds,
                    options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
                for i in range(20):                     # one channel across the rotation
                    await ch.unary_unary(PREDICT)(predict_bytes(HP2, float(i)), timeout=10)
                    channel_ok.append(grpc.StatusCode.OK)
                    await asyncio.sleep(0.05)
        # the rates are what one Python thread making a TLS handshake per request keeps
        # to on this 2-core box beside the proxy and the workers
        with OpenLoad(url, lambda i: body(float(i)), rate=25, max_s=8, ssl=ctx(pki),
                      fresh=True) as handshakes, \
                OpenLoad(url, lambda i: body(float(i)), rate=25, max_s=8,
                         ssl=ctx(pki)) as kept:
            time.sleep(1.5)
            swap(live, fresh)
            wait_until(lambda: served_cn(proxy.rest_port, pki) == "rotated", 5.0, "rotation")
            asyncio.run(grpc_before_and_after())
            time.sleep(1.0)
        assert grpc_call(str(proxy.grpc), pki, PREDICT, predict_bytes(HP2, 1.0)) \
            == grpc.StatusCode.OK                                   # a new channel
        for load in (handshakes, kept):
            assert len(load.samples) >= 120
            assert load.failed() == [], load.failed()[:5]
        tls = proxy.stats()["security"]["tls"]
        assert tls["rotations"] == 1 and tls["failures"] >= 1     # the moment of no match
        print(f"rotation under load: {len(handshakes.samples)} requests on new connections, "
              f"{len(kept.samples)} on kept ones, {len(channel_ok)} gRPC calls on one "
              f"channel, 0 failed; rotations {tls['rotations']}, pairs skipped "
              f"{tls['failures']}")
    finally:
        proxy.stop()
    assert "Traceback" not in proxy.proc.log_path.read_text()


# --- TLS to nodes ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_worker(logs_dir: Path, test_models: Path, pki: Pki) -> Iterator[tuple[int, int]]:
    """A TF worker serving REST and gRPC over TLS that requires the proxy's client
    certificate (mTLS), with a certificate for "localhost" only."""
    port, gport = free_port(), free_port()
    proc = Proc("tls-worker", lb_cmd(
        "worker", "--port", str(port), "--grpc-port", str(gport),
        "--model", f"{HP2}={test_models / 'half_plus_two_cpu'}",
        "--tls-cert", str(pki.node.cert), "--tls-key", str(pki.node.key),
        "--tls-client-ca", str(pki.node_ca.path)), logs_dir)
    c = ssl.create_default_context(cafile=str(pki.node_ca.path))
    c.load_cert_chain(pki.proxy_client.cert, pki.proxy_client.key)
    try:
        wait_until(lambda: http("GET", f"https://localhost:{port}/v1/models/{HP2}",
                                context=c, timeout=2)[0] == 200 and tcp_open(
                                    f"127.0.0.1:{gport}"), 120, "TLS worker")
        yield port, gport
    finally:
        proc.stop()


def node_tls(pki: Pki, **more: Any) -> dict[str, Any]:
    return {"ca": str(pki.node_ca.path), "cert": str(pki.proxy_client.cert),
            "key": str(pki.proxy_client.key), "grpc": True, **more}


def test_tls_and_mtls_to_nodes_rest_grpc_health(logs_dir: Path, pki: Pki,
                                                tls_worker: tuple[int, int]) -> None:
    port, gport = tls_worker
    good = {"name": "t", "rest": f"https://localhost:{port}", "grpc": f"localhost:{gport}"}
    by_ip = {"name": "t", "rest": f"https://127.0.0.1:{port}", "grpc": f"127.0.0.1:{gport}"}
    # (an expired node certificate, a wrong CA and a missing client certificate are
    # refused by the pools themselves: tests/lb/http/test_client.py)
    cases = [("verified", good, node_tls(pki), True),
             ("hostname mismatch", by_ip, node_tls(pki), False),
             ("server_name override", by_ip, node_tls(pki, server_name="localhost"), True),
             ("no client certificate", good, {"ca": str(pki.node_ca.path), "grpc": True}, False)]
    for label, node, tls, works in cases:
        proxy = ProxyProc(logs_dir, [node], name="edge-up", grpc=True,
                          cache={"backend": "none"}, upstream={"tls": tls},
                          health={"interval_s": 0.5, "timeout_s": 1.0},
                          limits={"queue_timeout_s": 1.0})   # no node ready: 503 soon
        try:
            if works:
                def healthy(p: ProxyProc = proxy) -> bool:
                    return bool(p.stats()["nodes"][0]["healthy"])
                wait_until(healthy, 10, label)
            else:
                time.sleep(1.5)
                assert not proxy.stats()["nodes"][0]["healthy"], label
            status, _h, got = http("POST", proxy.url + PREDICT_URL, body(2.0))
            assert (status == 200) == works, (label, status, got)
            if works:
                assert json.loads(got) == {"predictions": [3.0]}
                code = asyncio.run(_plain_grpc(str(proxy.grpc)))
                assert code == grpc.StatusCode.OK, label
        finally:
            proxy.stop()


async def _plain_grpc(target: str) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(target) as ch:
        try:
            await ch.unary_unary(PREDICT)(predict_bytes(HP2, 1.0), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


# --- rate limits -------------------------------------------------------------------------


def accepted_rate(load: OpenLoad, seconds: float) -> float:
    return sum(1 for s in load.samples if s.status == 200) / seconds


def test_rate_limits_local_accuracy_over_10s(logs_dir: Path, hp2_pool: Pool,
                                             pki: Pki) -> None:
    proxy = ProxyProc(logs_dir, [node_of(hp2_pool, i) for i in range(3)], name="edge-rl",
                      grpc=True, cache={"backend": "none"},
                      auth={"keys": [
                          {"id": "req", "sha256": sha(KEY_A),
                           "limits": {"requests_per_s": 20, "burst_s": 0.2}},
                          {"id": "rows", "sha256": sha(KEY_B),
                           "limits": {"rows_per_s": 50, "burst_s": 0.2}}]})
    try:
        url = proxy.url + PREDICT_URL
        with OpenLoad(url, lambda i: body(float(i)), rate=40, max_s=10,
                      headers={"x-api-key": KEY_A}) as req, \
                OpenLoad(url, lambda i: body(float(i), rows=5), rate=20, max_s=10,
                         headers={"x-api-key": KEY_B}) as rows:
            time.sleep(10.5)
        statuses = {s.status for s in req.samples + rows.samples}
        assert statuses == {200, 429}, statuses                   # no 5xx, nothing else
        got_req, got_rows = accepted_rate(req, 10), accepted_rate(rows, 10) * 5
        print(f"local rate limits over 10 s: requests {got_req:.1f}/s of 20 configured "
              f"({got_req / 20:.3f}x), rows {got_rows:.1f}/s of 50 ({got_rows / 50:.3f}x)")
        assert 18 <= got_req <= 22 and 45 <= got_rows <= 55
        accepted = sum(1 for s in req.samples + rows.samples if s.status == 200)
        assert attempts(proxy) == accepted                          # 429s reached no node
        for _ in range(50):             # status GETs are quick: past 20/s at once
            status, hdrs, got = http("GET", f"{proxy.url}/v1/models/{HP2}", None,
                                     {"x-api-key": KEY_A})
            if status == 429:
                break
        assert status == 429 and int(hdrs["Retry-After"]) >= 1
        assert json.loads(got)["error"].startswith("rate limit of key 'req' exceeded")
        time.sleep(0.5)                 # the bucket full again (its depth: 4 requests)
        codes = asyncio.run(_grpc_burst(str(proxy.grpc), KEY_A, 30))
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    finally:
        proxy.stop()


async def _grpc_burst(target: str, key: str, n: int) -> list[grpc.StatusCode]:
    """n Predict calls at once on one channel: their status codes."""
    async with grpc.aio.insecure_channel(target) as ch:
        method = ch.unary_unary(PREDICT)

        async def one(i: int) -> grpc.StatusCode:
            try:
                await method(predict_bytes(HP2, float(i)), timeout=10,
                             metadata=(("x-api-key", key),))
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK
        return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_rate_limits_shared_in_redis_by_two_proxies(logs_dir: Path, hp2_pool: Pool,
                                                    private_redis: RedisServer) -> None:
    section = {"shared": "redis", "redis_url": private_redis.url, "redis_timeout_ms": 50,
               "retry_s": 0.5}
    auth = {"keys": [{"id": "both", "sha256": sha(KEY_A),
                      "limits": {"requests_per_s": 30, "burst_s": 0.2}}]}
    nodes = [node_of(hp2_pool, i) for i in range(3)]
    one = ProxyProc(logs_dir, nodes, name="edge-sh1", cache={"backend": "none"},
                    auth=auth, rate_limit=section)
    two = ProxyProc(logs_dir, nodes, name="edge-sh2", cache={"backend": "none"},
                    auth=auth, rate_limit=section)
    try:
        loads = [OpenLoad(p.url + PREDICT_URL, lambda i: body(float(i)), rate=30, max_s=10,
                          headers={"x-api-key": KEY_A}) for p in (one, two)]
        with loads[0], loads[1]:
            time.sleep(10.5)
        total = sum(accepted_rate(load, 10) for load in loads)
        shares = [accepted_rate(load, 10) for load in loads]
        print(f"shared rate limit over 10 s, two proxies: {total:.1f}/s of 30 configured "
              f"({total / 30:.3f}x; per proxy {shares[0]:.1f}, {shares[1]:.1f})")
        assert 27 <= total <= 33
        assert {s.status for load in loads for s in load.samples} == {200, 429}
        assert one.stats()["security"]["rate_limit"]["state"] == "redis"
        # Redis lost: fail open to each proxy's own buckets, and say so
        private_redis.kill()
        statuses = [http("POST", one.url + PREDICT_URL, body(), {"x-api-key": KEY_A})[0]
                    for _ in range(5)]
        assert 200 in statuses and set(statuses) <= {200, 429}
        st = one.stats()["security"]["rate_limit"]
        assert st["state"] == "local" and st["errors"] >= 1 and st["local_decisions"] >= 1
        assert scrape(one.admin)["tfslb_ratelimit_shared_up"].samples[0].value == 0.0
        private_redis.start()
        time.sleep(0.6)
        wait_until(lambda: http("POST", one.url + PREDICT_URL, body(),
                                {"x-api-key": KEY_A})[0] in (200, 429)
                   and one.stats()["security"]["rate_limit"]["state"] == "redis",
                   10.0, "shared budgets again")
    finally:
        one.stop()
        two.stop()
    for proxy in (one, two):
        assert "Traceback" not in proxy.proc.log_path.read_text()


def test_auth_turned_on_and_off_by_a_reload(logs_dir: Path, hp2_pool: Pool,
                                            tmp_path: Path) -> None:
    proxy = ProxyProc(logs_dir, [node_of(hp2_pool)], name="edge-reload", grpc=True,
                      cache={"backend": "none"}, reload={"watch": False})
    try:
        url = proxy.url + PREDICT_URL
        assert http("POST", url, body())[0] == 200
        doc = read_config(proxy.config_path)
        keys = tmp_path / "keys.yaml"
        keys.write_text(f"keys:\n  - id: late\n    sha256: {sha(KEY_A)}\n")
        rewrite_config(proxy.config_path, {**doc, "auth": {"keys_file": str(keys)}})
        status, _h, got = http("POST", proxy.admin + "/reload")
        assert status == 200, got
        assert http("POST", url, body())[0] == 401
        assert http("POST", url, body(), {"x-api-key": KEY_A})[0] == 200
        assert asyncio.run(_grpc_burst(str(proxy.grpc), KEY_A, 1)) == [grpc.StatusCode.OK]
        assert asyncio.run(_grpc_burst(str(proxy.grpc), "wrong", 1)) == [
            grpc.StatusCode.UNAUTHENTICATED]
        keys.write_text("keys:\n  - id: late\n    sha256: not-a-hash\n")
        status, _h, got = http("POST", proxy.admin + "/reload")
        assert status == 400 and b"auth.keys_file" in got and b"not-a-hash" not in got
        assert http("POST", url, body(), {"x-api-key": KEY_A})[0] == 200   # kept
        rewrite_config(proxy.config_path, doc)
        assert http("POST", proxy.admin + "/reload")[0] == 200
        assert http("POST", url, body())[0] == 200                          # off again
    finally:
        proxy.stop()
