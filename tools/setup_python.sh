#!/usr/bin/env bash
# Create (or bring up to date) the Python venv for the tools at .cache/venv, with the pinned
# packages of tools/requirements.txt. Idempotent: when the venv already holds exactly these
# requirements (a stamp of the file's sha256) and they import, it does nothing.
#
#   tools/setup_python.sh            # then: .cache/venv/bin/python tools/ort_bench.py ...
#   PYTHON=python3.11 AILURUS_VENV=/some/venv tools/setup_python.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${AILURUS_VENV:-$root/.cache/venv}"
req="$root/tools/requirements.txt"
py="${PYTHON:-python3}"
stamp="$venv/.ailurus-requirements.sha256"

"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' || {
  echo "setup_python: $py is $("$py" --version 2>&1); Python >= 3.11 is needed (tomllib)" >&2; exit 1; }

want="$(sha256sum "$req" | cut -d' ' -f1)"
imports='import numpy, onnx, onnxruntime, PIL, paho.mqtt, jsonschema'
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] \
   && "$venv/bin/python" -c "$imports" 2>/dev/null; then
  echo "setup_python: $venv is up to date"
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "setup_python: creating $venv"
  "$py" -m venv "$venv"
fi
echo "setup_python: installing tools/requirements.txt into $venv"
"$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req"
"$venv/bin/python" -c "$imports"
echo "$want" > "$stamp"
"$venv/bin/python" -c 'import numpy, onnx, onnxruntime, PIL; print(f"setup_python: ok (numpy {numpy.__version__}, onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}, pillow {PIL.__version__})")'
