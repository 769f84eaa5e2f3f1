"""SavedModel loading and signature calls: the only module that drives TensorFlow.

`worker` imports this module in its loader thread (so the REST port is open
while TensorFlow starts), calls `configure_threads` once and passes
`Servable` to `Registry.load_all`. `rest` calls `Servable.predict`, `.classify`
and `.regress` in the inference thread pool, never on the event loop.

Guarantees: `Servable(path)` either returns a model whose signatures can all be
called or raises `WorkerError` (with TF's canonical code when TF gave one);
`metadata` is the SavedModel's SignatureDefMap in TF Serving's JSON form; calls
raise `InvalidInput` for bad requests (including TF's InvalidArgument) and
`WorkerError` with TF's code, or `InferenceFailed`, for everything else.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

from backends import examples
from backends.errors import InferenceFailed, InvalidInput, WorkerError
from backends.tensors import format_predict, get_signature, parse_predict, signature_infos

logger = logging.getLogger("backends")

_CANONICAL = {
    1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION", 10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED",
    13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}


def configure_threads(inter_op: int, intra_op: int = 1) -> None:
    """Small TF thread pools so several workers share a small machine. Call once, first."""
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        tf.config.threading.set_inter_op_parallelism_threads(max(1, inter_op))
        tf.config.threading.set_intra_op_parallelism_threads(max(1, intra_op))
    except RuntimeError as exc:  # TF already initialised (e.g. in tests): keep its pools
        logger.warning("could not set TF thread pools: %s", exc)


def read_signature_defs(path: Path) -> dict[str, Any]:
    """The `serve` meta graph's SignatureDefMap as TF Serving's metadata JSON."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((path / "saved_model.pb").read_bytes())
    graphs = list(saved_model.meta_graphs)
    if not graphs:
        raise WorkerError(f"No meta graph in {path}", code="NOT_FOUND")
    graph = next((g for g in graphs if "serve" in g.meta_info_def.tags), graphs[0])
    sig_map = get_model_metadata_pb2.SignatureDefMap(signature_def=graph.signature_def)
    as_json: dict[str, Any] = json_format.MessageToDict(
        sig_map, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return as_json


def _tf_error(exc: Exception) -> WorkerError:
    """A TensorFlow (or argument-validation) exception as the WorkerError a client sees."""
    if isinstance(exc, tf.errors.InvalidArgumentError):
        return InvalidInput(exc.message)
    if isinstance(exc, tf.errors.OpError):
        return WorkerError(exc.message, code=_CANONICAL.get(exc.error_code, "UNKNOWN"))
    if isinstance(exc, TypeError | ValueError):
        return InvalidInput(str(exc))
    return InferenceFailed(f"{type(exc).__name__}: {exc}")


class Servable:
    """One loaded SavedModel version: its metadata, signatures and callables."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.metadata = read_signature_defs(path)
            self.signatures = signature_infos(self.metadata.get("signature_def", {}))
            self._model = tf.saved_model.load(str(path), tags=["serve"])
            self._fns = dict(self._model.signatures)
        except WorkerError:
            raise
        except tf.errors.OpError as exc:
            raise WorkerError(exc.message, code=_CANONICAL.get(exc.error_code, "UNKNOWN")) from exc
        except Exception as exc:
            raise WorkerError(f"{type(exc).__name__}: {exc}", code="UNKNOWN") from exc
        # Callable signatures only (TF2 exports also list __saved_model_init_op).
        self.signatures = {k: v for k, v in self.signatures.items() if k in self._fns}

    def run(self, signature: str, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Call one signature with numpy feeds; numpy outputs by alias."""
        fn = self._fns[signature]
        specs = fn.structured_input_signature[1]
        try:
            args = {k: tf.constant(v, dtype=specs[k].dtype) for k, v in tensors.items()}
            result = fn(**args)
            return {k: v.numpy() for k, v in result.items()}
        except Exception as exc:
            raise _tf_error(exc) from exc

    def predict(self, body: Any) -> tuple[int, dict[str, Any]]:
        """Run a predict body; (rows, `{"predictions": ...}` or `{"outputs": ...}`)."""
        feeds = parse_predict(body, self.signatures)
        outputs = self.run(feeds.signature.name, feeds.tensors)
        return feeds.rows, format_predict(feeds, outputs)

    def _examples_call(self, body: Any, method: str) -> tuple[int, dict[str, np.ndarray]]:
        if not isinstance(body, dict):
            raise InvalidInput("Request body must be a JSON object")
        sig = get_signature(self.signatures, body)
        alias = examples.check_signature(sig, method)
        serialized = examples.build_examples(body)
        feed = np.array(serialized, dtype=object)
        return len(serialized), self.run(sig.name, {alias: feed})

    def classify(self, body: Any) -> tuple[int, dict[str, Any]]:
        """Run a classify body; (rows, `{"results": [[[label, score], ...], ...]}`)."""
        n, outputs = self._examples_call(body, examples.CLASSIFY_METHOD)
        return n, {"results": examples.classify_results(outputs, n)}

    def regress(self, body: Any) -> tuple[int, dict[str, Any]]:
        """Run a regress body; (rows, `{"results": [value, ...]}`)."""
        n, outputs = self._examples_call(body, examples.REGRESS_METHOD)
        return n, {"results": examples.regress_results(outputs, n)}
