#!/usr/bin/env bash
# tools/check_kernels.sh: the GPU-less CI check of kernels/*.cu (called from .ci/run).
#
# For every kernel file and every arch in $ARCHS (default: 87 = Jetson Orin, 90 = Hopper):
#   1. NVRTC (PyPI wheel nvidia-cuda-nvrtc-cu12, through tools/nvrtc_compile.py) -> PTX
#      for compute_XY, and -> CUBIN for sm_XY (the exact path src/reduce/cuda.rs takes);
#   2. ptxas -v (wheel nvidia-cuda-nvcc-cu12) assembles the PTX for sm_XY;
#   3. prints one table: registers, shared memory, stack, spill stores/loads per kernel.
# FAILS on: a compile error, any spill, or an f32 FMA in the PTX (the arithmetic contract in
# kernels/ailurus.cu forbids contraction: CPU and GPU results must be bit-identical).
# The wheels (12.6, as JetPack 6) go to $AILURUS_CUDA_TOOLS (default .cache/cuda-tools) once.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=${AILURUS_CUDA_TOOLS:-.cache/cuda-tools}
PY=${PYTHON:-python3}
ARCHS=${ARCHS:-"87 90"}
NVRTC=$TOOLS/nvidia/cuda_nvrtc/lib/libnvrtc.so.12
PTXAS=$TOOLS/nvidia/cuda_nvcc/bin/ptxas

if [ ! -f "$NVRTC" ] || [ ! -x "$PTXAS" ]; then
    echo "check_kernels: installing the NVRTC and ptxas 12.6 wheels into $TOOLS"
    "$PY" -m pip install --quiet --upgrade --target "$TOOLS" \
        'nvidia-cuda-nvrtc-cu12==12.6.*' 'nvidia-cuda-nvcc-cu12==12.6.*'
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail=0
table="$work/table"
printf '%-14s %-6s %5s %6s %6s %9s %9s\n' kernel arch regs smem stack spill_st spill_ld >"$table"

shopt -s nullglob
files=(kernels/*.cu)
if [ ${#files[@]} -eq 0 ]; then
    echo "check_kernels: no kernels/*.cu found" >&2
    exit 1
fi

for src in "${files[@]}"; do
    base=$(basename "$src" .cu)
    for arch in $ARCHS; do
        ptx="$work/$base.$arch.ptx"
        if ! "$PY" tools/nvrtc_compile.py "$NVRTC" "$src" "compute_$arch" "$ptx"; then
            echo "FAIL $src: NVRTC (compute_$arch)" >&2
            fail=1
            continue
        fi
        if ! "$PY" tools/nvrtc_compile.py "$NVRTC" "$src" "sm_$arch" "$work/$base.$arch.nvrtc.cubin"; then
            echo "FAIL $src: NVRTC cubin (sm_$arch)" >&2
            fail=1
        fi
        if grep -q 'fma\.rn\.f32' "$ptx"; then
            echo "FAIL $src (sm_$arch): f32 FMA in the PTX (contraction breaks CPU/GPU bit-identity)" >&2
            fail=1
        fi
        if ! "$PTXAS" -v -arch="sm_$arch" "$ptx" -o "$work/$base.$arch.cubin" 2>"$work/ptxas.log"; then
            cat "$work/ptxas.log" >&2
            echo "FAIL $src: ptxas (sm_$arch)" >&2
            fail=1
            continue
        fi
        # ptxas -v prints, per entry: "Compiling entry function 'K' for 'sm_XY'", then
        # "N bytes stack frame, S bytes spill stores, L bytes spill loads", then
        # "Used R registers, ..., B bytes smem, ...".
        awk -v arch="sm_$arch" '
            /Compiling entry function/ { match($0, /\x27[^\x27]+\x27/); k = substr($0, RSTART + 1, RLENGTH - 2); smem = 0 }
            /bytes stack frame/ { stack = $1; st = $5; ld = $9 }
            /Used [0-9]+ registers/ {
                for (f = 1; f <= NF; f++) {
                    if ($f == "registers,") regs = $(f - 1)
                    if ($f ~ /^smem/) smem = $(f - 2)
                }
                printf "%-14s %-6s %5s %6s %6s %9s %9s\n", k, arch, regs, smem, stack, st, ld
            }' "$work/ptxas.log" >>"$table"
    done
done

cat "$table"
spills=$(awk 'NR > 1 && ($6 != 0 || $7 != 0)' "$table")
if [ -n "$spills" ]; then
    echo "FAIL: register spills:" >&2
    echo "$spills" >&2
    fail=1
fi
if [ "$fail" -ne 0 ]; then
    echo "check_kernels: FAILED" >&2
    exit 1
fi
echo "check_kernels: OK (${#files[@]} file(s), archs: $ARCHS; no spills, no f32 FMA)"
