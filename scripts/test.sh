#!/usr/bin/env bash
# Run the test suite from a fresh checkout: set up, then pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/lb -k policy).
# Without arguments, the tests of the compiled modules (lb/native.py MODULES, found by
# tests/native_tests.py) then run again as Python (TFSERVING_LB_PURE=1), so both
# forms of the data path stay correct.
# `--fast` (first argument; the rest still go to pytest): only the tests not marked
# slow (tests/slowness.py marks every test that starts a process or a server), with
# TFSLB_TEST_FAST=1 so that any process start fails the test (tests/conftest.py), in
# two pytest-xdist workers (most of these tests wait on deadlines, not on a CPU); no
# Python re-run. For the edit-test loop: about 35 s on two cores.
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
if [ "${1:-}" = "--fast" ]; then
    fast=1
    shift
fi
bash scripts/setup.sh dev

run_pytest() {
    set +e
    "$@"
    local rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
        echo "test.sh: pytest collected no tests (exit 5): treating as a failure" >&2
        return 1
    fi
    return "$rc"
}

if [ "$fast" -eq 1 ]; then
    TFSLB_TEST_FAST=1 run_pytest .venv/bin/python -m pytest -m "not slow" -n 2 "$@"
    exit 0
fi
run_pytest .venv/bin/python -m pytest "$@"
if [ "$#" -eq 0 ]; then
    mapfile -t pure_tests < <(.venv/bin/python -m tests.native_tests)
    if [ "${#pure_tests[@]}" -eq 0 ]; then
        echo "test.sh: tests.native_tests found no tests of the compiled modules" >&2
        exit 1
    fi
    echo "test.sh: the compiled modules' tests again, run as Python (${#pure_tests[@]} files)" >&2
    TFSERVING_LB_PURE=1 run_pytest .venv/bin/python -m pytest -q "${pure_tests[@]}"
fi
