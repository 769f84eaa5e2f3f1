"""nginx for the benchmarks: a non-daemon master with its own prefix, conf, pid and logs.

Called by scripts/benchenv.py (`Bench.start_nginx`: stubs, balancers, TLS and
gRPC fronts), bench_http_client.py and bench_http_server.py (a `return 200`
yardstick). nginx-light is installed with apt-get when missing. Guarantees:
`start` returns only once `wait_url` answers 200 (15 s), or raises naming the
error log with nothing left running; the master dies with this process.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from harness.procs import die_with_us, ensure_tool, wait_http

MAIN = """
worker_processes {processes};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
{http}
}}
"""


def start(prefix: Path, http_conf: str, wait_url: str, *, processes: int = 1,
          wrapper: Sequence[str] = ()) -> subprocess.Popen[bytes]:
    """nginx with `http_conf` as the inside of its `http {}` block, under `prefix`
    (emptied first); `wrapper` goes before the command (e.g. `taskset -c 1`)."""
    exe = ensure_tool("nginx", "nginx-light")
    shutil.rmtree(prefix, ignore_errors=True)
    prefix.mkdir(parents=True)
    prefix.chmod(0o777)
    conf = prefix / "nginx.conf"
    conf.write_text(MAIN.format(prefix=prefix, processes=processes, http=http_conf))
    with open(prefix / "stderr.log", "wb") as log:
        proc = subprocess.Popen(
            [*wrapper, exe, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_us())
    try:
        wait_http(wait_url, 15.0)
    except TimeoutError:
        stop(proc)
        raise RuntimeError(f"nginx did not start: see {prefix}/error.log") from None
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Graceful (SIGQUIT: the workers finish their requests), then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGQUIT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
