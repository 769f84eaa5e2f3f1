"""The gRPC front: TF Serving's gRPC services on `listen.grpc`, balanced per call.

Started and stopped by `lb.server` (`GrpcFront.start` in `Proxy.start`,
`GrpcFront.stop` first in `Proxy.stop`). A thin adapter: it reads what
routing needs from the wire (`lb.grpc.messages`), builds a `Call` and hands
it to the same core as the REST front (`lb.request.core`). Serves, with generic
handlers whose requests and replies stay bytes:

    tensorflow.serving.PredictionService   Predict (cached), Classify, Regress,
                                           MultiInference, GetModelMetadata
    tensorflow.serving.ModelService        GetModelStatus
    grpc.health.v1.Health                  Check, Watch: SERVING while a node is healthy

Why bytes: the generated classes live in `tensorflow_serving.apis`, whose
import loads all of TensorFlow; `lb.grpc.messages` reads the few fields that
routing and cache keys need straight from the wire.

Calls of models routed by node group (`lb.rollout`) get their group from the
call's metadata before the core sees them, and a ticket that learns how the
call ended (`Rollouts.watch`; Predict calls may be shadowed).
With `auth` configured, the edge's gate (`lb.edge.gate`) checks each call first
(keys in `authorization` / `x-api-key` metadata, or a client certificate), before
admission. Over TLS with `listen.tls` (`lb.edge.tls` makes the credentials).

Guarantees: every call gets the node's reply, or the node's status code and
details, or the `LbError` it ran into as a gRPC status (mapped here and only
here); its deadline is the client's, capped at `grpc.timeout_s`; replies carry
initial metadata `x-cache` and (when a node answered) `x-node`; unexpected
exceptions are logged and answered INTERNAL; `CancelledError` (client gone)
propagates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import grpc.aio

from lb.config import Config, split_hostport
from lb.edge.gate import Edge
from lb.errors import LbError
from lb.grpc.messages import (
    NOT_SERVING,
    SERVING,
    Request,
    health_reply,
    health_service,
    predict_key,
    read_request,
)
from lb.grpc.upstream import OK, GrpcPayload, GrpcReply, GrpcTransport, channel_options
from lb.pool.nodes import NodePool
from lb.request.call import Call, Deadline, Outcome
from lb.request.core import Core, Plan
from lb.request.directives import parse_cache_control, parse_priority
from lb.request.observe import Recorder
from lb.rollout.service import Rollouts
from lb.rollout.settings import key_version
from lb.status import grpc_code, http_status

log = logging.getLogger("lb.grpc")

PREDICTION = "tensorflow.serving.PredictionService"
MODEL = "tensorflow.serving.ModelService"
HEALTH = "grpc.health.v1.Health"
PREDICTION_METHODS = ("Predict", "Classify", "Regress", "MultiInference", "GetModelMetadata")
SERVICE_UNKNOWN = 3
WATCH_POLL_S = 1.0

_CODES = {code.value[0]: code for code in grpc.StatusCode}     # lb.status's numbers

Unary = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]
# Inference methods, as lb.rollout counts them (Predict calls may be shadowed).
_VERBS = {"Predict": "predict", "Classify": "classify", "Regress": "regress",
          "MultiInference": "multi"}


def status_code(exc: LbError) -> grpc.StatusCode:
    """The gRPC code of a proxy error (its HTTP status read the way TF Serving maps them)."""
    return _CODES[grpc_code(exc.status)]


def _metadata(context: grpc.aio.ServicerContext, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else None
    return None


class GrpcFront:
    """The grpc.aio server and its handlers; one per proxy process."""

    def __init__(self, core: Core, transport: GrpcTransport, recorder: Recorder,
                 cfg: Callable[[], Config], pool: NodePool,
                 rollouts: Rollouts | None = None) -> None:
        self.core = core
        self.transport = transport
        self.recorder = recorder
        self._cfg = cfg
        self.pool = pool
        self.rollouts = rollouts        # node groups and shadows (lb.rollout)
        self.server: grpc.aio.Server | None = None
        self.gate: Edge | None = None       # set by lb.server while `auth` is configured

    async def start(self, address: str,
                    credentials: grpc.ServerCredentials | None = None) -> None:
        """Listen on `address` (host:port), over TLS with `credentials` (lb.edge.tls);
        raises OSError when the port cannot be bound."""
        server = grpc.aio.server(options=channel_options(self._cfg().grpc))
        server.add_generic_rpc_handlers(self._handlers())
        host, port = split_hostport(address)
        where = f"[{host}]:{port}" if ":" in host else address
        bound = (server.add_insecure_port(where) if credentials is None
                 else server.add_secure_port(where, credentials))
        if bound == 0:
            raise OSError(f"gRPC front cannot listen on {address}")
        await server.start()
        self.server = server

    async def stop(self, grace_s: float) -> None:
        """Stop accepting and let calls finish within `grace_s`."""
        if self.server is not None:
            try:
                await asyncio.wait_for(self.server.stop(grace_s), grace_s + 1.0)
            except TimeoutError:
                log.warning("gRPC front did not stop within %.1f s", grace_s)
            self.server = None

    def _handlers(self) -> tuple[grpc.GenericRpcHandler, ...]:
        predict = {m: grpc.unary_unary_rpc_method_handler(self._unary(PREDICTION, m))
                   for m in PREDICTION_METHODS}
        model = {"GetModelStatus": grpc.unary_unary_rpc_method_handler(
            self._unary(MODEL, "GetModelStatus"))}
        health = {"Check": grpc.unary_unary_rpc_method_handler(self._check),
                  "Watch": grpc.unary_stream_rpc_method_handler(self._watch)}
        return (grpc.method_handlers_generic_handler(PREDICTION, predict),
                grpc.method_handlers_generic_handler(MODEL, model),
                grpc.method_handlers_generic_handler(HEALTH, health))

    def _unary(self, service: str, method: str) -> Unary:
        path = f"/{service}/{method}"

        async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self._serve(path, method, raw, context)
        return handle

    async def _serve(self, path: str, method: str, raw: bytes,
                     context: grpc.aio.ServicerContext) -> bytes:
        """One proxied call: outcome or error, then the reply to the client; counted
        in the same request metrics as the REST front. The one place where proxy
        errors become gRPC status codes."""
        start = time.perf_counter()
        model, node, code = "", "", grpc.StatusCode.CANCELLED
        admitted = False
        try:
            try:
                req = read_request(method, raw)
                model = req.spec.name
                if self.gate is not None:       # lb.edge: keys and budgets, first
                    await self.gate.grpc(context, method, model, req.rows)
                self.core.admit()
                admitted = True
                out = await self._outcome(path, method, req, raw, context)
            except LbError as exc:
                code = status_code(exc)
                await context.abort(code, str(exc))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("unexpected error on %s", path)
                code = grpc.StatusCode.INTERNAL
                await context.abort(code, f"proxy error: {type(exc).__name__}")
            node, code = out.node or "", out.answer.code
            meta = [("x-cache", out.x_cache.value)]
            if out.node is not None:
                meta.append(("x-node", out.node))
            await context.send_initial_metadata(meta)
            if out.answer.code != OK:
                await context.abort(out.answer.code, out.answer.details)
            return out.answer.body
        finally:
            if admitted:
                self.core.release()
            self.recorder.record(model, node, http_status(code.value[0]),
                                 time.perf_counter() - start)

    async def _outcome(self, path: str, method: str, req: Request, raw: bytes,
                       context: grpc.aio.ServicerContext) -> Outcome[GrpcReply]:
        remaining = context.time_remaining()
        cap = self._cfg().grpc.timeout_s
        deadline = Deadline.after(cap if remaining is None else min(remaining, cap))
        spec = req.spec
        call = Call(model=spec.name, version=spec.version, label=spec.label,
                    pinned=spec.version is not None,
                    units=req.rows * self._cfg().model(spec.name).cost, deadline=deadline,
                    payload=GrpcPayload(path, raw, req), rows=req.rows)
        if (priority := _metadata(context, "x-priority")) is not None:
            call.priority = parse_priority(priority)
        if self.rollouts is None:
            return await self._forward(method, call, context)
        self.rollouts.route_grpc(call, context.invocation_metadata())    # routed: a group
        ticket = self.rollouts.open(call, self.transport, "grpc", _VERBS.get(method), raw)
        if ticket is None:
            return await self._forward(method, call, context)
        return await self.rollouts.watch(ticket, self._forward(method, call, context))

    async def _forward(self, method: str, call: Call, context: grpc.aio.ServicerContext
                       ) -> Outcome[GrpcReply]:
        if method == "Predict":
            call.directives = parse_cache_control(_metadata(context, "cache-control"))
            return await self.core.serve(call, self.transport, _predict_plan)
        if method in ("Classify", "Regress", "MultiInference"):
            await self.core.resolve(call)          # waits for AVAILABLE like Predict
        return await self.core.passthrough(call, self.transport)

    # -- grpc.health.v1 ---------------------------------------------------------

    def _health(self, service: str) -> int:
        if service not in ("", PREDICTION, MODEL):
            return SERVICE_UNKNOWN
        return SERVING if self.pool.any_healthy() else NOT_SERVING

    async def _check(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Health/Check: SERVING while some node is healthy; NOT_FOUND for other services."""
        try:
            if self.gate is not None:
                await self.gate.grpc(context, "Health", "", 0)
            status = self._health(health_service(raw))
        except LbError as exc:
            await context.abort(status_code(exc), str(exc))
        if status == SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_reply(status)

    async def _watch(self, raw: bytes, context: grpc.aio.ServicerContext
                     ) -> AsyncIterator[bytes]:
        """Health/Watch: the status now and on every change, until the client leaves."""
        try:
            if self.gate is not None:
                await self.gate.grpc(context, "Health", "", 0)
            service = health_service(raw)
        except LbError as exc:
            await context.abort(status_code(exc), str(exc))
        last = -1
        while True:
            status = self._health(service)
            if status != last:
                yield health_reply(status)
                last = status
            await asyncio.sleep(WATCH_POLL_S)


async def _predict_plan(call: Call) -> Plan | None:
    """The cache plan of a Predict: its wire-format key (lb.grpc.messages.predict_key)."""
    assert call.version is not None
    payload: GrpcPayload = call.payload
    return Plan(key=predict_key(payload.request, key_version(call.version, call.group)))
