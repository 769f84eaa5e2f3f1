#!/usr/bin/env bash
# The demo from a fresh checkout: set up, export the MNIST model, start three
# workers (one slower) behind the proxy with the memory cache. Ctrl-C stops it.
# Extra arguments go to `tfserving-lb demo` (e.g. --port 8601).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh tf
exec .venv/bin/tfserving-lb demo "$@"
