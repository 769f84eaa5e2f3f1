"""The process launchers: a test run killed with SIGKILL takes its children with it."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.procs import ROOT, wait_until

# A stand-in for pytest: starts one Proc, prints its pid, then waits to be killed.
PARENT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.procs import Proc
child = Proc("sleeper", [sys.executable, "-c", "import time; time.sleep(120)"], Path({logs!r}))
print(child.pid, flush=True)
time.sleep(120)
"""


def gone(pid: int) -> bool:
    """Whether `pid` has exited (a zombie not yet reaped by init counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def test_a_killed_run_takes_its_children_with_it(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(PARENT.format(root=str(ROOT), logs=str(tmp_path))))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              start_new_session=True)
    child = None
    try:
        assert parent.stdout is not None
        ready, _, _ = select.select([parent.stdout], [], [], 30.0)
        assert ready, "the parent did not start its child within 30 s"
        child = int(parent.stdout.readline())
        assert not gone(child)
        parent.kill()
        parent.wait(5)
        wait_until(lambda: gone(child), 5.0, f"child {child} to die with its parent")
    finally:
        parent.kill()
        parent.wait(5)
        if child is not None and not gone(child):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
