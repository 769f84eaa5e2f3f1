#!/usr/bin/env bash
# Make this checkout runnable on a fresh Debian/Ubuntu machine, idempotently:
# redis-server (apt-get, when missing) and a virtualenv in .venv with the project
# and the given extra installed. Called by scripts/demo.sh, scripts/test.sh, .ci/run.
#   usage: scripts/setup.sh [EXTRA]      EXTRA: tf (default) | dev
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-tf}"

# Debian packages the project needs, installed with apt-get only when missing:
# redis-server (tests start their own), kubectl (tests/deploy renders deploy/k8s with
# `kubectl kustomize`: Debian's kubernetes-client, kubectl 1.20 with kustomize v2.0.3)
# and chromium (tests/lb/test_dashboard.py drives a real headless browser).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "$extra" = "dev" ]; then
    command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
    [ -x /usr/bin/chromium ] || missing+=(chromium)
fi
if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]} (apt-get)" >&2
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($python --version)" >&2
    "$python" -m venv .venv
fi
stamp=".venv/.installed-$extra-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    echo "setup: installing tfserving-lb[$extra] into .venv (TensorFlow takes a minute)" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[$extra,native]"
    touch "$stamp"
fi
# The data path compiled with mypyc (lb/native.py), rebuilt only when its sources
# changed; without it (no C compiler, say) the same code runs as Python, slower.
.venv/bin/python scripts/build_native.py || echo "setup: the data path runs as Python" >&2
