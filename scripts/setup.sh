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
# `pip install -e` compiles the data path with mypyc as any `pip install .` does
# (build_backend/: about 80 s; without a C compiler the same code runs as Python).
stamp=".venv/.installed-$extra-$(cat pyproject.toml build_backend/*.py | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    echo "setup: installing tfserving-lb[$extra] into .venv (TensorFlow takes a minute," \
         "the data path's mypyc compile about 80 s)" >&2
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[$extra]"
    touch "$stamp"
fi
# Installed again (compiled again) only when the compiled modules changed since: exit 1
# says so; 2 means they were installed as Python for want of a compiler (lb/native.py).
rc=0
.venv/bin/tfserving-lb data-path >/dev/null || rc=$?
if [ "$rc" -eq 1 ]; then
    echo "setup: the compiled modules changed: reinstalling, mypyc compiles them (~80 s)" >&2
    .venv/bin/python -m pip install -q --no-deps -e .
fi
echo "setup: data path $(.venv/bin/tfserving-lb data-path || true)" >&2
