"""harness/wrk.py: reading wrk's --latency report."""

from __future__ import annotations

import math

from harness.wrk import parse

REPORT = """Running 6s test @ http://127.0.0.1:40000/v1/models/mnist:predict
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    14.31ms    6.02ms  81.20ms   80.00%
    Req/Sec     4.42k   301.11     4.90k    70.00%
  Latency Distribution
     50%   14.06ms
     75%   16.80ms
     90%   20.10ms
     99%  950.00us
  26450 requests in 6.00s, 3.10MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:   4408.35
Transfer/sec:    529.00KB
"""


def test_parse_reads_rate_percentiles_in_any_unit_and_errors() -> None:
    r = parse(REPORT)
    assert r["rps"] == 4408.35
    assert r["p50_ms"] == 14.06 and math.isclose(r["p99_ms"], 0.95)
    assert r["non_2xx"] == 7 and r["socket_errors"] == 3 and r["raw"] == ""


def test_parse_of_a_failed_run_is_nan_with_the_output_kept() -> None:
    r = parse("unable to connect to 127.0.0.1:1 Connection refused\n")
    assert math.isnan(r["rps"]) and math.isnan(r["p99_ms"])
    assert "refused" in r["raw"]
