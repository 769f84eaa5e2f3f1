"""gRPC helpers shared by the proxy's tests: a one-channel load that counts which
node answered (`x-node`), and the shared pool's nodes with their gRPC addresses.
The hand-written PredictRequest is harness/grpcwire.py's."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import grpc.aio

from harness.grpcwire import PREDICT, predict_bytes
from tests.lb.conftest import Pool


async def spread(target: str, n: int, concurrency: int) -> Counter[str]:
    """n distinct predicts over ONE channel with `concurrency` in flight; count x-node."""
    counts: Counter[str] = Counter()
    queue = iter(range(n))
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(PREDICT)

        async def client() -> None:
            for i in queue:
                c = call(predict_bytes("half_plus_two", float(i)), timeout=10)
                await c
                meta = dict(await c.initial_metadata())
                counts[str(meta["x-node"])] += 1
        await asyncio.wait_for(asyncio.gather(*(client() for _ in range(concurrency))), 120)
    return counts


def grpc_node(name: str, pool: Pool, i: int, weight: float) -> dict[str, object]:
    """A node of the suite's shared pool with its gRPC address."""
    return {"name": name, "rest": pool.fast[i], "grpc": pool.procs[i].grpc, "weight": weight}
