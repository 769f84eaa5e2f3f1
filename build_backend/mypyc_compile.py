"""Compile the data path with mypyc, or say why it cannot be compiled here.

Called by `tfslb_build.add_data_path` (the build backend, at `pip install`) with
the list `lb.native.MODULES`. The sources (lb/ and cache/: mypyc type-checks what
the compiled modules import) are copied into a scratch directory and compiled
there by mypyc's setuptools extension in a child process, so nothing is written
next to the sources and what is compiled is exactly what the digest names.

Guarantees: returns "" with the extension modules in `out` (their package
layout, and mypyc's shared runtime module at the top), or a one-line reason
with `out` unused. The mode (TFSERVING_LB_BUILD, `lb.native.BUILD_ENV`): `auto`
(compile when a C compiler and Python's headers are present), `compiled` (any
reason raises instead: the build fails), `python` (do not compile). The child
has a deadline; its last lines are printed to stderr when it fails.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

DEADLINE_S = 1800.0     # about 80 s on a 2-core box; far more on a crowded one
SETUP = """
from setuptools import setup
from mypyc.build import mypycify
setup(name="tfserving_lb_native", ext_modules=mypycify({modules!r}, opt_level="3"))
"""
MYPY_INI = """[mypy]
python_version = {version}
ignore_missing_imports = True
"""


def say(message: str) -> None:
    print(f"tfserving-lb build: {message}", file=sys.stderr, flush=True)


def compile_modules(root: Path, modules: list[str], out: Path, scratch: Path,
                    mode_env: str) -> str:
    """Compile `modules` (paths under `root`) into `out`; "" or why not (see above).
    `mode_env` names the variable that holds the mode."""
    mode = os.environ.get(mode_env) or "auto"
    if mode not in ("auto", "compiled", "python"):
        raise ValueError(f"{mode_env}={mode!r}: expected auto, compiled or python")
    reason = f"{mode_env}=python" if mode == "python" else missing_toolchain()
    if not reason:
        say(f"compiling {len(modules)} modules with mypyc (about 80 s; "
            f"{mode_env}=python skips it)")
        t0 = time.monotonic()
        reason = _run_mypyc(root, modules, out, scratch / "work")
        if not reason:
            say(f"compiled {len(modules)} modules in {time.monotonic() - t0:.0f} s")
            return ""
    if mode == "compiled":
        raise RuntimeError(f"the data path was not compiled ({mode_env}=compiled): {reason}")
    say(f"WARNING: the data path is installed as Python, about 2x slower: {reason}")
    return reason


def missing_toolchain() -> str:
    """Why mypyc's C cannot be built here ("" when it can be tried): the compiler that
    setuptools would call (CC, else Python's own) and Python.h."""
    if sys.implementation.name != "cpython":
        return f"mypyc compiles for CPython only, not {sys.implementation.name}"
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    words = shlex.split(cc)
    if not words or shutil.which(words[0]) is None:
        return f"no C compiler ({cc!r} not found; set CC or install gcc)"
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not include.is_file():
        return f"no Python headers ({include} missing; Debian: python3-dev)"
    return ""


def _run_mypyc(root: Path, modules: list[str], out: Path, work: Path) -> str:
    """mypyc's build_ext in a child process on a scratch copy of lb/ and cache/."""
    for package in ("lb", "cache"):
        shutil.copytree(root / package, work / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    (work / "mypy.ini").write_text(MYPY_INI.format(version=version))
    (work / "setup.py").write_text(SETUP.format(modules=modules))
    cmd = [sys.executable, "setup.py", "-q", "build_ext", "--build-lib", str(out),
           "--build-temp", str(work / "tmp")]
    try:
        done = subprocess.run(cmd, cwd=work, capture_output=True, text=True,
                              timeout=DEADLINE_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"mypyc did not finish: {exc}"
    if done.returncode == 0:
        return ""
    tail = (done.stdout + done.stderr).strip().splitlines()[-30:]
    print("\n".join(tail), file=sys.stderr, flush=True)      # mypy's or gcc's complaint
    last = next((ln for ln in reversed(tail) if "error" in ln.lower()), tail[-1] if tail else "")
    return f"mypyc failed (exit {done.returncode}): {last.strip()[:200]}"
