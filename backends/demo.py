"""`tfserving-lb demo`: a local pool of MNIST workers behind the proxy, memory cache.

Called by `lb.cli` (`tfserving-lb demo`, which hands its arguments to `main`).
It lives beside the worker because it starts workers: `lb/` never imports
`backends/`. Steps, each with a deadline: export the seed's MNIST model
(in a subprocess: this process is the proxy and never imports TensorFlow) →
start the workers (the last one deliberately slower) → write a config file
(`DIR/lb.yaml`: saving it reloads the proxy) → run the proxy in this process →
print curl examples → on Ctrl-C or SIGTERM stop the proxy, then the workers.

With `--canary` (README "Rolling out a model"): the same exporter with seed 1
makes a second model, served by one more worker in group `canary`; the others
are group `stable`, and the config splits mnist 95/5 with a header match
(`x-model-group: canary`), ready for a shadow and a rollout.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import yaml

from backends.digits import sample_request
from backends.pool import start_pool, stop_pool, wait_available
from lb.config import Config, parse_config
from lb.server import run, setup_logging, start

log = logging.getLogger("backends.demo")

MODEL = "mnist"
SLOW_DELAY_MS = 40.0
CANARY_SEED = 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _export(model_dir: Path, seed: int = 0) -> None:
    if (model_dir / "1" / "saved_model.pb").exists():
        return
    print(f"exporting the MNIST model (seed {seed}) to {model_dir} (trains on bundled "
          "digits, ~30 s) ...", flush=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    log_path = model_dir.parent / "logs" / f"export-{model_dir.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log_file:
        done = subprocess.run([sys.executable, "-m", "lb", "export-mnist", str(model_dir),
                               "--seed", str(seed)],
                              stdout=log_file, stderr=subprocess.STDOUT, timeout=600, env=env)
    text = log_path.read_text(errors="replace")
    if done.returncode != 0:
        print(text[-3000:], file=sys.stderr)
        raise SystemExit(f"export-mnist failed (exit {done.returncode}); log: {log_path}")
    for line in text.splitlines():
        if "accuracy" in line:
            print(f"  {line.strip()}", flush=True)


def demo_config(args: argparse.Namespace, ports: list[int],
                canary: int | None = None) -> dict[str, Any]:
    """The demo's config document; with a `canary` worker's port, groups and a 95/5 split."""
    weights = [2.0] + [1.0] * (len(ports) - 1)
    nodes: list[dict[str, Any]] = [
        {"name": f"worker-{i + 1}", "rest": f"http://127.0.0.1:{p}", "weight": w}
        for i, (p, w) in enumerate(zip(ports, weights, strict=True))]
    model: dict[str, Any] = {"cost": 1.0}
    if canary is not None:
        for n in nodes:
            n["group"] = "stable"
        nodes.append({"name": "canary-1", "rest": f"http://127.0.0.1:{canary}",
                      "group": "canary"})
        model["split"] = [{"group": "stable", "share": 95}, {"group": "canary", "share": 5}]
        model["match"] = [{"header": "x-model-group", "value": "canary", "group": "canary"}]
    doc: dict[str, Any] = {
        "listen": {"rest": f"127.0.0.1:{args.port}", "grpc": None,
                   "admin": f"127.0.0.1:{args.admin_port}"},
        "nodes": nodes,
        "models": {MODEL: model},
        "cache": {"backend": "memory", "memory_mb": 64},
    }
    parse_config(doc, "<demo>")               # refuse a bad document before writing it
    return doc


def _print_usage(args: argparse.Namespace, sample: Path, logs: Path, config: Path) -> None:
    base = f"http://127.0.0.1:{args.port}"
    admin = f"http://127.0.0.1:{args.admin_port}"
    canary = "" if not args.canary else f"""
Canary (README "Rolling out a model"): canary-1 serves the model trained with seed
{CANARY_SEED}; mnist is split stable 95 / canary 5.
  curl -s -i -X POST {base}/v1/models/{MODEL}:predict -H 'x-model-group: canary' -d @{sample}
  curl -s {admin}/stats | python3 -m json.tool | sed -n '/"routing"/,$p'
"""
    print(f"""
tfserving-lb demo is up: {args.workers} MNIST workers (the last one {SLOW_DELAY_MS:.0f} ms slower)
behind the proxy at {base}, memory cache. Config: {config} (save it to reload).

  curl -s {base}/v1/models/{MODEL}
  curl -s -i -X POST {base}/v1/models/{MODEL}:predict -d @{sample}
      (run it twice: the second answer has X-Cache: HIT)
  curl -s {admin}/stats
{canary}
Worker logs: {logs}/. Ctrl-C stops everything.
""", flush=True)


async def _run_proxy(cfg: Config, path: Path, on_ready: Any) -> None:
    running = await start(cfg, str(path))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    on_ready()
    await stop.wait()
    print("\nstopping ...", flush=True)
    await running.stop()


def demo_main(args: argparse.Namespace) -> int:
    setup_logging()
    model_dir = Path(args.dir).resolve() / MODEL
    canary_dir = model_dir.parent / f"{MODEL}-seed{CANARY_SEED}"
    _export(model_dir)
    if args.canary:
        _export(canary_dir, CANARY_SEED)
    ports: list[int] = []
    while len(ports) < args.workers + args.canary:     # the kernel may offer a port twice
        if (port := _free_port()) not in ports and port not in (args.port, args.admin_port):
            ports.append(port)
    delays = [0.0] * (args.workers - 1) + [SLOW_DELAY_MS]
    logs = model_dir.parent / "logs"
    print(f"starting {len(ports)} workers (logs in {logs}/) ...", flush=True)
    procs = start_pool(MODEL, model_dir, ports[:args.workers], delays, log_dir=logs)
    if args.canary:
        procs += start_pool(MODEL, canary_dir, ports[args.workers:], [0.0], log_dir=logs)
    try:
        for port in ports:
            wait_available(f"http://127.0.0.1:{port}", MODEL, timeout=120.0)
        sample = model_dir.parent / "sample.json"
        sample.write_bytes(orjson.dumps(sample_request(2)))
        doc = demo_config(args, ports[:args.workers],
                          ports[-1] if args.canary else None)
        path = model_dir.parent / "lb.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        cfg = parse_config(doc, str(path))
        run(lambda: _run_proxy(cfg, path, lambda: _print_usage(args, sample, logs, path)))
    finally:
        stop_pool(procs, timeout=10.0)
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tfserving-lb demo",
                                     description="local MNIST workers + proxy, memory cache")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--port", type=int, default=8501, help="proxy REST port")
    parser.add_argument("--admin-port", type=int, default=9901)
    parser.add_argument("--dir", default="demo-models", help="where the MNIST model is exported")
    parser.add_argument("--canary", action="store_true",
                        help="a second model (seed 1) on one more worker, split 95/5")
    return demo_main(parser.parse_args(argv))
