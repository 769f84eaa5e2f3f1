"""The TensorFlow Serving gRPC surface of the worker (PredictionService, ModelService).

Imported by `worker` in a thread once `--grpc-port` is given (the import loads
TensorFlow), then `serve` runs on the worker's event loop next to the REST
app, sharing its `Registry`, `WorkerStats`, inference thread pool and delay.

Guarantees, as TF Serving: Predict takes `inputs` as TensorProtos (fed with the
signature's rank, like the REST surface) and honours `output_filter`;
Classify, Regress and MultiInference take `tensorflow.serving.Input`
(context features merged into every example, the example's own win);
GetModelMetadata answers `signature_def`; GetModelStatus reports every
version with its state and error. Every `WorkerError` becomes its canonical
gRPC code with the same message the REST surface gives; anything unexpected
is logged and answered INTERNAL. Inference runs in the thread pool, after the
configured delay, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from backends import examples
from backends.errors import InvalidInput, WorkerError
from backends.faults import rotate
from backends.registry import Registry, Version
from backends.stats import WorkerStats
from backends.tensors import DEFAULT_SIGNATURE, SignatureInfo, fit_shape

logger = logging.getLogger("backends")

T = TypeVar("T")
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
_STATE = get_model_status_pb2.ModelVersionStatus.State
_ERROR_CODES = get_model_status_pb2.ModelVersionStatus.DESCRIPTOR.fields_by_name[
    "status"].message_type.fields_by_name["error_code"].enum_type.values_by_name


# -- conversions (run in the inference thread pool) ------------------------------

def signature(version: Version, name: str) -> SignatureInfo:
    """The servable's signature `name` ('' is serving_default), or InvalidInput."""
    name = name or DEFAULT_SIGNATURE
    found: SignatureInfo | None = version.servable.signatures.get(name)
    if found is None:
        raise InvalidInput(f'Serving signature name: "{name}" not found in signature def')
    return found


def _feeds(request: predict_pb2.PredictRequest, sig: SignatureInfo
           ) -> tuple[dict[str, np.ndarray], int]:
    unknown = sorted(set(request.inputs) - set(sig.inputs))
    if unknown:
        raise InvalidInput(f"input tensor alias not found in signature: {', '.join(unknown)}. "
                           f"Inputs expected to be in the set {{{', '.join(sorted(sig.inputs))}}}.")
    missing = sorted(set(sig.inputs) - set(request.inputs))
    if missing:
        raise InvalidInput(f"Missing input(s) for signature {sig.name}: {', '.join(missing)}")
    feeds, added = {}, []
    for alias, proto in request.inputs.items():
        try:
            arr = tf.make_ndarray(proto)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"Input {alias} is not a valid tensor: {exc}") from None
        feeds[alias], n = fit_shape(arr, sig.inputs[alias])
        added.append(n)
    return feeds, min(added, default=0)


def _squeeze(arr: np.ndarray, added: int) -> np.ndarray:
    if added and arr.ndim >= added and all(d == 1 for d in arr.shape[arr.ndim - added:]):
        return arr.reshape(arr.shape[:arr.ndim - added])
    return arr


def _spec(name: str, version: Version, sig: str) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name, signature_name=sig)
    spec.version.value = version.number
    return spec


def predict(name: str, version: Version, request: predict_pb2.PredictRequest
            ) -> tuple[int, predict_pb2.PredictResponse]:
    """(rows, reply) of one Predict on `version`."""
    sig = signature(version, request.model_spec.signature_name)
    feeds, added = _feeds(request, sig)
    outputs = version.servable.run(sig.name, feeds)
    wanted = list(request.output_filter) or list(outputs)
    for alias in wanted:
        if alias not in outputs:
            raise InvalidInput(f"output tensor alias not found in signature: {alias}")
    reply = predict_pb2.PredictResponse(model_spec=_spec(name, version, sig.name))
    for alias in wanted:
        reply.outputs[alias].CopyFrom(tf.make_tensor_proto(_squeeze(outputs[alias], added)))
    first = next(iter(feeds.values()), None)
    return (int(first.shape[0]) if first is not None and first.ndim else 1), reply


def serialized_examples(inp: input_pb2.Input) -> list[bytes]:
    """The request's examples, serialized, with context features merged in."""
    kind = inp.WhichOneof("kind")
    if kind == "example_list":
        found = [e.SerializeToString() for e in inp.example_list.examples]
    elif kind == "example_list_with_context":
        ctx = inp.example_list_with_context.context
        found = []
        for ex in inp.example_list_with_context.examples:
            merged = example_pb2.Example()
            merged.CopyFrom(ctx)
            merged.MergeFrom(ex)                     # the example's own features win
            found.append(merged.SerializeToString())
    else:
        found = []
    if not found:
        raise InvalidInput("Input is empty")
    return found


def _run_examples(version: Version, sig_name: str, method: str, serialized: list[bytes]
                  ) -> tuple[str, dict[str, np.ndarray]]:
    sig = signature(version, sig_name)
    alias = examples.check_signature(sig, method)
    return sig.name, version.servable.run(sig.name, {alias: np.array(serialized, dtype=object)})


def classify(version: Version, sig_name: str, serialized: list[bytes]
             ) -> tuple[str, classification_pb2.ClassificationResult]:
    """(signature used, ClassificationResult) for serialized examples."""
    used, outputs = _run_examples(version, sig_name, examples.CLASSIFY_METHOD, serialized)
    result = classification_pb2.ClassificationResult()
    for pairs in examples.classify_results(outputs, len(serialized)):
        classes = result.classifications.add()
        for label, score in pairs:
            classes.classes.add(label=label, score=float(score))
    return used, result


def regress(version: Version, sig_name: str, serialized: list[bytes]
            ) -> tuple[str, regression_pb2.RegressionResult]:
    """(signature used, RegressionResult) for serialized examples."""
    used, outputs = _run_examples(version, sig_name, examples.REGRESS_METHOD, serialized)
    result = regression_pb2.RegressionResult()
    for value in examples.regress_results(outputs, len(serialized)):
        result.regressions.add(value=float(value))
    return used, result


def status_reply(doc: dict[str, Any]) -> get_model_status_pb2.GetModelStatusResponse:
    """`Registry.status` JSON as GetModelStatusResponse."""
    reply = get_model_status_pb2.GetModelStatusResponse()
    for v in doc["model_version_status"]:
        item = reply.model_version_status.add(version=int(v["version"]),
                                              state=_STATE.Value(v["state"]))
        code = _ERROR_CODES.get(v["status"]["error_code"]) or _ERROR_CODES["UNKNOWN"]
        item.status.error_code = code.number
        item.status.error_message = v["status"]["error_message"]
    return reply


# -- the servicers ----------------------------------------------------------------

class _Base:
    def __init__(self, registry: Registry, stats: WorkerStats, executor: Executor,
                 delay_s: float) -> None:
        self.registry = registry
        self.stats = stats
        self.executor = executor
        self.stats.delay_s = delay_s

    @staticmethod
    async def guard(context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]) -> T:
        """Run `call`; a WorkerError becomes its gRPC code, anything else INTERNAL."""
        try:
            return await call()
        except WorkerError as exc:
            code = getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN)
            await context.abort(code, exc.message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("unexpected error in a gRPC call")
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        raise AssertionError("unreachable: abort raises")

    def resolve(self, spec: model_pb2.ModelSpec, verb: str) -> Version:
        """The AVAILABLE version a request's ModelSpec names; counts the call."""
        if verb:
            self.stats.received()
        version = self.registry.resolve(
            spec.name, spec.version.value if spec.HasField("version") else None,
            spec.version_label or None)
        if verb:
            self.stats.reached_model(spec.name, verb)
        return version

    async def infer(self, fn: Callable[[], tuple[int, T]]) -> T:
        """The delay, then `fn` in the inference pool; counts its rows. An injected
        fault status (`backends.faults`) fails the call instead, with its gRPC code."""
        if self.stats.delay_s > 0:
            await asyncio.sleep(self.stats.delay_s)
        if self.stats.fault.status:
            raise WorkerError("injected fault (PUT /_worker/fault)",
                              code=_FAULT_CODES.get(self.stats.fault.status, "INTERNAL"))
        rows, out = await asyncio.get_running_loop().run_in_executor(self.executor, fn)
        self.stats.succeeded(rows)
        return out


# An injected fault's HTTP status -> the canonical code TF Serving maps to it.
_FAULT_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
                503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}


def _scrambled(reply: predict_pb2.PredictResponse) -> predict_pb2.PredictResponse:
    """Every output rotated along its last axis (`backends.faults`, test-only)."""
    for alias in list(reply.outputs):
        rotated = rotate(tf.make_ndarray(reply.outputs[alias]))
        reply.outputs[alias].CopyFrom(tf.make_tensor_proto(rotated))
    return reply


class PredictionServicer(_Base):
    """tensorflow.serving.PredictionService on the registry's AVAILABLE versions."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._metadata: dict[int, Any] = {}     # id(servable) -> packed SignatureDefMap

    async def Predict(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            version = self.resolve(request.model_spec, "predict")
            name = request.model_spec.name
            reply = await self.infer(lambda: predict(name, version, request))
            return _scrambled(reply) if self.stats.fault.scramble else reply
        return await self.guard(context, call)

    async def _examples(self, request: Any, context: Any, verb: str) -> Any:
        fn = classify if verb == "classify" else regress
        reply = (classification_pb2.ClassificationResponse() if verb == "classify"
                 else regression_pb2.RegressionResponse())

        async def call() -> Any:
            spec = request.model_spec
            version = self.resolve(spec, verb)
            serialized = serialized_examples(request.input)
            used, result = await self.infer(
                lambda: (len(serialized), fn(version, spec.signature_name, serialized)))
            reply.model_spec.CopyFrom(_spec(spec.name, version, used))
            reply.result.CopyFrom(result)
            return reply
        return await self.guard(context, call)

    async def Classify(self, request: Any, context: Any) -> Any:
        return await self._examples(request, context, "classify")

    async def Regress(self, request: Any, context: Any) -> Any:
        return await self._examples(request, context, "regress")

    async def MultiInference(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            tasks = list(request.tasks)
            if not tasks:
                raise InvalidInput("Inference tasks must be non-empty")
            first = tasks[0].model_spec
            if any(t.model_spec.name != first.name for t in tasks):
                raise InvalidInput("All ModelSpecs in a MultiInferenceRequest must access "
                                   "the same model name.")
            verb = "classify" if tasks[0].method_name == examples.CLASSIFY_METHOD else "regress"
            version = self.resolve(first, verb)
            serialized = serialized_examples(request.input)
            return await self.infer(lambda: (len(serialized),
                                             _multi(first.name, version, tasks, serialized)))
        return await self.guard(context, call)

    async def GetModelMetadata(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            if "signature_def" not in request.metadata_field:
                raise InvalidInput("Metadata field signature_def must be requested")
            version = self.resolve(request.model_spec, "")
            reply = get_model_metadata_pb2.GetModelMetadataResponse(
                model_spec=_spec(request.model_spec.name, version, ""))
            reply.metadata["signature_def"].CopyFrom(self._signature_defs(version))
            return reply
        return await self.guard(context, call)

    def _signature_defs(self, version: Version) -> Any:
        key = id(version.servable)
        packed = self._metadata.get(key)
        if packed is None:
            sig_map = json_format.ParseDict(version.servable.metadata,
                                            get_model_metadata_pb2.SignatureDefMap())
            packed = self._metadata[key] = _pack(sig_map)
        return packed


def _pack(message: Any) -> Any:
    from google.protobuf import any_pb2

    out = any_pb2.Any()
    out.Pack(message)
    return out


def _multi(name: str, version: Version, tasks: list[Any], serialized: list[bytes]) -> Any:
    """MultiInferenceResponse: every task run on the same examples, in order."""
    reply = inference_pb2.MultiInferenceResponse()
    for task in tasks:
        result = reply.results.add()
        sig_name = task.model_spec.signature_name
        if task.method_name == examples.CLASSIFY_METHOD:
            used, out = classify(version, sig_name, serialized)
            result.classification_result.CopyFrom(out)
        elif task.method_name == examples.REGRESS_METHOD:
            used, reg = regress(version, sig_name, serialized)
            result.regression_result.CopyFrom(reg)
        else:
            raise InvalidInput(f"Unsupported signature method_name: {task.method_name}")
        result.model_spec.CopyFrom(_spec(name, version, used))
    return reply


class ModelServicer(_Base):
    """tensorflow.serving.ModelService: GetModelStatus (config reload is not offered)."""

    async def GetModelStatus(self, request: Any, context: Any) -> Any:
        async def call() -> Any:
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            return status_reply(self.registry.status(spec.name, version,
                                                     spec.version_label or None))
        return await self.guard(context, call)

    async def HandleReloadConfigRequest(self, request: Any, context: Any) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "config reload is not supported")


async def serve(host: str, port: int, registry: Registry, stats: WorkerStats,
                executor: Executor, delay_s: float, stop: asyncio.Event,
                grace_s: float, tls: tuple[bytes, bytes, bytes | None] | None = None) -> None:
    """Serve both services on host:port until `stop` is set, then drain within `grace_s`;
    over TLS with `tls` = (cert, key, client CA or None: with one, mTLS) PEM bytes.

    Raises RuntimeError when the port cannot be bound.
    """
    limits = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
              ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
    server = grpc.aio.server(options=limits)
    args = (registry, stats, executor, delay_s)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(*args), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(*args), server)
    if tls is not None:
        creds = grpc.ssl_server_credentials([(tls[1], tls[0])], root_certificates=tls[2],
                                            require_client_auth=tls[2] is not None)
        bound = server.add_secure_port(f"{host}:{port}", creds)
    else:
        bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise RuntimeError(f"cannot bind gRPC port {host}:{port}")
    await server.start()
    logger.info("worker gRPC listening on %s:%d", host, port)
    try:
        await stop.wait()
    finally:
        await asyncio.wait_for(server.stop(grace_s), grace_s + 1.0)
