"""`tfserving-lb worker`: a TF Serving-compatible model server for local pools and tests.

Called as `python -m lb worker ARGS` (lb/cli.py hands the whole argument list to
`main`). Opens the REST port at once, then imports TensorFlow and loads every
version in a background thread (status answers LOADING meanwhile); a version
that fails to load is reported as END with its error and the others still serve.

Guarantees: SIGTERM or SIGINT stops accepting connections, lets in-flight
requests finish (grace `GRACE_S`) and `main` returns 0; bad arguments return 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import signal
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

from backends.registry import Registry
from backends.rest import build_app
from backends.stats import WorkerStats

logger = logging.getLogger("backends")

GRACE_S = 5.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tfserving-lb worker", description=__doc__.splitlines()[0])
    p.add_argument("--model-name", help="name of the model under --model-base-path")
    p.add_argument("--model-base-path", help="folder whose numeric sub-folders are versions")
    p.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                   help="a model to serve (repeatable)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8501, help="REST port")
    p.add_argument("--grpc-port", type=int, default=0, help="gRPC port (0: no gRPC)")
    p.add_argument("--delay-ms", type=float, default=0.0,
                   help="sleep this long in each inference request (a deliberately slow node)")
    p.add_argument("--label", action="append", default=[], metavar="[MODEL:]LABEL=VERSION",
                   help="version label (repeatable); without MODEL: for the first model")
    p.add_argument("--threads", type=int, default=2, help="inference thread pool size")
    p.add_argument("--load-delay-s", type=float, default=0.0,
                   help="stay LOADING this long before loading (a node that joins while it "
                        "loads, for tests)")
    p.add_argument("--poll-s", type=float, default=1.0,
                   help="seconds between scans for new version folders (0: never)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--tls-cert", help="serve REST and gRPC over TLS with this PEM certificate")
    p.add_argument("--tls-key", help="its private key (with --tls-cert)")
    p.add_argument("--tls-client-ca", help="require client certificates from this CA (mTLS)")
    return p


def model_specs(args: argparse.Namespace) -> list[tuple[str, Path]]:
    """(name, base path) of every model on the command line, in order; ValueError if none."""
    specs: list[tuple[str, Path]] = []
    if args.model_name or args.model_base_path:
        if not (args.model_name and args.model_base_path):
            raise ValueError("--model-name and --model-base-path go together")
        specs.append((args.model_name, Path(args.model_base_path)))
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--model {item!r}: expected NAME=DIR")
        specs.append((name, Path(path)))
    if not specs:
        raise ValueError("no model given: use --model-name/--model-base-path or --model NAME=DIR")
    return specs


def parse_label(item: str, default_model: str) -> tuple[str, str, int]:
    """`[MODEL:]LABEL=VERSION` as (model, label, version); ValueError when malformed."""
    target, sep, version = item.partition("=")
    model, colon, label = target.rpartition(":")
    if not colon:
        model = default_model
    if not sep or not label or not version.strip().isdigit():
        raise ValueError(f"--label {item!r}: expected [MODEL:]LABEL=VERSION")
    return model, label, int(version)


def build_registry(args: argparse.Namespace) -> Registry:
    """The registry for the command line (versions discovered, nothing loaded yet)."""
    registry = Registry()
    specs = model_specs(args)
    for name, path in specs:
        registry.add_model(name, path)
    for item in args.label:
        registry.add_label(*parse_label(item, specs[0][0]))
    return registry


def load_models(registry: Registry, threads: int, poll_s: float = 0.0,
                delay_s: float = 0.0) -> None:
    """Import TensorFlow and load every version (after `delay_s`, LOADING meanwhile),
    then (poll_s > 0) load version folders that appear later, checking every poll_s.
    Runs in the loader thread."""
    time.sleep(delay_s)
    from backends import runtime  # TensorFlow is imported here, off the event loop

    runtime.configure_threads(inter_op=threads)
    registry.load_all(runtime.Servable)
    while poll_s > 0:
        time.sleep(poll_s)
        registry.rescan(runtime.Servable)


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The REST port's TLS context (--tls-cert/--tls-key; --tls-client-ca: mTLS)."""
    if not args.tls_cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.tls_cert, args.tls_key)
    if args.tls_client_ca:
        ctx.load_verify_locations(args.tls_client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def tls_pem(args: argparse.Namespace) -> tuple[bytes, bytes, bytes | None] | None:
    """(cert, key, client CA) PEM bytes for the gRPC port, None without TLS."""
    if not args.tls_cert:
        return None
    ca = Path(args.tls_client_ca).read_bytes() if args.tls_client_ca else None
    return Path(args.tls_cert).read_bytes(), Path(args.tls_key).read_bytes(), ca


def start_grpc(args: argparse.Namespace, registry: Registry, stats: WorkerStats,
               executor: ThreadPoolExecutor, stop: asyncio.Event) -> asyncio.Task[None]:
    """The gRPC surface (backends.grpc_api) as a named task: its import (TensorFlow) runs
    in a thread so the REST port opens at once; it serves until `stop` is set."""
    async def run() -> None:
        try:
            api = await asyncio.to_thread(importlib.import_module, "backends.grpc_api")
            await api.serve(args.host, args.grpc_port, registry, stats, executor,
                            args.delay_ms / 1000.0, stop, GRACE_S, tls_pem(args))
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("gRPC surface on port %d failed", args.grpc_port)
    return asyncio.create_task(run(), name="grpc")


async def serve(args: argparse.Namespace, registry: Registry) -> int:
    """Serve until SIGTERM/SIGINT, then drain in-flight requests and return 0."""
    executor = ThreadPoolExecutor(max(1, args.threads), thread_name_prefix="infer")
    stats = WorkerStats()
    app = build_app(registry, stats, executor, args.delay_ms / 1000.0)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=GRACE_S)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, reuse_address=True,
                       ssl_context=tls_context(args))
    await site.start()
    logger.info("worker listening on http://%s:%d (delay %.1f ms)",
                args.host, args.port, args.delay_ms)
    stop = asyncio.Event()
    grpc_task = start_grpc(args, registry, stats, executor, stop) if args.grpc_port else None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loader = threading.Thread(target=load_models, name="loader", daemon=True,
                              args=(registry, args.threads, args.poll_s, args.load_delay_s))
    loader.start()
    await stop.wait()
    logger.info("stopping: draining in-flight requests (grace %.0f s)", GRACE_S)
    await runner.cleanup()
    if grpc_task is not None:                    # it drains on `stop` within GRACE_S
        await asyncio.wait({grpc_task}, timeout=GRACE_S + 2.0)
    executor.shutdown(wait=False, cancel_futures=True)
    logger.info("stopped")
    return 0


def run_loop(args: argparse.Namespace, registry: Registry) -> int:
    """Run `serve` on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(args, registry))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(serve(args, registry))


def main(argv: list[str]) -> int:
    """Entry point of `tfserving-lb worker`; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    try:
        registry = build_registry(args)
    except ValueError as exc:
        parser.print_usage()
        logger.error("%s", exc)
        return 2
    try:
        with contextlib.suppress(KeyboardInterrupt):
            return run_loop(args, registry)
    except OSError as exc:  # e.g. the port is taken
        logger.error("cannot serve on %s:%d: %s", args.host, args.port, exc)
        return 1
    return 0
