"""`tfserving-lb demo` as a user runs it: up, curl example works, Ctrl-C stops all."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from tests.procs import Proc, free_port, http, lb_cmd, wait_until


def _children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def test_demo_serves_predictions_and_stops_cleanly(tmp_path: Path, logs_dir: Path) -> None:
    port, admin = free_port(), free_port()
    demo = Proc("demo", lb_cmd("demo", "--port", str(port), "--admin-port", str(admin),
                               "--dir", str(tmp_path / "models")), logs_dir)
    try:
        wait_until(lambda: "Ctrl-C stops everything" in demo.log(), 150.0, "the demo banner")
        workers = _children_of(demo.pid)
        assert len(workers) == 3, demo.log()
        banner = demo.log()
        sample = tmp_path / "models" / "sample.json"
        assert f"-d @{sample}" in banner
        url = f"http://127.0.0.1:{port}/v1/models/mnist:predict"
        first = http("POST", url, sample.read_bytes())
        second = http("POST", url, sample.read_bytes())
        assert first[0] == second[0] == 200
        assert (first[1]["X-Cache"], second[1]["X-Cache"]) == ("MISS", "HIT")
        probs = json.loads(first[2])["predictions"]
        assert len(probs) == 2 and all(abs(sum(row) - 1.0) < 1e-3 for row in probs)
        stats = json.loads(http("GET", f"http://127.0.0.1:{admin}/stats")[2])
        assert len(stats["nodes"]) == 3 and stats["cache"]["hits"] == 1
        demo.signal(signal.SIGINT)
        assert demo.popen.wait(30) == 0, demo.log()
        for pid in workers:
            def exited(pid: int = pid) -> bool:
                return (not os.path.exists(f"/proc/{pid}")
                        or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2])

            wait_until(exited, 15.0, f"worker {pid} to exit")
    finally:
        demo.stop()
