"""A TensorFlow Serving PredictRequest written by hand, for gRPC load without TensorFlow.

Called by the proxy's gRPC tests (tests/lb) and scripts/bench_grpc.py. The wire
format is checked against TensorFlow's own messages in tests/lb/test_pbwire.py.
"""

from __future__ import annotations

import struct

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
