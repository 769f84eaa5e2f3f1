"""Session-wide real processes shared by the suite (redis-server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import TEST_MODELS, Proc, RedisServer, lb_cmd


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
