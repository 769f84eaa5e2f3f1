"""lb.native: the compiled data path is used for the sources it was built from, only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from lb import native

ROOT = Path(__file__).resolve().parents[2]
PROBE = ("import lb.server, lb.native, lb.dispatch, lb.http.server_protocol as sp; "
         "print(lb.native.kind(), lb.dispatch.__file__, sp.__file__)")


def probe(**env: str) -> list[str]:
    """What a fresh interpreter in the repository loads: kind, and two modules' files."""
    full = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env={**full, **env},
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.split()


def test_a_build_is_found_only_for_the_sources_it_was_made_from(tmp_path: Path) -> None:
    for name in native.MODULES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    assert native.find(tmp_path) is None                  # nothing built
    build = native.build_dir(tmp_path)
    build.mkdir(parents=True)
    assert native.find(tmp_path) is None                  # a build that did not finish
    (build / "complete").write_text("")
    assert native.find(tmp_path) == build
    edited = tmp_path / native.MODULES[0]
    edited.write_text(edited.read_text() + "\n# edited\n")
    assert native.find(tmp_path) is None                  # stale: the edit runs as Python
    assert native.build_dir(tmp_path) != build


def test_the_proxy_loads_the_compiled_build_of_its_sources() -> None:
    """scripts/setup.sh builds it (scripts/build_native.py); test.sh runs setup first."""
    build = native.find()
    assert build is not None, "no compiled build: run scripts/build_native.py"
    kind, dispatch, server = probe()
    assert kind == "compiled"
    for path in (dispatch, server):
        assert Path(path).is_relative_to(build) and path.endswith(".so")


def test_the_pure_switch_runs_every_module_as_python() -> None:
    kind, dispatch, server = probe(**{native.PURE_ENV: "1"})
    assert kind == "python"
    assert dispatch == str(ROOT / "lb" / "dispatch.py")
    assert server == str(ROOT / "lb" / "http" / "server_protocol.py")


def test_the_objects_built_per_request_are_built_by_compiled_code() -> None:
    """A dataclass's generated __init__ runs as Python even in a compiled module (a
    frame per request): these classes write theirs out, and the build compiles it."""
    classes = ("lb.call.Call", "lb.call.Deadline", "lb.rest_upstream.RestPayload",
               "lb.http.client_conn.Response", "lb.core.Plan", "lb.routes.Body")
    check = ("import importlib, sys, lb.dispatch, lb.native; print(lb.native.kind()); "
             "[print(hasattr(getattr(importlib.import_module(m), c).__init__, '__code__')) "
             "for m, c in (a.rsplit('.', 1) for a in sys.argv[1:])]")
    full = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    done = subprocess.run([sys.executable, "-c", check, *classes], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=60, check=True)
    kind, *interpreted = done.stdout.split()
    assert kind == "compiled"
    assert interpreted == ["False"] * len(classes), dict(zip(classes, interpreted, strict=True))
