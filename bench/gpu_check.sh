#!/usr/bin/env bash
# PISA's real path on one GPU: full-size random components saved in the real checkpoints' dtypes, a few steps of
# `accelerate launch -m pisa_model.train --from-components ...` with the default flags, then evaluation in both
# answer modes; prints losses, samples/s, peak GPU memory and pisa_model.budget's estimate, wall time per phase
# and the disk used. Meant to finish within 8 minutes on one H100. Without a GPU it says so and exits 2.
#   bash bench/gpu_check.sh [--steps 3] [--test-rows 16] [--work-dir DIR]
#   bash bench/gpu_check.sh --wheels DIR ...   # on an offline node: the bundle of bench/offline_wheels.sh first
#   bash bench/gpu_check.sh --tiny             # the same steps with tiny components on CPU (run by the test suite)
# --wheels DIR installs DIR's wheels into DIR/site (pip --no-index --no-deps --target: nothing else on the node is
# touched) and puts that folder first on the path. Without --wheels, a requirement this Python lacks (or has too
# old) is one line naming it and the bundle command.
set -euo pipefail
cd "$(dirname "$0")/.."
# $PYTHON, else the active venv's python, else the README's .venv, else python3.
if [ -z "${PYTHON:-}" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ]; then PYTHON="$VIRTUAL_ENV/bin/python"
    elif [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python
    else PYTHON=python3; fi
fi
WHEELS=""
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) [ $# -ge 2 ] || { echo "gpu_check.sh: error: --wheels needs a folder" >&2; exit 2; }; WHEELS="$2"; shift 2 ;;
        --wheels=*) WHEELS="${1#--wheels=}"; shift ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PIP_DISABLE_PIP_VERSION_CHECK=1
if [ -n "$WHEELS" ]; then
    if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        echo "gpu_check.sh: error: $WHEELS: no wheels (make the bundle with bash bench/offline_wheels.sh $WHEELS)" >&2
        exit 2
    fi
    SITE="$(cd "$WHEELS" && pwd)/site"
    rm -rf "$SITE.partial"
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target "$SITE.partial" "$WHEELS"/*.whl
    rm -rf "$SITE" && mv "$SITE.partial" "$SITE"
    # The bundle first, then the node's own packages; this checkout last (the bundle's instructpart wheel wins).
    export PYTHONPATH="$SITE:${PYTHONPATH:+$PYTHONPATH:}$PWD"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" bench/offline_bundle.py check
exec "$PYTHON" bench/pisa_gpu_check.py "${ARGS[@]}"
