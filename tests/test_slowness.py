"""tests/slowness.py: what starts a process is read from the code, through helpers,
classes, modules of the repository and closures; what does not is left fast."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests import procs
from tests.dnsserver import dns_server
from tests.procs import Proc, free_port, http
from tests.slowness import SlowWalk, why_slow


def pure(x: int) -> int:
    return sorted([x, free_port()])[0]


def runs_a_command() -> None:
    subprocess.run(["true"], check=True)


def through_a_helper() -> None:
    runs_a_command()


def through_a_class(tmp: Path) -> None:
    Proc("x", ["true"], tmp).stop()


def through_a_module_attribute(tmp: Path) -> None:
    procs.RedisServer(tmp).start()


def through_a_closure() -> object:
    helper = through_a_helper
    return lambda: helper()


def through_a_dns_server() -> None:
    with dns_server():
        pass


# Referred to through values (not walked), so that the tests below stay fast themselves.
STARTERS = {"helper": through_a_helper, "class": through_a_class}


@pytest.mark.parametrize("function", [runs_a_command, through_a_helper, through_a_class,
                                      through_a_module_attribute, through_a_closure(),
                                      through_a_dns_server])
def test_a_process_start_is_found_however_far(function: object) -> None:
    assert SlowWalk().reason(function)


@pytest.mark.parametrize("function", [pure, http, free_port, lambda: pure(1)])
def test_code_that_starts_nothing_stays_fast(function: object) -> None:
    assert SlowWalk().reason(function) is None


def test_the_reason_names_the_path() -> None:
    reason = SlowWalk().reason(STARTERS["helper"])
    assert reason == "via runs_a_command: uses subprocess", reason


def test_a_test_is_slow_through_its_fixtures(request: pytest.FixtureRequest) -> None:
    """`why_slow` reads the test and every fixture of its closure (pytest's item)."""
    assert why_slow(SlowWalk(), request.node) is None
    fixture = SimpleNamespace(func=STARTERS["class"])
    item = SimpleNamespace(obj=pure, fixturenames=["server"],
                           _fixtureinfo=SimpleNamespace(name2fixturedefs={"server": [fixture]}))
    assert why_slow(SlowWalk(), item) == (
        "fixture through_a_class via Proc: via Proc.__init__: uses subprocess")


def test_fast_mode_refuses_a_process_start_by_name() -> None:
    """The audit hook of tests/conftest.py (installed only with TFSLB_TEST_FAST=1): armed,
    a process start raises with the command; disarmed, and for other events, it is quiet."""
    from tests import conftest

    args = ("/bin/true", ["/bin/true", "-x"], None, None)
    armed = conftest._Guard.armed
    try:
        conftest._Guard.armed = True
        with pytest.raises(RuntimeError, match=r"refuses to start a process.*'/bin/true', '-x'"):
            conftest._refuse_process_starts("subprocess.Popen", args)
        conftest._refuse_process_starts("open", ("/etc/hostname", "r", 0))
        conftest._Guard.armed = False
        conftest._refuse_process_starts("subprocess.Popen", args)
    finally:
        conftest._Guard.armed = armed
