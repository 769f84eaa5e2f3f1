"""`serve --workers N`: N processes on one port, each answering for itself."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from tests.lb.conftest import Pool
from tests.procs import ProxyProc, RedisServer, http, node, wait_until


def _pid_of_stats(admin: str) -> int:
    status, _, raw = http("GET", f"{admin}/stats")        # a new connection every time
    assert status == 200
    return int(json.loads(raw)["pid"])


def test_workers_share_the_port_and_stop_together(logs_dir: Path, hp2_pool: Pool,
                                                  redis_server: RedisServer) -> None:
    p = ProxyProc(logs_dir, [node("a", hp2_pool.fast[0])], name="proxy-workers", workers=2,
                  cache={"backend": "tiered", "redis_url": redis_server.url})
    try:
        pids: set[int] = set()

        def both_answered() -> bool:
            pids.add(_pid_of_stats(p.admin))
            return len(pids) == 2

        wait_until(both_answered, 20.0, "stats from both processes")
        assert p.proc.pid not in pids                   # children answer, not the supervisor
        body = {"instances": [float(time.time() % 1000)]}
        replies = [http("POST", f"{p.url}/v1/models/half_plus_two:predict", body)
                   for _ in range(10)]
        assert all(r[0] == 200 for r in replies)
        # The processes share entries through Redis: after the first miss, only hits.
        assert [r[1]["X-Cache"] for r in replies].count("MISS") == 1
        p.proc.signal(signal.SIGTERM)
        assert p.proc.popen.wait(30) == 0, p.proc.log()
        for pid in pids:
            def exited(pid: int = pid) -> bool:
                return not os.path.exists(f"/proc/{pid}")

            wait_until(exited, 10, f"{pid} to exit")
    finally:
        p.stop()
