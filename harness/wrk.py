"""wrk, the closed-loop load generator in C, for the benchmarks under scripts/.

Called by scripts/bench_raw.py (the data path), bench_batching.py (closed-loop
saturation), bench_http_server.py and bench_http_client.py (wrk as the yardstick).
wrk is not the bottleneck a Python generator is on a 2-core box; it is installed
with apt-get when missing (`scripts/benchenv.ensure_tool`).

Guarantees: `run` never raises for a wrk that failed or printed nothing it could
read: the figures are NaN, `raw` holds wrk's output and `stderr` what it said
there (e.g. a Lua error, after which wrk sends plain GETs).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.procs import die_with_us

LUA_POST = """
local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
"""

_SCALE = {"us": 1e-3, "ms": 1.0, "s": 1e3}


LUA_DISTINCT = """
-- every request a body no other has: the cache never hits (its adaptive controller
-- bypasses the model soon), and the proxy does what a miss costs
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil,
    '{{"instances": [[' .. n .. ', 0.25, 0.5, 0.75, 1.0, 0.125, 0.375, 0.625]]}}')
end
"""


def distinct_script(path: Path) -> Path:
    """Write a wrk Lua script at `path` that POSTs a different JSON body every time."""
    path.write_text(LUA_DISTINCT.format())
    return path


def post_script(path: Path, body_path: Path) -> Path:
    """Write a wrk Lua script at `path` that POSTs the bytes of `body_path` as JSON."""
    path.write_text(LUA_POST.format(body=body_path))
    return path


def _ms(out: str, pct: str) -> float:
    m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)", out, re.M)
    return float(m.group(1)) * _SCALE[m.group(2)] if m else float("nan")


def run(exe: str, url: str, seconds: float, connections: int,
        lua: Path | None, headers: dict[str, str] | None = None, *,
        prefix: Sequence[str] = ()) -> dict[str, Any]:
    """One `wrk -t1 -cN -dSs --latency` run: requests/s, p50/p99 (ms), errors.
    `headers` are sent with every request (-H); an https URL is TLS (keep-alive
    connections: one handshake each for the whole run). `prefix` goes before the
    command (e.g. `taskset -c 0` to pin wrk to a core)."""
    cmd = [*prefix, exe, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    if lua is not None:
        cmd += ["-s", str(lua)]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    done = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 30,
                          preexec_fn=die_with_us())
    return {**parse(done.stdout), "stderr": done.stderr.strip()}


def parse(out: str) -> dict[str, Any]:
    """The figures of wrk's `--latency` report (NaN where it has none)."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": float(rps.group(1)) if rps else float("nan"),
            "requests": int(total.group(1)) if total else 0,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(int(g) for g in sock.groups()) if sock else 0,
            "p50_ms": _ms(out, "50"), "p99_ms": _ms(out, "99"),
            "raw": out if not rps else ""}
