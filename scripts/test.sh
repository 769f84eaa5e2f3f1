#!/usr/bin/env bash
# Run the test suite from a fresh checkout: set up, then pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/lb -k policy).
# Without arguments, the unit tests of the compiled modules (lb/native.py) then run
# again as Python (TFSERVING_LB_PURE=1), so both forms of the data path stay correct.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
PURE_TESTS=(tests/lb/http tests/lb/test_dispatch.py tests/lb/test_nodes.py
            tests/lb/test_policy.py tests/lb/test_routes.py tests/lb/test_history.py
            tests/lb/test_http_front.py)

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

run_pytest .venv/bin/python -m pytest "$@"
if [ "$#" -eq 0 ]; then
    echo "test.sh: the compiled modules' unit tests again, run as Python" >&2
    TFSERVING_LB_PURE=1 run_pytest .venv/bin/python -m pytest -q "${PURE_TESTS[@]}"
fi
