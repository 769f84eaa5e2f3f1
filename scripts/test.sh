#!/usr/bin/env bash
# Run the test suite from a fresh checkout: set up, then pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/lb -k policy).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests (exit 5): treating as a failure" >&2
    exit 1
fi
exit "$rc"
