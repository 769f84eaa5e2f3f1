"""`pip install .` into a fresh virtualenv: the data path compiled, else Python with a warning.

The route of the README's "Using it in front of your own servers": the project's
build backend (build_backend/) builds the wheel from a copy of the sources, pip
installs it with its dependencies into a new virtualenv (pip's indexes as set up
on the machine), and that venv's `tfserving-lb serve` runs in front of a real
worker. Slow: the mypyc compile takes about 80 s on a 2-core box. The variant
without a C compiler (CC names a missing binary) costs a wheel build without
compiling; the venv is made once and both wheels go into it in turn.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from lb import native
from tests.procs import (
    ROOT,
    TEST_MODELS,
    Proc,
    free_port,
    get_json,
    http,
    node,
    start_worker,
    write_config,
)

SOURCES = ("pyproject.toml", "README.md", "MANIFEST.in", "build_backend", "lb", "cache",
           "backends")
MODEL = "half_plus_two"
BUILD_S = 1800          # a deadline for one wheel build; about 80 s compile on a quiet box


class Venv:
    """A fresh virtualenv with tfserving-lb installed from a wheel built here."""

    __slots__ = ("bin", "dist", "pure_wheel", "root", "src")

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "venv" / "bin"
        self.src = root / "src"            # a copy: the build writes nothing in the checkout
        self.dist = root / "dist"
        self.pure_wheel = root           # the wheel built without a compiler, once made

    def run(self, *cmd: str, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """A command of the venv, run outside the checkout, without our switches."""
        full = {k: v for k, v in os.environ.items()
                if k not in (native.PURE_ENV, native.BUILD_ENV, "PYTHONPATH")}
        return subprocess.run([str(self.bin / cmd[0]), *cmd[1:]], cwd=self.root,
                              env={**full, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout)

    def build_and_install(self, env: dict[str, str], deps: bool) -> Path:
        """Build the wheel from the copied sources with `env`; install it (replacing any)."""
        shutil.rmtree(self.dist, ignore_errors=True)
        done = self.run("python", "-m", "pip", "wheel", "--no-deps", "-v", "--wheel-dir",
                        str(self.dist), str(self.src), env=env, timeout=BUILD_S)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        (wheel,) = self.dist.glob("*.whl")
        self.install(wheel, deps)
        return wheel

    def install(self, wheel: Path, deps: bool) -> None:
        flags = [] if deps else ["--no-deps", "--force-reinstall"]
        done = self.run("python", "-m", "pip", "install", "-q", *flags, str(wheel))
        assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    """The venv with the proxy's dependencies, installed with the wheel built without a
    C compiler (CC names a missing binary: no compile, so it is quick)."""
    where = Venv(tmp_path_factory.mktemp("install"))
    where.src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, where.src / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, where.src / name)
    venv.create(where.root / "venv", with_pip=True)
    wheel = where.build_and_install({"CC": "/nonexistent/cc"}, deps=True)
    where.pure_wheel = Path(shutil.copy(wheel, where.root))
    return where


@pytest.fixture(scope="module")
def worker(logs_dir: Path) -> Iterator[str]:
    """One real worker (the dev venv's), serving TF Serving's half_plus_two."""
    proc, url = start_worker(logs_dir, {MODEL: TEST_MODELS / "half_plus_two_cpu"})
    yield url
    proc.stop()


def serve(fresh: Venv, worker: str, logs_dir: Path, name: str) -> tuple[Proc, str]:
    """The fresh venv's `tfserving-lb serve` in front of `worker`: (process, admin URL)."""
    rest, admin = free_port(), free_port()
    config = write_config(logs_dir / f"{name}.yaml", {
        "listen": {"rest": f"127.0.0.1:{rest}", "grpc": None, "admin": f"127.0.0.1:{admin}"},
        "nodes": [node("w", worker)]})
    proc = Proc(name, [str(fresh.bin / "tfserving-lb"), "serve", "--config", str(config)],
                logs_dir, env={native.PURE_ENV: "0", "PYTHONPATH": ""})
    try:
        proc.wait_http(f"http://127.0.0.1:{admin}/stats", 60.0, lambda s, _b: s == 200)
        status, _, body = http("POST", f"http://127.0.0.1:{rest}/v1/models/{MODEL}:predict",
                               {"instances": [1.0, 2.0, 5.0]})
        assert (status, json.loads(body)) == (200, {"predictions": [2.5, 3.0, 4.5]}), body
    except BaseException:
        proc.stop()
        raise
    return proc, f"http://127.0.0.1:{admin}"


def installed_lb(fresh: Venv) -> Path:
    done = fresh.run("python", "-c", "import lb; print(lb.__file__)")
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


def load_backend(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT / "build_backend"))
    spec = importlib.util.spec_from_file_location(
        "tfslb_build", ROOT / "build_backend" / "tfslb_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.timeout(BUILD_S + 600)
def test_pip_install_runs_the_data_path_compiled(
        fresh: Venv, worker: str, logs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = load_backend(monkeypatch)
    missing = backend.mypyc_compile.missing_toolchain()
    if missing and os.environ.get(native.BUILD_ENV) != "compiled":
        pytest.skip(f"this machine cannot compile the data path: {missing}; "
                    f"{native.BUILD_ENV}=compiled (CI) requires it")
    wheel = fresh.build_and_install({}, deps=False)
    assert wheel.name.endswith(f"-{backend.platform_tag()}.whl"), wheel.name
    assert installed_lb(fresh).is_relative_to(fresh.root / "venv")
    done = fresh.run("tfserving-lb", "data-path")
    assert done.returncode == 0 and done.stdout.startswith("compiled: "), done.stdout
    assert Path(done.stdout.split(": ", 1)[1].strip()).is_relative_to(fresh.root / "venv")
    proc, admin = serve(fresh, worker, logs_dir, "installed-compiled")
    try:
        assert get_json(f"{admin}/stats")["data_path"] == "compiled"
        assert "data path compiled" in proc.log()
    finally:
        proc.stop()


@pytest.mark.slow
@pytest.mark.timeout(BUILD_S + 600)
def test_without_a_compiler_it_installs_and_runs_as_python_with_a_warning(
        fresh: Venv, worker: str, logs_dir: Path) -> None:
    assert fresh.pure_wheel.name.endswith("-py3-none-any.whl")     # the fixture built it so
    fresh.install(fresh.pure_wheel, deps=False)
    assert installed_lb(fresh).is_relative_to(fresh.root / "venv")
    done = fresh.run("tfserving-lb", "data-path")
    assert done.returncode == 2, done.stdout
    assert "no C compiler ('/nonexistent/cc' not found" in done.stdout
    proc, admin = serve(fresh, worker, logs_dir, "installed-python")
    try:
        assert get_json(f"{admin}/stats")["data_path"] == "python"
        assert ("WARNING lb.native: data path runs as Python, about 2x slower: installed "
                "without it: no C compiler") in proc.log()
    finally:
        proc.stop()


def test_a_compiled_wheel_is_retagged_and_its_record_remade(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = load_backend(monkeypatch)
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("demo/__init__.py", "x = 1\n")
        z.writestr("demo-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: t\n"
                   "Root-Is-Purelib: true\nTag: py3-none-any\n\n")
        z.writestr("demo-1.0.dist-info/RECORD", "stale\n")
    name = backend.rewrite(wheel, {"_x/1/a.so": b"\x7fELF"}, tag="cp311-cp311-linux_x86_64")
    assert name == "demo-1.0-cp311-cp311-linux_x86_64.whl" and not wheel.exists()
    with zipfile.ZipFile(tmp_path / name) as z:
        meta = z.read("demo-1.0.dist-info/WHEEL").decode()
        assert "Root-Is-Purelib: false\nTag: cp311-cp311-linux_x86_64\n" in meta
        assert "py3-none-any" not in meta
        record = z.read("demo-1.0.dist-info/RECORD").decode().splitlines()
        assert record[-1] == "demo-1.0.dist-info/RECORD,,"
        for line in record[:-1]:
            path, digest, size = line.split(",")
            data = z.read(path)
            want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            assert (digest, int(size)) == (f"sha256={want.decode()}", len(data))
        assert sorted(line.split(",")[0] for line in record) == sorted(z.namelist())
    assert backend.platform_tag().startswith(f"cp{sys.version_info[0]}{sys.version_info[1]}-")


def test_the_mypy_that_builds_is_the_one_the_dev_venv_checks_with() -> None:
    """What `.venv/bin/mypy` accepts is what mypyc compiles at `pip install`."""
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    build = [r for r in doc["build-system"]["requires"] if r.startswith("mypy")]
    assert build == doc["project"]["optional-dependencies"]["native"] == ["mypy==2.4.1"]
    assert doc["build-system"]["build-backend"] == "tfslb_build"
    assert (ROOT / doc["build-system"]["backend-path"][0] / "tfslb_build.py").is_file()
