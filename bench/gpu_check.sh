#!/usr/bin/env bash
# PISA at the paper's size on the GPU machine: random-init 7B LLaVA + DINOv2-L + SAM-H decoder in bf16,
# a LoRA training step and predict, with samples/s and peak memory. Budget: about 3-5 minutes on one H200
# (most of it building 7.6 B random weights on the device).
#   bash bench/gpu_check.sh [--train-batch 4] [--predict-batch 8] [--gradient-checkpointing]
#   bash bench/gpu_check.sh --tiny     # CPU sanity run of the same script
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=python3
[ -x .venv/bin/python ] && PYTHON=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
exec "$PYTHON" bench/pisa_gpu_check.py "$@"
