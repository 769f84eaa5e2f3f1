"""RedisStore against a real three-node Redis Cluster made for the test."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator

import pytest

from cache.memory import MemoryStore
from cache.redis_store import RedisStore
from cache.tiered import TieredStore
from tests.procs import Proc, wait_until


def _cluster_port() -> int:
    """A free port p <= 55535 whose cluster bus port p + 10000 is free too."""
    import random
    import socket

    for _ in range(200):
        p = random.randint(20000, 55535)
        try:
            for port in (p, p + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        return p
    raise RuntimeError("no free port pair for a cluster node")


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    exe, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    assert exe and cli, "redis-server and redis-cli are installed by scripts/setup.sh"
    work = tmp_path_factory.mktemp("cluster")
    ports = [_cluster_port() for _ in range(3)]
    procs = [Proc(f"cluster-{p}", [
        exe, "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
        "--cluster-config-file", f"nodes-{p}.conf", "--dir", str(work), "--save", "",
        "--appendonly", "no"], work) for p in ports]
    try:
        for p in ports:
            def pong(p: int = p) -> bool:
                return subprocess.run([cli, "-p", str(p), "ping"], capture_output=True,
                                      text=True, timeout=2).stdout.strip() == "PONG"

            wait_until(pong, 10, f"cluster node {p}")
        subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                        "--cluster-yes"], check=True, capture_output=True, timeout=30)
        wait_until(lambda: "cluster_state:ok" in subprocess.run(
            [cli, "-p", str(ports[0]), "cluster", "info"], capture_output=True, text=True,
            timeout=2).stdout, 20, "cluster_state:ok")
        yield f"redis://127.0.0.1:{ports[1]}/0"
    finally:
        for proc in procs:
            proc.stop()


async def test_cluster_get_set_mget_across_slots(cluster_url: str) -> None:
    store = RedisStore(cluster_url, timeout_s=1.0, cluster=True)
    try:
        keys = [f"tfslb:v1:m:1:{i:032x}" for i in range(40)]   # spread over all slots
        for i, key in enumerate(keys[:20]):
            await store.set(key, f"v{i}".encode(), ttl_s=60)
        assert await store.get(keys[3]) == b"v3"
        values = await store.mget(keys)
        assert values[:20] == [f"v{i}".encode() for i in range(20)]
        assert values[20:] == [None] * 20
        assert store.stats()["errors"] == 0
    finally:
        await store.close()


async def test_tiered_store_over_a_cluster(cluster_url: str) -> None:
    back = RedisStore(cluster_url, timeout_s=1.0, cluster=True)
    store = TieredStore(MemoryStore(1 << 20, 1 << 16), back)
    try:
        await store.set("tfslb:v1:t:1:aa", b"x", ttl_s=60)
        fresh_front = TieredStore(MemoryStore(1 << 20, 1 << 16), back)
        assert await fresh_front.get("tfslb:v1:t:1:aa") == b"x"
    finally:
        await store.close()
