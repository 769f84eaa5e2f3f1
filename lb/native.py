"""The data path compiled with mypyc, used only while it matches the sources.

Called by `lb/__init__.py` and `lb/http/__init__.py` (`activate`) as each package
is imported, and by `scripts/build_native.py` (`MODULES`, `digest`, `build_dir`),
which compiles the modules of `MODULES` into `build/native/<digest>/` inside the
repository (`scripts/setup.sh` runs it).

The Python files stay the one source of truth: the compiled modules are those
same files, translated to C by mypyc (as mypy and black ship themselves). A
package's `__path__` gets the build directory in front of its own only when a
build exists whose digest matches the current sources and the Python version.
An edited module therefore runs as Python until the next build: a stale build
is never loaded. `TFSERVING_LB_PURE=1` runs everything as Python.

Guarantees: no effect without a matching build; never raises (a broken build
directory is a warning, and the proxy runs as Python); `active()` says which
it is (`/stats` and the start-up log show it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    from mypy_extensions import mypyc_attr as mypyc_attr  # with mypy (the `native` extra)
except ImportError:                         # running as Python without mypy
    def mypyc_attr(*_a: Any, **_k: Any) -> Callable[[type], type]:  # type: ignore[misc]
        return lambda cls: cls

log = logging.getLogger("lb.native")

# The modules a request passes through on the REST front's direct path.
MODULES = (
    "lb/call.py", "lb/concurrency.py", "lb/core.py", "lb/dispatch.py", "lb/history.py",
    "lb/nodes.py", "lb/scheduler.py",
    "lb/observe.py", "lb/outlier.py", "lb/policy.py", "lb/rest_front.py",
    "lb/rest_upstream.py", "lb/retry.py", "lb/routes.py",
    "lb/http/client.py", "lb/http/client_conn.py", "lb/http/exchange.py", "lb/http/outbox.py",
    "lb/http/pipeline.py", "lb/http/server_protocol.py",
)
ROOT = Path(__file__).resolve().parent.parent
PURE_ENV = "TFSERVING_LB_PURE"
_active: list[str] = []


def digest(root: Path = ROOT) -> str:
    """What a build must match: the compiled sources under `root` and the Python that
    runs them (a build carries mypyc's runtime in it: mypy's version does not matter)."""
    h = hashlib.sha1(f"{sys.implementation.cache_tag} {sys.version}".encode())
    for name in MODULES:
        h.update(name.encode())
        h.update((root / name).read_bytes())
    return h.hexdigest()[:16]


def build_dir(root: Path = ROOT) -> Path:
    return root / "build" / "native" / digest(root)


def find(root: Path = ROOT) -> Path | None:
    """The complete build of the sources under `root`, or None."""
    if not (root / "build" / "native").is_dir():
        return None
    here = build_dir(root)
    return here if (here / "complete").is_file() else None


def activate(package: str, path: list[str]) -> None:
    """Put the matching build's directory of `package` (e.g. "lb.http") in front of
    its `path` (the package's `__path__`); nothing when there is none."""
    if os.environ.get(PURE_ENV) == "1":
        return
    try:
        if package == "lb":
            _use(find())
        if not _active:
            return
        where = Path(_active[0]).joinpath(*package.split("."))
        if where.is_dir():
            path.insert(0, str(where))
    except Exception as exc:            # a broken build must not stop the proxy
        log.warning("compiled modules not used: %s", exc)
        _active.clear()


def _use(build: Path | None) -> None:
    """Remember the build (once, when `lb` is imported), or say why there is none."""
    if build is None:
        if (ROOT / "build" / "native").is_dir():
            log.info("no compiled build of these sources: the data path runs as Python "
                     "(scripts/build_native.py builds it)")
        return
    _active.append(str(build))
    if str(build) not in sys.path:
        sys.path.append(str(build))     # mypyc's shared runtime module lives there


def active() -> bool:
    """Whether the compiled modules are in use (`lb.dispatch` loaded from the build)."""
    mod = sys.modules.get("lb.dispatch")
    return bool(_active) and mod is not None and not str(mod.__file__).endswith(".py")


def kind() -> str:
    """"compiled" or "python": for the start-up log and /stats."""
    return "compiled" if active() else "python"
