"""Session-wide real processes shared by the suite (redis-server); the `slow` marker.

Every test that starts a process or a slow server is marked `slow` at collection
(tests/slowness.py reads it from the code). With FAST_ENV set (`scripts/test.sh
--fast`, which also deselects `-m "not slow"`), starting any process aborts the
test with an error naming the command: a test the marking missed fails loudly
instead of slowing the fast run down.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.procs import FAST_ENV, TEST_MODELS, Proc, RedisServer, lb_cmd
from tests.slowness import SlowWalk, why_slow

# Audit events (PEP 578) raised before a process is created; a hook that raises aborts it.
_START_EVENTS = frozenset({"subprocess.Popen", "os.fork", "os.forkpty", "os.system",
                           "os.posix_spawn", "os.exec", "os.spawn", "pty.fork"})


class _Guard:
    """Armed from a test's setup to its teardown in fast mode (not during collection,
    nor for pytest-xdist's own workers)."""

    armed = False


def _refuse_process_starts(event: str, args: tuple[Any, ...]) -> None:
    if _Guard.armed and event in _START_EVENTS:
        what = args[1] if event == "subprocess.Popen" and len(args) > 1 else args
        raise RuntimeError(
            f"{FAST_ENV}=1 (scripts/test.sh --fast) refuses to start a process ({event}: "
            f"{what!r}): this test is not marked slow but starts one; see tests/slowness.py")


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(FAST_ENV) == "1":
        platform.processor()        # runs `uname -p` once (cached): TensorFlow's imports ask
        sys.addaudithook(_refuse_process_starts)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    _Guard.armed = os.environ.get(FAST_ENV) == "1"
    try:
        return (yield)
    finally:
        _Guard.armed = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `slow` every test whose code or fixtures start a process (tests/slowness.py)."""
    walk = SlowWalk()
    for item in items:
        reason = why_slow(walk, item)
        if reason:
            item.add_marker(pytest.mark.slow(reason=reason))


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def test_models() -> Path:
    if not (TEST_MODELS / "half_plus_two_cpu").is_dir():
        pytest.fail(f"test models not found at {TEST_MODELS}")
    return TEST_MODELS


@pytest.fixture
def private_redis(logs_dir: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, to kill and restart; stopped whatever happens."""
    server = RedisServer(logs_dir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(logs_dir: Path) -> Iterator[RedisServer]:
    """One private redis-server for the session (never the machine's :6379)."""
    server = RedisServer(logs_dir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory: pytest.TempPathFactory, logs_dir: Path) -> Path:
    """The seed's MNIST model, exported once per session (trains on bundled digits)."""
    base = tmp_path_factory.mktemp("mnist")
    proc = Proc("export-mnist", lb_cmd("export-mnist", str(base), "--epochs", "10"), logs_dir)
    assert proc.popen.wait(120) == 0, proc.log()
    proc.stop()
    assert (base / "1" / "saved_model.pb").exists()
    assert "test accuracy" in proc.log()
    return base
