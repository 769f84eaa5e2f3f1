"""The suite's process helpers: configs on disk, node entries, /metrics samples, and
the launchers of harness/ (workers, redis-server, the proxy, `Proc`) named here too.

Every helper waits with a deadline and every process is stopped by the caller
(fixtures do it in their teardown). Output goes to a log file in the test's tmp
dir so a failing test can print it. The launchers themselves live in harness/,
shared with scripts/; this module re-exports them (`__all__`) so that the tests
import one place.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.procs import ROOT, Proc, free_port, get_json, http, tcp_open, wait_until
from harness.proxy import ProxyProc, write_config
from harness.redis import RedisServer
from harness.workers import TEST_MODELS, lb_cmd, model_available, start_worker, start_workers

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

# Its own helpers and harness's (explicitly re-exported for the suite's imports).
__all__ = [
    "FAST_ENV",
    "ROOT",
    "TEST_MODELS",
    "Proc",
    "ProxyProc",
    "RedisServer",
    "family_of",
    "free_port",
    "get_json",
    "http",
    "lb_cmd",
    "model_available",
    "node",
    "read_config",
    "rewrite_config",
    "running",
    "sample",
    "scrape",
    "start_worker",
    "start_workers",
    "tcp_open",
    "wait_until",
    "write_config",
]

# Set to 1 by `scripts/test.sh --fast`: no process may start (tests/conftest.py).
FAST_ENV = "TFSLB_TEST_FAST"


@contextlib.contextmanager
def running(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            p.stop()


def node(name: str, url: str, weight: float = 1.0) -> dict[str, Any]:
    return {"name": name, "rest": url, "weight": weight}


def rewrite_config(path: Path, doc: dict[str, Any]) -> None:
    """Replace a config file atomically (write aside, rename), as deploy tools do,
    so a watcher never reads half a file."""
    import yaml

    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    os.replace(tmp, path)


def read_config(path: Path) -> dict[str, Any]:
    import yaml

    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


def scrape(admin_url: str) -> dict[str, Metric]:
    """GET /metrics parsed by prometheus_client: {family name: Metric}."""
    from prometheus_client.parser import text_string_to_metric_families

    status, _, body = http("GET", f"{admin_url}/metrics")
    assert status == 200, (status, body)
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def family_of(name: str) -> str:
    """The family a sample name belongs to (tfslb_x_total -> tfslb_x)."""
    for suffix in ("_total", "_count", "_sum", "_bucket"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def sample(families: dict[str, Any], name: str, **labels: str) -> float:
    """The value of one sample (`name` as exposed, e.g. tfslb_requests_total)."""
    for s in families[family_of(name)].samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise KeyError(f"{name}{labels} not in /metrics")
