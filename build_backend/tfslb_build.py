"""The build backend: setuptools' wheel, with the data path compiled by mypyc.

Called by pip (PEP 517 and 660: `pyproject.toml` [build-system]) for `pip install .`,
`pip install -e .`, `pip wheel .`, and by `python -m build`. Every hook is
setuptools' own; `build_wheel` and `build_editable` then add the modules of
`lb.native.MODULES` compiled by mypyc (`mypyc_compile.py`) to the wheel, as
`_tfserving_lb_native/<digest>/` beside the packages in site-packages, where
`lb/native.py` finds them while they match the sources. An editable wheel gets
them too, so an editable install runs compiled and an edited module runs as
Python until the next `pip install -e .`: nothing is written into the checkout.

Guarantees: without a C compiler, or when mypyc fails, the wheel installs the
same code as Python and carries `_tfserving_lb_native/<digest>/python`, the
reason, which the proxy's start-up log repeats (pip shows the build's own log
only with -v). `TFSERVING_LB_BUILD=compiled` makes that a failed build instead
(the Docker image, CI); `TFSERVING_LB_BUILD=python` skips the compiler. A
compiled wheel is tagged for this interpreter and platform (cp311-cp311-linux_x86_64).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import mypyc_compile  # beside this file: pyproject.toml's backend-path
from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401 - the hooks pip calls, as setuptools has them
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    get_requires_for_build_wheel,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

ROOT = Path(__file__).resolve().parent.parent


def build_wheel(wheel_directory: str, config_settings: dict[str, Any] | None = None,
                metadata_directory: str | None = None) -> str:
    name = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    return add_data_path(Path(wheel_directory) / name)


def build_editable(wheel_directory: str, config_settings: dict[str, Any] | None = None,
                   metadata_directory: str | None = None) -> str:
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    return add_data_path(Path(wheel_directory) / name)


def lb_native(root: Path = ROOT) -> ModuleType:
    """lb/native.py loaded on its own (it needs only the standard library): the list
    of compiled modules and the digest the proxy will look for."""
    spec = importlib.util.spec_from_file_location("_tfslb_build_native", root / "lb" / "native.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def add_data_path(wheel: Path) -> str:
    """Compile the data path and add it (or the note saying why not) to `wheel`;
    returns the wheel's file name, retagged for this platform when compiled."""
    native = lb_native()
    where = f"{native.INSTALL_DIR}/{native.digest(ROOT)}"
    with tempfile.TemporaryDirectory(prefix="tfslb-build-") as tmp:
        out = Path(tmp) / "out"
        reason = mypyc_compile.compile_modules(ROOT, list(native.MODULES), out, Path(tmp),
                                               native.BUILD_ENV)
        if reason:
            added = {f"{where}/{native.PYTHON_NOTE}": (reason + "\n").encode()}
            return rewrite(wheel, added, tag=None)
        added = {f"{where}/{p.relative_to(out).as_posix()}": p.read_bytes()
                 for p in sorted(out.rglob("*")) if p.is_file()}
        added[f"{where}/{native.COMPLETE}"] = f"{len(native.MODULES)} modules\n".encode()
        return rewrite(wheel, added, tag=platform_tag())


def platform_tag() -> str:
    """This interpreter's wheel tag, e.g. cp311-cp311-linux_x86_64 (mypyc: CPython only)."""
    version = f"{sys.version_info[0]}{sys.version_info[1]}"
    soabi = sysconfig.get_config_var("SOABI") or f"cpython-{version}"   # cpython-311-x86_64-...
    abi = "cp" + soabi.split("-")[1]
    return f"cp{version}-{abi}-{sysconfig.get_platform().replace('-', '_').replace('.', '_')}"


def rewrite(wheel: Path, added: dict[str, bytes], tag: str | None) -> str:
    """Write `wheel` again with the `added` files; with `tag`, as a platform wheel of
    that tag (renamed, WHEEL's Tag and Root-Is-Purelib changed). RECORD is remade."""
    with zipfile.ZipFile(wheel) as old:
        infos = {i.filename: i for i in old.infolist() if not i.is_dir()}
        entries = {name: old.read(info) for name, info in infos.items()}
    record = next(n for n in entries if n.endswith(".dist-info/RECORD"))
    del entries[record]
    if tag is not None:
        meta = record.replace("RECORD", "WHEEL")
        entries[meta] = _retag(entries[meta].decode(), tag).encode()
    entries.update(added)
    lines = [f"{name},sha256={_b64(hashlib.sha256(data).digest())},{len(data)}"
             for name, data in entries.items()]
    entries[record] = ("\n".join([*lines, f"{record},,"]) + "\n").encode()
    parts = wheel.name[:-len(".whl")].split("-")
    name = "-".join(parts[:-3] + ([tag] if tag else parts[-3:])) + ".whl"
    target = wheel.with_name(name)
    partial = wheel.with_name(name + ".part")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as new:
        for arcname, data in entries.items():
            new.writestr(infos.get(arcname) or _entry(arcname), data)   # modes kept
    wheel.unlink()
    partial.rename(target)
    return name


def _retag(wheel_meta: str, tag: str) -> str:
    lines = [ln for ln in wheel_meta.splitlines()
             if ln.strip() and not ln.startswith(("Tag:", "Root-Is-Purelib:"))]
    return "\n".join([*lines, "Root-Is-Purelib: false", f"Tag: {tag}"]) + "\n"


def _entry(arcname: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
    info.external_attr = 0o644 << 16        # rw-r--r--, as the packages' own files
    info.compress_type = zipfile.ZIP_DEFLATED
    return info


def _b64(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
