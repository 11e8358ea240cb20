#!/usr/bin/env bash
# PISA's real path on one GPU: full-size random components saved in the real checkpoints' dtypes, a few steps of
# `accelerate launch -m pisa_model.train --from-components ...` with the default flags, then evaluation in both
# answer modes; prints losses, samples/s, peak GPU memory and pisa_model.budget's estimate. Meant to finish within
# 8 minutes on one H200. Without a GPU it says so and exits 2.
#   bash bench/gpu_check.sh [--steps 3] [--test-rows 16] [--work-dir DIR]
#   bash bench/gpu_check.sh --tiny     # the same steps with tiny components on CPU (run by the test suite)
set -euo pipefail
cd "$(dirname "$0")/.."
# $PYTHON, else the active venv's python, else the README's .venv, else python3.
if [ -z "${PYTHON:-}" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ]; then PYTHON="$VIRTUAL_ENV/bin/python"
    elif [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python
    else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
exec "$PYTHON" bench/pisa_gpu_check.py "$@"
