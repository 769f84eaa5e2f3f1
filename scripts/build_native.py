"""Compile the data path (`lb.native.MODULES`) with mypyc into build/native/<digest>/.

    .venv/bin/python scripts/build_native.py [--force]

Called by scripts/setup.sh after the install (it needs mypy and a C compiler:
gcc and the Python headers). Idempotent: a build of the current sources is kept.
The sources are copied into a scratch directory and compiled there, so what is
compiled is exactly what the digest names, and nothing is written next to the
sources (an extension module there would shadow an edited .py). Exit status 0
with a built (or already present) directory; 1 when the build failed, in which
case the proxy runs as Python (correct, about 1.5× slower on the data path).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lb import native

MYPY_INI = """[mypy]
python_version = 3.11
ignore_missing_imports = True
"""
SETUP = """
from setuptools import setup
from mypyc.build import mypycify
setup(name="tfserving_lb_native", ext_modules=mypycify({modules!r}, opt_level="3"))
"""


def build(dest: Path) -> None:
    """Compile in a scratch copy of lb/ and cache/ (mypyc type-checks what they
    import); move the extension modules, with their package layout, to `dest`."""
    with tempfile.TemporaryDirectory(prefix="lb-native-") as tmp:
        work = Path(tmp)
        for package in ("lb", "cache"):
            shutil.copytree(native.ROOT / package, work / package,
                            ignore=shutil.ignore_patterns("__pycache__", "*.so"))
        (work / "mypy.ini").write_text(MYPY_INI)
        (work / "setup.py").write_text(SETUP.format(modules=list(native.MODULES)))
        out = work / "out"
        done = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib",
                               str(out), "--build-temp", str(work / "tmp")], cwd=work,
                              capture_output=True, text=True)
        if done.returncode != 0:            # mypy's and gcc's complaints, the last of them
            print("\n".join((done.stdout + done.stderr).splitlines()[-30:]), file=sys.stderr)
            done.check_returncode()
        staging = dest.with_name(dest.name + ".part")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(out, staging)
        (staging / "complete").write_text(f"{len(native.MODULES)} modules\n")
        staging.rename(dest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even when present")
    args = parser.parse_args()
    dest = native.build_dir()
    if (dest / "complete").is_file() and not args.force:
        print(f"build_native: up to date ({dest.relative_to(native.ROOT)})")
        return 0
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    for old in dest.parent.iterdir():       # builds of other sources: never loaded again
        shutil.rmtree(old, ignore_errors=True)
    t0 = time.monotonic()
    try:
        build(dest)
    except (subprocess.CalledProcessError, OSError) as exc:
        print(f"build_native: FAILED ({exc}); the proxy runs as Python", file=sys.stderr)
        return 1
    print(f"build_native: compiled {len(native.MODULES)} modules in "
          f"{time.monotonic() - t0:.0f} s ({dest.relative_to(native.ROOT)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
