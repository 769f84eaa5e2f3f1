"""lb.native: the compiled data path is used for the sources it was built from, only.

The compiled build comes from `pip install` (build_backend/; scripts/setup.sh runs
`pip install -e .`). Where it was installed as Python for want of a C compiler, the
tests that need it skip and say so, except when TFSERVING_LB_BUILD=compiled (CI:
.ci/run) requires it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from lb import native
from tests import native_tests

ROOT = Path(__file__).resolve().parents[2]
PROBE = ("import lb.server, lb.native, lb.request.dispatch, lb.http.server_protocol as sp; "
         "print(lb.native.kind(), lb.request.dispatch.__file__, sp.__file__)")


def probe(cwd: Path = ROOT, env: dict[str, str] | None = None) -> list[str]:
    """What a fresh interpreter in `cwd` loads: kind, and two modules' files."""
    full = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=cwd, env={**full, **(env or {})},
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.split()


def require_compiled() -> Path:
    """The installed build of these sources; a skip when they were installed as Python
    (no C compiler at `pip install`) and the build is not required."""
    build, current, why = native.locate()
    if build is None and current and os.environ.get(native.BUILD_ENV) != "compiled":
        pytest.skip(f"the data path was installed as Python ({why}); "
                    f"{native.BUILD_ENV}=compiled (CI) requires the compiled build")
    assert build is not None, f"no compiled build: {why} (bash scripts/setup.sh dev)"
    return build


def copy_sources(root: Path) -> None:
    for name in native.MODULES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)


def test_a_build_is_found_only_for_the_sources_it_was_made_from(tmp_path: Path) -> None:
    src, site = tmp_path / "src", tmp_path / "site"
    copy_sources(src)
    paths = [str(tmp_path / "elsewhere"), str(site)]
    assert native.locate(src, paths)[:2] == (None, False)          # nothing installed
    build = site / native.INSTALL_DIR / native.digest(src)
    build.mkdir(parents=True)
    (build / native.COMPLETE).write_text("")
    assert native.locate(src, paths) == (build, True, "")
    edited = src / native.MODULES[0]
    edited.write_text(edited.read_text() + "\n# edited\n")
    found, current, why = native.locate(src, paths)                # stale: runs as Python
    assert (found, current) == (None, False) and "other sources" in why
    as_python = site / native.INSTALL_DIR / native.digest(src)
    as_python.mkdir()
    (as_python / native.PYTHON_NOTE).write_text("no C compiler ('gcc' not found)\n")
    found, current, why = native.locate(src, paths)
    assert (found, current) == (None, True) and why.endswith("no C compiler ('gcc' not found)")


def test_the_proxy_loads_the_compiled_build_of_its_sources() -> None:
    build = require_compiled()
    site = {Path(sysconfig.get_paths()[k]).resolve() for k in ("purelib", "platlib")}
    assert build.parent.parent.resolve() in site, "installed, not in the source tree"
    kind, dispatch, server = probe()
    assert kind == "compiled"
    for path in (dispatch, server):
        assert Path(path).is_relative_to(build) and path.endswith(".so")


def test_an_edited_module_runs_as_python_with_a_warning(tmp_path: Path) -> None:
    """A copy of the sources loads the installed build while it is the same; once a
    compiled module is edited, it runs as Python and the start-up log says why."""
    require_compiled()
    for package in ("lb", "cache"):
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    kind, dispatch, _server = probe(cwd=tmp_path)      # the copy comes first on sys.path
    assert kind == "compiled" and dispatch.endswith(".so")
    edited = tmp_path / "lb" / "request" / "dispatch.py"
    edited.write_text(edited.read_text() + "\n# edited\n")
    kind, dispatch, _server = probe(cwd=tmp_path)
    assert (kind, dispatch) == ("python", str(edited))
    said = subprocess.run(
        [sys.executable, "-c", "import logging, lb.request.dispatch, lb.native; "
         "logging.basicConfig(); lb.native.log_status()"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=True)
    assert "WARNING:lb.native:data path runs as Python" in said.stderr
    assert "made from other sources" in said.stderr


def test_a_broken_build_runs_as_python_and_says_why(tmp_path: Path) -> None:
    """A build of these very sources whose shared library does not load: Python."""
    src, site = tmp_path / "src", tmp_path / "site"
    for package in ("lb", "cache"):
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    build = site / native.INSTALL_DIR / native.digest(src)
    (build / "lb" / "request").mkdir(parents=True)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    (build / f"0123456789abcdef0123__mypyc{suffix}").write_bytes(b"not a shared library")
    (build / "lb" / "request" / f"dispatch{suffix}").write_bytes(b"not one either")
    (build / native.COMPLETE).write_text("")
    check = ("import lb.request.dispatch, lb.native; print(lb.native.kind()); "
             "print(lb.request.dispatch.__file__); print(lb.native.why())")
    full = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    done = subprocess.run([sys.executable, "-c", check], cwd=src,
                          env={**full, "PYTHONPATH": str(site)},
                          capture_output=True, text=True, timeout=60, check=True)
    kind, dispatch, why = done.stdout.splitlines()
    assert (kind, dispatch) == ("python", str(src / "lb" / "request" / "dispatch.py"))
    assert why.startswith("the compiled build could not be used: ImportError"), why


def test_the_pure_switch_runs_every_module_as_python() -> None:
    kind, dispatch, server = probe(env={native.PURE_ENV: "1"})
    assert kind == "python"
    assert dispatch == str(ROOT / "lb" / "request" / "dispatch.py")
    assert server == str(ROOT / "lb" / "http" / "server_protocol.py")


def test_the_objects_built_per_request_are_built_by_compiled_code() -> None:
    """A dataclass's generated __init__ runs as Python even in a compiled module (a
    frame per request): these classes write theirs out, and the build compiles it."""
    require_compiled()
    classes = ("lb.request.call.Call", "lb.request.call.Deadline", "lb.rest.upstream.RestPayload",
               "lb.http.client_conn.Response", "lb.request.core.Plan", "lb.rest.routes.Body")
    check = ("import importlib, sys, lb.request.dispatch, lb.native; print(lb.native.kind()); "
             "[print(hasattr(getattr(importlib.import_module(m), c).__init__, '__code__')) "
             "for m, c in (a.rsplit('.', 1) for a in sys.argv[1:])]")
    full = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    done = subprocess.run([sys.executable, "-c", check, *classes], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=60, check=True)
    kind, *interpreted = done.stdout.split()
    assert kind == "compiled"
    assert interpreted == ["False"] * len(classes), dict(zip(classes, interpreted, strict=True))


def test_every_compiled_module_has_tests_that_run_again_as_python() -> None:
    """scripts/test.sh runs `tests.native_tests` again with TFSERVING_LB_PURE=1."""
    covered = native_tests.tests_by_module()
    assert set(covered) == set(native.MODULES)
    assert all(covered.values()), {m: t for m, t in covered.items() if not t}
    every = native_tests.pure_tests()
    for name in ("tests/lb/test_outlier_retry.py", "tests/lb/test_rest_e2e.py",
                 "tests/lb/test_metrics.py", "tests/lb/http/test_server.py"):
        assert name in every
    assert all((ROOT / name).is_file() for name in every)
    assert "tests/lb/test_native.py" not in every          # it sets the switch itself
