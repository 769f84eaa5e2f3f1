"""The REST front's HTTP behaviour, over raw sockets, against the real proxy and workers.

Every behaviour a client relies on: keep-alive and pipelining (answered in
order), chunked request bodies, `Expect: 100-continue`, HTTP/1.0 and
`Connection: close`, the size limits (413/414/431), slow headers and bodies
(408), the idle keep-alive timeout, malformed requests (400 in TF Serving's
`{"error"}` shape), a client that leaves mid-request (the node's request is
cancelled and every counter returns to 0), /healthz and /readyz, and the
SIGTERM drain.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lb.rest.routes import RowSizes
from tests.lb.conftest import SLOW_MS, Pool
from tests.procs import ProxyProc, http, node, scrape, wait_until

HP2 = "half_plus_two"
PREDICT = f"/v1/models/{HP2}:predict".encode()


@pytest.fixture(scope="module")
def proxy(logs_dir: Path, hp2_pool: Pool) -> Iterator[ProxyProc]:
    p = ProxyProc(logs_dir, [node("a", hp2_pool.fast[0]), node("slow", hp2_pool.slow)],
                  name="proxy-http", cache={"backend": "none"}, hedge={"enabled": False},
                  limits={"max_body_mb": 0.01, "body_timeout_s": 0.5, "keepalive_s": 1.0,
                          "max_url_bytes": 512, "max_header_bytes": 512, "max_headers": 20})
    yield p
    p.stop()


def _port(p: ProxyProc) -> int:
    return int(p.url.rsplit(":", 1)[1])


def _post(body: bytes, extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return (b"POST " + PREDICT + b" HTTP/" + version + b"\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
            + extra + b"\r\n" + body)


Reply = tuple[int, dict[str, str], bytes]


def _read_replies(sock: socket.socket, count: int, timeout: float = 10.0) -> list[Reply]:
    """Read `count` complete HTTP/1.1 replies (Content-Length framed) from `sock`."""
    sock.settimeout(timeout)
    buf = b""
    out: list[Reply] = []
    while len(out) < count:
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(out)} replies: {buf!r}")
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed mid-body")
            rest += chunk
        out.append((status, headers, rest[:length]))
        buf = rest[length:]
    return out


def _connect(p: ProxyProc) -> socket.socket:
    return socket.create_connection(("127.0.0.1", _port(p)), timeout=10)


def _closed(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_keep_alive_and_pipelined_requests_are_answered_in_order(proxy: ProxyProc) -> None:
    with _connect(proxy) as s:
        batch = b"".join(_post(json.dumps({"instances": [float(i)]}).encode())
                         for i in range(8))
        batch += b"GET /v1/models/" + HP2.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        s.sendall(batch)                                   # nine requests, one write
        replies = _read_replies(s, 9)
    for i, (status, headers, body) in enumerate(replies[:8]):
        assert status == 200 and headers["x-cache"] == "MISS"
        assert json.loads(body) == {"predictions": [0.5 * i + 2.0]}
    assert replies[8][0] == 200 and "model_version_status" in json.loads(replies[8][2])


def test_chunked_request_body(proxy: ProxyProc) -> None:
    body = json.dumps({"instances": [1.0, 2.0, 5.0]}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:7], body[7:]))
    with _connect(proxy) as s:
        s.sendall(b"POST " + PREDICT + b" HTTP/1.1\r\nHost: x\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
        (status, _, reply), = _read_replies(s, 1)
    assert status == 200 and json.loads(reply) == {"predictions": [2.5, 3.0, 4.5]}


def test_expect_100_continue(proxy: ProxyProc) -> None:
    body = json.dumps({"instances": [1.0] * 300}).encode()         # > 1 KB, as curl does
    with _connect(proxy) as s:
        head = _post(body, b"Expect: 100-continue\r\n")[: -len(body)]
        s.sendall(head)
        s.settimeout(5)
        interim = s.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), interim
        s.sendall(body)
        (status, _, reply), = _read_replies(s, 1)
    assert status == 200 and len(json.loads(reply)["predictions"]) == 300
    big = json.dumps({"instances": [1.0] * 5000}).encode()          # over max_body_mb
    with _connect(proxy) as s:
        s.sendall(_post(big, b"Expect: 100-continue\r\n")[: -len(big)])
        (status, _, reply), = _read_replies(s, 1)
    assert status == 413 and set(json.loads(reply)) == {"error"}


def test_http_1_0_and_connection_close_end_the_connection(proxy: ProxyProc) -> None:
    body = json.dumps({"instances": [2.0]}).encode()
    for request in (_post(body, version=b"1.0"), _post(body, b"Connection: close\r\n")):
        with _connect(proxy) as s:
            s.sendall(request)
            (status, _, reply), = _read_replies(s, 1)
            assert status == 200 and json.loads(reply) == {"predictions": [3.0]}
            assert _closed(s, 3.0)
    with _connect(proxy) as s:                          # 1.0 with keep-alive stays open
        s.sendall(_post(body, b"Connection: keep-alive\r\n", version=b"1.0") * 2)
        assert [r[0] for r in _read_replies(s, 2)] == [200, 200]


@pytest.mark.parametrize("request_bytes, status", [
    (_post(json.dumps({"instances": [1.0] * 5000}).encode()), 413),
    (b"GET /v1/models/" + b"m" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    (b"GET /v1/models/x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 2000 + b"\r\n\r\n", 431),
    (b"GET /v1/models/x HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(40))
     + b"\r\n", 431),
    (b"GARBAGE\x01\x02 / HTTP/1.1\r\n\r\n", 400),
    (b"GET /v1/models/x HTTP/1.1\r\nBad Header\r\n\r\n", 400),
])
def test_limits_and_malformed_requests_get_the_error_shape(
        proxy: ProxyProc, request_bytes: bytes, status: int) -> None:
    with _connect(proxy) as s:
        s.sendall(request_bytes)
        (got, headers, reply), = _read_replies(s, 1)
    assert got == status, reply
    assert headers["content-type"] == "application/json"
    assert set(json.loads(reply)) == {"error"}
    assert http("GET", f"{proxy.url}/v1/models/{HP2}")[0] == 200        # still serving


@pytest.mark.parametrize("bad", [b"{not json", b'{"instances": 3}', b"[1, 2]"])
def test_bodies_sent_unparsed_are_still_checked(proxy: ProxyProc, bad: bytes) -> None:
    """With no cache work, the proxy counts a body's rows from its size once it has
    parsed a few (lb.rest.routes.RowSizes): a malformed body then reaches the node, whose
    400 must come back in the same {"error"} shape, and the next body still works."""
    url = f"{proxy.url}{PREDICT.decode()}"
    good = b'{"instances": [1.0, 2.0, 5.0]}'
    for _ in range(RowSizes.WARM + 2):
        status, _h, reply = http("POST", url, good)
        assert (status, json.loads(reply)) == (200, {"predictions": [2.5, 3.0, 4.5]})
    status, _h, reply = http("POST", url, bad)
    assert status == 400, reply
    assert set(json.loads(reply)) == {"error"}
    assert http("POST", url, good)[0] == 200


def test_slow_body_gets_408_and_an_idle_connection_is_closed(proxy: ProxyProc) -> None:
    with _connect(proxy) as s:
        s.sendall(_post(b'{"instances": [1.0]}' + b" " * 80)[:-70])      # body cut short
        start = time.monotonic()
        (status, _, reply), = _read_replies(s, 1)
        assert status == 408 and set(json.loads(reply)) == {"error"}
        assert time.monotonic() - start < 3.0
    with _connect(proxy) as s:
        s.sendall(_post(json.dumps({"instances": [1.0]}).encode()))
        assert _read_replies(s, 1)[0][0] == 200
        start = time.monotonic()
        assert _closed(s, 5.0)                               # keepalive_s = 1.0
        assert 0.5 < time.monotonic() - start < 4.0


def _left(p: ProxyProc) -> float:
    """Client requests counted with code 499 (the client left before the reply)."""
    return sum(s.value for s in scrape(p.admin)["tfslb_requests"].samples
               if s.name == "tfslb_requests_total" and s.labels["code"] == "499")


def test_client_leaving_mid_request_cancels_the_node_request(proxy: ProxyProc) -> None:
    left = _left(proxy)
    # "slow" takes SLOW_MS per request: leave before it answers.
    with _connect(proxy) as s:
        for i in range(4):
            s.sendall(b"POST /v1/models/" + HP2.encode() + b"/versions/123:predict HTTP/1.1\r\n"
                      b"Host: x\r\nContent-Length: 20\r\n\r\n{\"instances\": [%d.0]}" % i)
        time.sleep(SLOW_MS / 4000.0)
    def settled() -> bool:
        stats = proxy.stats()
        busy = sum(n["busy"] for n in stats["upstream"]["rest"].values())
        return (stats["inflight"] == 0 and busy == 0
                and all(n["inflight"] == 0 for n in stats["nodes"]))
    wait_until(settled, 5.0, "in-flight counters and node connections back to 0")
    assert _left(proxy) == left + 1       # the one in progress; the pipelined rest dropped


def test_healthz_and_readyz(proxy: ProxyProc) -> None:
    assert http("GET", f"{proxy.url}/healthz")[0] == 200
    status, _, body = http("GET", f"{proxy.url}/readyz")
    assert status == 200 and json.loads(body) == {"status": "ok"}


def _ready(p: ProxyProc) -> bool:
    """What a kubelet's probe sees: 200 from /readyz on a new connection."""
    try:
        return http("GET", f"{p.url}/readyz", timeout=1)[0] == 200
    except OSError:                     # refused: the listener is closed
        return False


def test_sigterm_drains_requests_in_flight_then_refuses(logs_dir: Path, hp2_pool: Pool) -> None:
    p = ProxyProc(logs_dir, [node("slow", hp2_pool.slow)], name="proxy-drain",
                  cache={"backend": "none"}, hedge={"enabled": False})
    results: list[int] = []

    def one(i: int) -> None:
        results.append(http("POST", f"{p.url}/v1/models/{HP2}:predict",
                            {"instances": [float(i)]}, timeout=10)[0])

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        time.sleep(SLOW_MS / 4000.0)                    # requests are on the node now
        p.proc.signal(signal.SIGTERM)
        wait_until(lambda: not _ready(p), 2.0, "readiness to fail once draining")
        for t in threads:
            t.join(15)
        assert results == [200] * 4
        p.proc.popen.wait(15)
        assert p.proc.popen.returncode == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", _port(p)), timeout=1).close()
    finally:
        p.stop()
