"""gRPC helpers shared by the proxy's tests: a hand-written PredictRequest and a
one-channel load that counts which node answered (`x-node`)."""

from __future__ import annotations

import asyncio
import struct
from collections import Counter

import grpc
import grpc.aio

from tests.lb.conftest import Pool

PREDICT = "/tensorflow.serving.PredictionService/Predict"


def predict_bytes(model: str, x: float) -> bytes:
    """A PredictRequest for x=[x] (float32, shape [1]), written by hand: the wire format
    is tested in test_pbwire.py; this keeps the load loop free of TensorFlow."""
    name = model.encode()
    spec = b"\x0a" + bytes([len(name)]) + name
    shape = b"\x12\x02\x08\x01"                                  # dim {size: 1}
    tensor = (b"\x08\x01" + b"\x12" + bytes([len(shape)]) + shape     # DT_FLOAT, shape
              + b"\x2a\x04" + struct.pack("<f", x))                   # float_val, packed
    entry = b"\x0a\x01x" + b"\x12" + bytes([len(tensor)]) + tensor
    return b"\x0a" + bytes([len(spec)]) + spec + b"\x12" + bytes([len(entry)]) + entry


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
