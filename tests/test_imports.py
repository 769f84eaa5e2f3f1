"""Who may import whom, read from every import statement (ast; lazy imports in
functions included), so that the layering holds without anyone remembering it:

* scripts/ imports nothing from tests/, and tests/ nothing from scripts/ except
  tests/scripts/, which tests the script modules themselves; what both need is in
  harness/;
* harness/ imports neither tests/ nor scripts/ (it is what they share);
* the shipped packages (lb/, cache/) import none of harness/, tests/, scripts/,
  and lb/ not backends/ (the proxy never loads TensorFlow's side).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.procs import ROOT

# (package, top-level packages it must not import)
FORBIDDEN = {
    "scripts": {"tests"},
    "tests": {"scripts"},
    "harness": {"tests", "scripts"},
    "lb": {"harness", "tests", "scripts", "backends"},
    "cache": {"harness", "tests", "scripts", "backends"},
}
# tests of the script modules: the scripts are what they test
ALLOWED = {("tests/scripts", "scripts")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_of(path: Path) -> list[str]:
    """The package a relative import in the file at `path` starts from."""
    parts = module_name(path).split(".")
    return parts if path.name == "__init__.py" else parts[:-1]


def imported(source: str, package: list[str]) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, a module of `package`."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            yield node.lineno, ".".join([*base, node.module] if node.module else base)


def forbidden(rel: str, name: str) -> bool:
    """Whether the file at `rel` (a path from the repository root) may not import `name`."""
    top, target = rel.split("/")[0], name.split(".")[0]
    if target not in FORBIDDEN.get(top, ()):
        return False
    return not any(rel.startswith(f"{where}/") and target == allowed
                   for where, allowed in ALLOWED)


def violations(top: str) -> list[str]:
    found = []
    for path in sorted((ROOT / top).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        found += [f"{rel}:{line} imports {name}"
                  for line, name in imported(path.read_text(), package_of(path))
                  if forbidden(rel, name)]
    return found


@pytest.mark.parametrize("top", sorted(FORBIDDEN))
def test_no_import_crosses_a_forbidden_line(top: str) -> None:
    assert violations(top) == []


def test_the_walk_sees_relative_and_lazy_imports() -> None:
    """The reader itself: `from .x import` resolves against the package, and an
    import inside a function counts."""
    source = "def f():\n    import scripts.benchenv\n    from . import test_wrk\n"
    names = [name for _, name in imported(source, ["tests", "harness"])]
    assert names == ["scripts.benchenv", "tests.harness"]


@pytest.mark.parametrize(("rel", "name", "bad"), [
    ("scripts/bench_grpc.py", "tests.procs", True),
    ("tests/lb/test_overload.py", "scripts.simnode", True),
    ("tests/scripts/test_tail_bound.py", "scripts.tail_bound", False),
    ("harness/proxy.py", "tests.certs", True),
    ("lb/server.py", "harness.procs", True),
    ("lb/server.py", "backends.worker", True),
    ("cache/store.py", "tests.procs", True),
    ("tests/lb/test_policy.py", "harness.procs", False),
    ("scripts/bench_raw.py", "lb.native", False),
])
def test_the_rules(rel: str, name: str, bad: bool) -> None:
    assert forbidden(rel, name) is bad
