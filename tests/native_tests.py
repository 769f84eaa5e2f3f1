"""The tests of the compiled modules (`lb.native.MODULES`), to run again as Python.

    .venv/bin/python -m tests.native_tests      # the test files, one a line

Called by scripts/test.sh, which runs these files a second time with
TFSERVING_LB_PURE=1 so that both forms of the data path stay correct, and by
tests/lb/test_native.py, which checks that every compiled module has some.

Derived from `lb.native.MODULES`: for each compiled module, the test files that
import it, read from their import statements (`from lb.request.retry import ...`,
`from lb.http import client`); and, for a module that tests reach only through a
module that is not compiled or through a proxy process (which inherits the
switch), the files `THROUGH` names. Moving a module (a new path in MODULES)
needs no change here unless only `THROUGH` reaches it.
"""

from __future__ import annotations

import ast
from pathlib import Path

from lb import native

ROOT = Path(__file__).resolve().parent.parent
E2E = "tests/lb/test_rest_e2e.py"     # the REST front through a proxy process, every path
THROUGH: dict[str, tuple[str, ...]] = {
    "lb/request/core.py": (E2E,),
    "lb/request/observe.py": ("tests/lb/test_metrics.py",),     # what /metrics reports
    "lb/rest/front.py": (E2E, "tests/lb/test_metrics.py"),
    "lb/rest/upstream.py": (E2E,),
    "lb/http/client_conn.py": ("tests/lb/http/test_client.py",),  # through lb.http.client
    "lb/http/exchange.py": ("tests/lb/http/test_client.py",),
    "lb/http/pipeline.py": ("tests/lb/http/test_server.py",),     # through lb.http.server
    "lb/http/server_protocol.py": ("tests/lb/http/test_server.py",),
}
SELF = "tests/lb/test_native.py"      # sets the switch itself, per subprocess


def module_name(path: str) -> str:
    """"lb/http/client.py" -> "lb.http.client"."""
    return path.removesuffix(".py").replace("/", ".")


def imported(test_file: Path) -> set[str]:
    """Every module name an import statement of `test_file` may load (for `from a
    import b`: both a and a.b, since b may be a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(test_file.read_text(), str(test_file))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def tests_by_module() -> dict[str, list[str]]:
    """For each of `lb.native.MODULES`, the test files that exercise it."""
    files = {str(p.relative_to(ROOT)): imported(p)
             for p in sorted((ROOT / "tests").rglob("test_*.py"))}
    return {path: sorted({f for f, names in files.items()
                          if module_name(path) in names and f != SELF}
                         | set(THROUGH.get(path, ())))
            for path in native.MODULES}


def pure_tests() -> list[str]:
    """The union, sorted: what scripts/test.sh runs again as Python."""
    return sorted({f for files in tests_by_module().values() for f in files})


if __name__ == "__main__":
    print("\n".join(pure_tests()))
