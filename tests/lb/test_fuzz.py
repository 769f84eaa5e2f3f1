"""Property-based fuzzing of the live proxy: paths, methods, headers, bodies.

Whatever a client sends over well-formed HTTP, the proxy answers; its own
errors are 4xx in TF Serving's {"error": "..."} shape; a 5xx comes only from a
node (X-Node says which) and never from the proxy for its own reasons; the
process survives. Malformed HTTP (bad request lines, bytes outside header
syntax) is rejected by the HTTP layer before any handler and is not generated.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.lb.conftest import Pool
from tests.procs import ProxyProc, node


@pytest.fixture(scope="module")
def proxy(logs_dir: Path, hp2_pool: Pool) -> Iterator[ProxyProc]:
    p = ProxyProc(logs_dir, [node("a", hp2_pool.fast[0]), node("b", hp2_pool.fast[1])],
                  name="proxy-fuzz", models={"half_plus_two": {"row_cache": True}},
                  limits={"max_body_mb": 1})
    yield p
    assert p.proc.alive(), p.proc.log()
    p.stop()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20)

model_names = st.sampled_from(["half_plus_two", "half_plus_two_2v", "nope", ""]) | st.text(
    alphabet="abcxyz_-.:%/0123456789", min_size=1, max_size=12)
suffixes = st.sampled_from(["", ":predict", ":classify", ":regress", ":explode", "/metadata",
                            "/versions/123:predict", "/versions/99999999999999999999",
                            "/labels/stable:predict", "/versions/-1", "//", "/versions/"])
paths = st.one_of(
    st.builds(lambda m, s: f"/v1/models/{m}{s}", model_names, suffixes),
    st.text(alphabet="/abcv1:%._-?=&#0123456789", max_size=40).map(lambda t: "/" + t))

bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={
        "instances": json_values, "inputs": json_values, "examples": json_values,
        "signature_name": json_values, "context": json_values,
    }).map(lambda d: json.dumps(d).encode()),
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=8).map(
        lambda xs: json.dumps({"instances": xs}).encode()),
)

header_values = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-=,; 0123456789/*", max_size=40)
headers = st.dictionaries(
    st.sampled_from(["Cache-Control", "Content-Type", "Accept", "X-Anything", "Accept-Encoding",
                     "Content-Encoding"]),
    header_values, max_size=4)


def send(url: str, method: str, path: str, body: bytes, hdrs: dict[str, str]
         ) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        safe = quote(path, safe="/:%?=&._-")
        conn.request(method, safe, body=body if method not in ("GET", "HEAD") else None,
                     headers=hdrs)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def check(method: str, status: int, hdrs: dict[str, str], raw: bytes) -> None:
    from_node = "X-Node" in hdrs
    assert 100 <= status < 600
    if status >= 500:
        assert from_node, (status, raw[:200])            # never the proxy's own 5xx
    if status >= 400 and not from_node and method != "HEAD":
        doc: Any = json.loads(raw)
        assert isinstance(doc, dict) and set(doc) == {"error"} and isinstance(doc["error"], str)


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
       path=paths, body=bodies, hdrs=headers)
def test_any_request_gets_a_tf_serving_shaped_answer(proxy: ProxyProc, method: str, path: str,
                                                     body: bytes, hdrs: dict[str, str]) -> None:
    status, resp_headers, raw = send(proxy.url, method, path, body, hdrs)
    check(method, status, resp_headers, raw)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=bodies, cache_control=header_values)
def test_predict_bodies_never_make_the_proxy_fail(proxy: ProxyProc, body: bytes,
                                                  cache_control: str) -> None:
    status, hdrs, raw = send(proxy.url, "POST", "/v1/models/half_plus_two:predict", body,
                             {"Cache-Control": cache_control})
    check("POST", status, hdrs, raw)
    assert status not in (404, 405)
