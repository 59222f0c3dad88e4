#!/usr/bin/env bash
# Optional: the PyTorch environment for tools/finetune (not part of tools/setup.sh).
# Creates .cache/venv-ft with the pinned requirements. torch from PyPI is a ~5 GB install
# (its CUDA libraries come along even though training here runs on the CPU).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${AILURUS_FT_VENV:-$root/.cache/venv-ft}"
py="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
"$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$root/tools/finetune/requirements.txt"
"$venv/bin/python" -c 'import torch, onnx, onnxruntime, safetensors; print("venv-ft: torch", torch.__version__)'
