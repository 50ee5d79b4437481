#!/usr/bin/env bash
# Kiln vs ONNX Runtime on full-size torchvision ResNet-50 and MobileNet-v2
# exported by PyTorch (random weights), in one command:
#
#   bash bench/onnx/run.sh [flags of bench/peers/main.go]
#
# writes both models with bench/onnx/export_torch.py --full (PyTorch and
# torchvision from Debian: python3-torch, python3-torchvision) into
# bench/peers/work/onnx (ignored by git; skipped when already there), then
# runs the peers harness on them (bench/peers/run.sh): kiln import of each
# ONNX file, agreement of ORT (running PyTorch's file) with Kiln's
# interpreter and compiled code at batch 1, then alternating timings at
# batch 1 and 8 with 2 threads, at 3x224x224.
# Examples: run.sh -batches 1 -rounds 3        (a quicker run)
#           run.sh -bench=false                (agreement only)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
work=bench/peers/work/onnx
mkdir -p "$work"
# Debian's python3-torch lives in /usr/bin/python3's path; a python3 earlier
# on PATH (pyenv, a venv) may not see it. $PYTHON overrides.
PYTHON=${PYTHON:-$([ -x /usr/bin/python3 ] && echo /usr/bin/python3 || echo python3)}
if [ ! -f "$work/resnet50.onnx" ] || [ ! -f "$work/mobilenet_v2.onnx" ]; then
  "$PYTHON" -c 'import torch, torchvision' 2>/dev/null ||
    { echo "run.sh: PyTorch and torchvision not found (apt-get install python3-torch python3-torchvision)" >&2; exit 1; }
  "$PYTHON" bench/onnx/export_torch.py --full --out "$work"
fi
exec bash bench/peers/run.sh -nets "$work/resnet50.onnx,$work/mobilenet_v2.onnx" -size 224 -batches 1,8 -threads 2 "$@"
