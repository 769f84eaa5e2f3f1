"""Which tests are `slow`: those that start processes or servers outside the test.

Called by tests/conftest.py (`pytest_collection_modifyitems`) for every collected
test. A test is slow when its function, or any fixture it uses (the whole closure
pytest computed), reaches a *starter*:

* the modules and calls that start processes: `subprocess`, `multiprocessing`,
  `os.fork`, `os.system`, `os.posix_spawn*`, `os.exec*`, `pty.fork`,
  `asyncio.create_subprocess_*` (every launcher in tests/ and scripts/ ends in
  one of these: TensorFlow workers, redis-server, nginx, chromium, the proxy);
* any object with a `SLOW_BECAUSE` attribute (a reason string): servers that run
  in-process but are slow by policy, such as tests/dnsserver.py.

"Reaches" is read from the code, not kept by hand: the names a function's code
loads (its nested lambdas, comprehensions and inner functions included) are
resolved in its globals and closure; functions and classes of this repository
(tests, scripts, harness) are walked in turn, a class through all its methods,
and a module of this repository through the attributes the code names on it.
Code in lb/, cache/, backends/ and third parties is not walked: it starts no
processes in-process, and `scripts/test.sh --fast` refuses any process start
anyway (tests/conftest.py), so a test this walk misses fails loudly.

Guarantees: deterministic (same code, same answer); errs towards slow (a test
that names `subprocess` only for an exception class is slow too).
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import os
import pty
import subprocess
import types
from collections.abc import Iterator
from typing import Any

OURS = ("tests", "scripts", "harness", "backends", "lb", "cache")   # whose code is walked

_STARTER_MODULES = {subprocess, multiprocessing}
_STARTER_CALLS = {
    os.fork, os.forkpty, os.system, os.posix_spawn, os.posix_spawnp, pty.fork,
    asyncio.create_subprocess_exec, asyncio.create_subprocess_shell,
    *(getattr(os, n) for n in dir(os) if n.startswith(("exec", "spawn"))),
}


def _ours(obj: Any) -> bool:
    if isinstance(obj, types.ModuleType):
        module = obj.__name__
    elif isinstance(obj, (type, types.FunctionType, types.MethodType)):
        module = obj.__module__
    else:
        return False                    # values (instances, constants) are not walked
    return isinstance(module, str) and module.split(".")[0] in OURS


def _hashable_in(obj: Any, group: set[Any]) -> bool:
    try:
        return obj in group
    except TypeError:
        return False


class SlowWalk:
    """Memoised walk over code objects: `reason(obj)` is why `obj` starts a process or
    a slow server, or None. One instance per collection (tests/conftest.py)."""

    def __init__(self) -> None:
        self._seen: dict[int, str | None] = {}

    def reason(self, obj: Any) -> str | None:
        key = id(obj)
        if key in self._seen:
            return self._seen[key]
        self._seen[key] = None          # a cycle (recursion, mutual calls) adds nothing
        found = self._reason(obj)
        self._seen[key] = found
        return found

    def _reason(self, obj: Any) -> str | None:
        if isinstance(obj, types.ModuleType) and obj in _STARTER_MODULES:
            return f"uses {obj.__name__}"
        if _hashable_in(obj, _STARTER_CALLS):
            return f"calls {getattr(obj, '__qualname__', obj)}"
        if not _ours(obj):
            return None
        because = getattr(obj, "SLOW_BECAUSE", None)
        if isinstance(because, str):
            return because
        if inspect.isclass(obj):
            return self._first(self._members(obj))
        function = inspect.unwrap(obj) if callable(obj) else obj
        function = getattr(function, "__func__", function)      # a bound method
        if isinstance(function, types.FunctionType):
            return self._first(self._referenced(function))
        return None

    def _first(self, objs: Iterator[Any]) -> str | None:
        for obj in objs:
            found = self.reason(obj)
            if found and not _ours(obj):
                return found                    # the starter itself
            if found:
                return f"via {getattr(obj, '__qualname__', '?')}: {found}"
        return None

    @staticmethod
    def _members(cls: type) -> Iterator[Any]:
        for klass in cls.__mro__:
            if klass is object or not _ours(klass):
                continue
            for value in vars(klass).values():
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                elif isinstance(value, property):
                    value = value.fget
                if isinstance(value, types.FunctionType):
                    yield value

    @staticmethod
    def _referenced(function: types.FunctionType) -> Iterator[Any]:
        """The objects `function` names: globals and closure cells, and the named
        attributes of modules of this repository it names."""
        names = set(_names(function.__code__))
        scope = function.__globals__
        for cell in function.__closure__ or ():
            try:
                yield cell.cell_contents
            except ValueError:          # an empty cell
                continue
        for name in sorted(names):
            if name not in scope:
                continue
            obj = scope[name]
            yield obj
            if isinstance(obj, types.ModuleType) and _ours(obj):
                for attr in sorted(names):
                    if hasattr(obj, attr):
                        yield getattr(obj, attr)


def _names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


def fixture_functions(item: Any) -> Iterator[Any]:
    """The functions of every fixture in `item`'s closure (pytest's own included)."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return
    for name in item.fixturenames:
        for fixturedef in info.name2fixturedefs.get(name, ()):
            yield fixturedef.func


def why_slow(walk: SlowWalk, item: Any) -> str | None:
    """Why the collected test `item` is slow, or None if it is fast."""
    test = getattr(item, "obj", None)
    found = walk.reason(test) if test is not None else None
    if found:
        return found
    for func in fixture_functions(item):
        found = walk.reason(func)
        if found:
            return f"fixture {getattr(func, '__name__', '?')} {found}"
    return None
