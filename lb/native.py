"""The data path compiled with mypyc, used only while it matches the sources.

Called by `lb/__init__.py` and `lb/http/__init__.py` (`activate`) as each package
is imported; by `lb/server.py` (`kind`, `log_status`) and `lb/admin/app.py` (`kind`); by the
build backend `build_backend/tfslb_build.py` (`MODULES`, `digest`, `INSTALL_DIR`),
which loads this file on its own at `pip install`; and by `tfserving-lb data-path`
(`lb.cli`: which data path runs, and whether the install is current; scripts/setup.sh).

The Python files stay the one source of truth: the compiled modules are those
same files, translated to C by mypyc (as mypy and black ship themselves). `pip
install .` (or `-e .`) compiles `MODULES` when it can and installs the result
into site-packages as `_tfserving_lb_native/<digest>/`, never next to the sources;
without a C compiler it installs `_tfserving_lb_native/<digest>/python`, a note
saying why. A package's `__path__` gets that directory in front of its own only
when its digest matches the sources being imported and this Python. An edited
module of an editable install therefore runs as Python until the next install:
a stale build is never loaded. `TFSERVING_LB_PURE=1` runs everything as Python.

Guarantees: no effect without a matching build; never raises (a broken build
is a warning, and the proxy runs as Python); `kind()` says which runs (`/stats`
and the start-up log show it) and `why()` why it is not compiled.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

try:
    from mypy_extensions import mypyc_attr as mypyc_attr  # installed with mypy
except ImportError:                         # running as Python without mypy
    def mypyc_attr(*_a: Any, **_k: Any) -> Callable[[type], type]:  # type: ignore[misc]
        return lambda cls: cls

log = logging.getLogger("lb.native")

# The modules a request passes through on the REST front's direct path: the one
# list of what is compiled (the build backend reads it from here).
MODULES = (
    "lb/request/call.py", "lb/pool/concurrency.py", "lb/request/core.py",
    "lb/request/dispatch.py", "lb/admin/history.py", "lb/pool/nodes.py",
    "lb/request/scheduler.py", "lb/request/observe.py", "lb/pool/outlier.py",
    "lb/pool/policy.py", "lb/rest/front.py", "lb/rest/upstream.py", "lb/request/retry.py",
    "lb/rest/routes.py", "lb/http/client.py", "lb/http/client_conn.py",
    "lb/http/exchange.py", "lb/http/outbox.py", "lb/http/pipeline.py",
    "lb/http/server_protocol.py",
    "lb/status.py",
)
ROOT = Path(__file__).resolve().parent.parent     # holds lb/: a checkout or site-packages
PURE_ENV = "TFSERVING_LB_PURE"
BUILD_ENV = "TFSERVING_LB_BUILD"        # at `pip install`: auto | compiled (required) | python
INSTALL_DIR = "_tfserving_lb_native"    # in site-packages: <digest>/{complete | python}
COMPLETE = "complete"                   # a compiled build, whole
PYTHON_NOTE = "python"                  # installed as Python: the reason, for the log
_active: list[str] = []                 # the build directory in use (at most one)
_why: list[str] = []                    # why the data path runs as Python


def digest(root: Path = ROOT) -> str:
    """What a build must match: the compiled sources under `root` and the Python that
    runs them (a build carries mypyc's runtime in it: mypy's version does not matter)."""
    h = hashlib.sha1(f"{sys.implementation.cache_tag} {sys.version}".encode())
    for name in MODULES:
        h.update(name.encode())
        h.update((root / name).read_bytes())
    return h.hexdigest()[:16]


def locate(root: Path = ROOT,
           paths: Sequence[str] | None = None) -> tuple[Path | None, bool, str]:
    """The installed build of the sources under `root`, looked for in `paths` (default
    sys.path): (its directory or None, whether an install of these very sources was
    found (compiled or not), why there is no build ("" when there is one))."""
    want = digest(root)
    stale = False
    for entry in sys.path if paths is None else paths:
        base = Path(entry or ".") / INSTALL_DIR
        if not base.is_dir():
            continue
        if (base / want / COMPLETE).is_file():
            return base / want, True, ""
        note = base / want / PYTHON_NOTE
        if note.is_file():
            return None, True, f"installed without it: {note.read_text().strip()}"
        stale = True
    if stale:
        return None, False, ("the installed build was made from other sources (a compiled "
                             "module changed since `pip install`): `pip install -e .` "
                             "rebuilds it")
    return None, False, ("no build of these sources is installed (`pip install .` compiles "
                         "it when a C compiler is present)")


def activate(package: str, path: list[str]) -> None:
    """Put the matching build's directory of `package` (e.g. "lb.http") in front of
    its `path` (the package's `__path__`); nothing when there is none."""
    if os.environ.get(PURE_ENV) == "1":
        _why[:] = [f"{PURE_ENV}=1"]
        return
    try:
        if package == "lb":
            build, _current, reason = locate()
            _use(build, reason)
        if not _active:
            return
        where = Path(_active[0]).joinpath(*package.split("."))
        if where.is_dir():
            path.insert(0, str(where))
    except Exception as exc:            # a broken build must not stop the proxy
        _why[:] = [f"the compiled build could not be used: {exc!r}"]
        _active.clear()


def _use(build: Path | None, why: str) -> None:
    """Remember the build (once, when `lb` is imported), or why there is none."""
    if build is None:
        _why[:] = [why]
        return
    if str(build) not in sys.path:
        sys.path.append(str(build))     # mypyc's shared runtime module lives there
    try:
        for shared in build.glob("*__mypyc.*"):     # loaded now: a broken one means Python
            importlib.import_module(shared.name.split(".", 1)[0])
    except BaseException:
        sys.path.remove(str(build))
        raise
    _active.append(str(build))


def active() -> bool:
    """Whether the compiled modules are in use (`lb.request.dispatch` loaded from the build)."""
    mod = sys.modules.get("lb.request.dispatch")
    return bool(_active) and mod is not None and not str(mod.__file__).endswith(".py")


def where() -> str:
    """The directory of the build in use ("" when none is)."""
    return _active[0] if _active else ""


def kind() -> str:
    """"compiled" or "python": for the start-up log and /stats."""
    return "compiled" if active() else "python"


def why() -> str:
    """Why the data path runs as Python ("" when it is compiled or not yet imported)."""
    if active():
        return ""
    if _active and "lb.request.dispatch" in sys.modules:
        return f"the build in {_active[0]} did not load lb.request.dispatch"
    return _why[0] if _why else ""


def log_status() -> None:
    """Say at start-up which data path runs: a warning when it runs as Python unasked
    (about 2× slower on the data path), with the reason."""
    if active():
        log.info("data path compiled (%s)", _active[0])
    elif os.environ.get(PURE_ENV) == "1":
        log.info("data path runs as Python (%s=1)", PURE_ENV)
    else:
        log.warning("data path runs as Python, about 2x slower: %s", why())
