"""Rebuild this checkout's compiled data path after a compiled module was edited.

    .venv/bin/python scripts/build_native.py [--force]

A developer's shortcut, by the route every install takes: `pip install --no-deps
-e .` into the interpreter running it, whose build backend (build_backend/)
compiles `lb.native.MODULES` with mypyc into site-packages. It runs only when
the installed build is not of the current sources (`tfserving-lb data-path` exit
1), or always with --force. Unlike scripts/setup.sh, which installs the code as
Python when it cannot compile it, it requires the compile
(TFSERVING_LB_BUILD=compiled) and shows mypyc's or gcc's complaint when it fails.
Exit 0 when the data path is compiled afterwards, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lb.native import BUILD_ENV  # noqa: E402 - the checkout's, run as a script

STATUS = [sys.executable, "-m", "lb", "data-path"]


def status() -> int:
    """`tfserving-lb data-path` in a fresh interpreter (this one may hold old modules)."""
    return subprocess.run(STATUS, cwd=ROOT, timeout=120).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when current")
    args = parser.parse_args()
    if not args.force and status() == 0:
        print("build_native: up to date")
        return 0
    t0 = time.monotonic()
    env = {**os.environ, BUILD_ENV: "compiled"}
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-e", "."],
                          cwd=ROOT, env=env, timeout=3600)
    if done.returncode != 0:
        print("build_native: FAILED (above); the proxy runs as Python", file=sys.stderr)
        return 1
    print(f"build_native: installed in {time.monotonic() - t0:.0f} s")
    return 0 if status() == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
