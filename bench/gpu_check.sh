#!/usr/bin/env bash
# Run on a machine with an NVIDIA GPU (the device tool): exercises every GPU path the image
# allows and prints one line per measurement; with $OUT set, also writes $OUT/gpu_check.json.
# Needs torch/torchvision/onnx/onnxruntime there. kdpipe's other dependencies, when the image
# lacks them, travel as wheels in .whl/ (see docs/benchmarks.md); kdpipe itself goes on the path.
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi -L || true
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import torch, torchvision, onnxruntime, pydantic, typer; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'onnxruntime', onnxruntime.__version__, 'pydantic', pydantic.__version__, 'typer', typer.__version__)"
# exec: a `timeout` around this script then stops the measurement itself, not just the shell
PYTHONUNBUFFERED=1 exec python3 bench/gpu_check.py "$@"
