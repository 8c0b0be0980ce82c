#!/usr/bin/env bash
# Run on a machine with an NVIDIA GPU (the device tool): exercises every GPU path the image
# allows and prints one line per measurement; with $OUT set, also writes $OUT/gpu_check.json.
# Needs torch/torchvision/onnx/onnxruntime there; installs kdpipe itself without dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi -L || true
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
  || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q --no-deps onnxconverter-common >/dev/null 2>&1 || true
PYTHONUNBUFFERED=1 python3 bench/gpu_check.py
