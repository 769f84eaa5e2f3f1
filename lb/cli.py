"""The `tfserving-lb` console script: serve, worker, export-mnist, demo, check-config,
data-path.

Called by the console script and by `python -m lb`. Subcommands of the
`backends` package (`worker`, `export-mnist`, `demo`) are imported only when
chosen, so `serve` and `check-config` never load them (nor TensorFlow); `lb/`
itself never imports `backends/`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def _serve(args: argparse.Namespace) -> int:
    if args.workers > 1:
        from lb.config import load_config
        from lb.errors import ConfigError
        from lb.server import setup_logging
        from lb.supervisor import Supervisor

        setup_logging()
        try:
            load_config(args.config)            # fail before starting N processes
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        return Supervisor(args.config, args.workers).run()
    from lb.server import serve_main

    return serve_main(args.config)


def _check_config(args: argparse.Namespace) -> int:
    from lb.config import load_config
    from lb.errors import ConfigError

    try:
        load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.config}: OK")
    return 0


def _data_path(_args: argparse.Namespace) -> int:
    """`tfserving-lb data-path`: print which data path runs and why. Exit 0 when a
    compiled build of these sources is installed, 2 when they were installed as
    Python (no C compiler then), 1 when no install matches them (scripts/setup.sh
    then reinstalls)."""
    import lb.request.dispatch  # noqa: F401 - what `native.active` looks at
    from lb import native

    build, current, _reason = native.locate()
    print(f"compiled: {native.where()}" if native.active() else f"python: {native.why()}")
    if build is not None and (native.active() or os.environ.get(native.PURE_ENV) == "1"):
        return 0
    return 2 if current and build is None else 1


def _passthrough(module: str, argv: list[str]) -> int:
    import importlib

    mod = importlib.import_module(module)
    return int(mod.main(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tfserving-lb", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the proxy from a config file")
    p.add_argument("--config", "-c", required=True, help="YAML config file")
    p.add_argument("--workers", type=int, default=1, choices=range(1, 65), metavar="N",
                   help="proxy processes sharing the ports (SO_REUSEPORT); default 1")
    p.set_defaults(func=_serve)

    p = sub.add_parser("check-config", help="validate a config file, name every problem")
    p.add_argument("config")
    p.set_defaults(func=_check_config)

    p = sub.add_parser("data-path", help="whether this install runs its data path compiled, "
                       "and why not (exit 0 compiled, 2 installed as Python, 1 stale)")
    p.set_defaults(func=_data_path)

    sub.add_parser("demo", help="local MNIST workers + proxy with the memory cache (tf extra)",
                   add_help=False)
    sub.add_parser("worker", help="TensorFlow model worker (needs the tf extra)", add_help=False)
    sub.add_parser("export-mnist", help="train and export the MNIST model (tf extra)",
                   add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # TensorFlow subcommands own their whole argument list.
    if args_list and args_list[0] == "worker":
        return _passthrough("backends.worker", args_list[1:])
    if args_list and args_list[0] == "export-mnist":
        return _passthrough("backends.export_mnist", args_list[1:])
    if args_list and args_list[0] == "demo":
        return _passthrough("backends.demo", args_list[1:])
    args = build_parser().parse_args(args_list)
    return int(args.func(args))
