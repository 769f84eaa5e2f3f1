"""The layers of lb/, walked from the source (no import runs): which folder may import
which, and no import cycle among the modules at run time.

The rules (docs/ARCHITECTURE.md, "Layout"):
* the request core (`lb.request`) and the pool (`lb.pool`) import no front
  (`lb.rest`, `lb.grpc`) and not the composition root (`lb.server`);
* the pool imports nothing of the request core: requests use nodes, not back;
* the admin side (`lb.admin.app`) imports neither the composition root nor the reloader:
  it reads `lb.admin.source`'s views, which `lb.server` wires;
* nothing in lb/ imports TensorFlow, backends/, tests/, scripts/ or harness/.
Imports under `if TYPE_CHECKING:` count for the folder rules (a reader follows them
too) and not for cycles (they never run). The type-only loops inside `lb.http`
(exchange, pipeline, server, server_protocol) stay: mypyc compiles those modules,
and the concrete classes make their attribute reads native.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LB = ROOT / "lb"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_only(tree: ast.Module) -> set[int]:
    """Line numbers of imports inside `if TYPE_CHECKING:` blocks."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    lines.add(inner.lineno)
    return lines


def imports() -> dict[str, list[tuple[str, bool]]]:
    """Each lb module: (imported module, at run time?) for every import in it."""
    out: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted(LB.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        typing_only = _type_only(tree)
        found: list[tuple[str, bool]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found += [(a.name, node.lineno not in typing_only) for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                runtime = node.lineno not in typing_only
                found.append((node.module, runtime))
                # `from lb.pool import nodes` imports the module lb.pool.nodes
                found += [(f"{node.module}.{a.name}", runtime) for a in node.names
                          if (LB.parent / f"{node.module}.{a.name}".replace(".", "/")
                              ).with_suffix(".py").is_file()]
        out[module_name(path)] = found
    return out


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


_CACHE: dict[str, list[tuple[str, bool]]] = {}


def imports_cache() -> dict[str, list[tuple[str, bool]]]:
    if not _CACHE:
        _CACHE.update(imports())
    return _CACHE


RULES = [   # (importing package, imported package it must not reach)
    ("lb.request", "lb.rest"), ("lb.request", "lb.grpc"), ("lb.request", "lb.server"),
    ("lb.pool", "lb.rest"), ("lb.pool", "lb.grpc"), ("lb.pool", "lb.server"),
    ("lb.pool", "lb.request"),
    ("lb.admin.app", "lb.server"), ("lb.admin.app", "lb.reload"), ("lb.admin.app", "lb.supervisor"),
    ("lb", "tensorflow"), ("lb", "backends"), ("lb", "tests"), ("lb", "scripts"),
    ("lb", "harness"),
]


def test_each_folder_imports_only_what_its_layer_may() -> None:
    graph = imports()
    assert {"lb.request.core", "lb.pool.nodes", "lb.admin.app", "lb.rest.front"} <= set(graph)
    broken = [(mod, target) for mod, found in graph.items() for target, _ in found
              for src, banned in RULES if _within(mod, src) and _within(target, banned)]
    assert broken == []


def test_no_import_cycle_runs() -> None:
    graph = {mod: {t for t, runtime in found if runtime and t in imports_cache()}
             for mod, found in imports_cache().items()}
    state: dict[str, int] = {}          # 1 on the path, 2 done
    cycles: list[list[str]] = []

    def visit(mod: str, path: list[str]) -> None:
        state[mod] = 1
        for nxt in sorted(graph[mod]):
            if nxt == mod or _within(mod, nxt):     # a package's own __init__
                continue
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])
    assert cycles == []
