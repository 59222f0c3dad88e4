#!/usr/bin/env bash
# tools/gpu-check.sh: the GPU check of the CUDA path (issue 8). Needs an NVIDIA GPU and driver.
#
#   tools/gpu-check.sh                 build with --features cuda, run the GPU tests, print one table
#   tools/gpu-check.sh --bundle DIR    (no GPU needed) build the GPU test binaries here, strip and
#                                      xz them into DIR with NVRTC 12.6, for a GPU machine without
#                                      Rust or network (e.g. the `device` tool: carry DIR)
#   tools/gpu-check.sh --prebuilt DIR  on the GPU machine: run the binaries from --bundle
#
# Runs, in order (each SKIPs with a reason when its needs are missing):
#   cuda_probe        driver / NVRTC / tract-cuda probe and fallback paths
#   cuda_equivalence  CPU reference vs GPU: identical centres and assignments, N = 256..4096
#   cuda_bench        reducer GPU vs CPU at N = 1024, 2304, 4096
#   cuda_model        full model on tract-cuda at 448 and 896, with and without reduction
#                     (needs .cache/models/vit_s_focus.onnx: 97 MB, too big to carry to `device`)
# Budget: under 8 minutes including the build (each test is capped by `timeout`).
set -uo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
TESTS=(cuda_probe cuda_equivalence cuda_bench cuda_model)
start=$(date +%s)
elapsed() { echo $(($(date +%s) - start)); }

bundle() {
    local dir=$1
    mkdir -p "$dir/lib"
    local json
    json=$(cargo test --release --features cuda --no-run --message-format=json "${TESTS[@]/#/--test=}") || exit 1
    for t in "${TESTS[@]}"; do
        local exe
        exe=$(printf '%s\n' "$json" | grep -o "\"executable\":\"[^\"]*/deps/$t-[0-9a-f]*\"" | tail -1 | cut -d'"' -f4)
        [ -n "$exe" ] || { echo "gpu-check: no test binary for $t" >&2; exit 1; }
        strip -o "$dir/$t" "$exe" && xz -T0 -f "$dir/$t"
    done
    local nv=.cache/cuda-tools/nvidia/cuda_nvrtc/lib
    if [ -f "$nv/libnvrtc.so.12" ]; then
        for f in "$nv"/libnvrtc*.so*; do xz -T0 -c "$f" >"$dir/lib/$(basename "$f").xz"; done
    fi
    du -sh "$dir"
    echo "gpu-check: bundle ready in $dir; on the GPU machine: tools/gpu-check.sh --prebuilt $dir"
}

# Make the CUDA libraries the binaries dlopen findable: the bundle's NVRTC 12.6, and unversioned
# links to any CUDA 12/13 libraries installed as Python wheels (cudarc tries libX.so first).
setup_libs() {
    local dir=${1:-} links=/tmp/ailurus-cudalibs
    mkdir -p "$links"
    local paths=()
    if [ -n "$dir" ] && ls "$dir"/lib/*.xz >/dev/null 2>&1; then
        for f in "$dir"/lib/*.xz; do xz -dc "$f" >"$links/$(basename "$f" .xz)"; done
        ln -sf libnvrtc.so.12 "$links/libnvrtc.so"
    fi
    local sp
    for sp in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null); do
        [ -d "$sp/nvidia" ] || continue
        local lib
        for lib in nvrtc cudart cublas cublasLt cudnn; do
            [ -e "$links/lib$lib.so" ] && continue
            local found
            found=$(find "$sp/nvidia" -name "lib$lib.so*" -type f 2>/dev/null | sort | tail -1)
            if [ -n "$found" ]; then
                ln -sf "$found" "$links/lib$lib.so"
                paths+=("$(dirname "$found")")
            fi
        done
    done
    local joined
    joined=$(printf '%s:' "${paths[@]}")
    export LD_LIBRARY_PATH="$links:${joined}${LD_LIBRARY_PATH:-}"
}

case "${1:-}" in
--bundle)
    bundle "${2:?--bundle DIR}"
    exit 0
    ;;
--prebuilt)
    pre=${2:?--prebuilt DIR}
    ;;
*) pre= ;;
esac

nvidia-smi -L 2>/dev/null || echo "gpu-check: nvidia-smi not found (continuing: the tests probe the driver themselves)"
setup_libs "$pre"
log=$(mktemp)
status=0
if [ -z "$pre" ]; then
    echo "gpu-check: building with --features cuda ..."
    cargo test --release --features cuda --no-run "${TESTS[@]/#/--test=}" 2>&1 | tail -3
    echo "gpu-check: build done at $(elapsed) s"
else
    bin=/tmp/ailurus-gpu-bin
    mkdir -p "$bin"
    for t in "${TESTS[@]}"; do xz -dc "$pre/$t.xz" >"$bin/$t" && chmod +x "$bin/$t"; done
    # The tests find tools/, models/ and .cache/ through AILURUS_ROOT (this checkout).
    export AILURUS_ROOT=$PWD
fi
for t in "${TESTS[@]}"; do
    echo "== $t ($(elapsed) s)"
    if [ -z "$pre" ]; then
        timeout 300 cargo test --release --features cuda --test "$t" -- --nocapture --test-threads=1 2>&1 | tee -a "$log"
    else
        timeout 300 "$bin/$t" --nocapture --test-threads=1 2>&1 | tee -a "$log"
    fi
    rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "gpu-check: $t FAILED (exit $rc)"; status=1; }
done

echo
echo "== ailurus gpu-check: one table ($(elapsed) s in all)"
{
    echo "what|N|M|GPU_ms|CPU_ms_or_reduce_ms|reduce_share|speed-up|IoU_or_match"
    grep -o 'TABLE|reduce|.*' "$log" | awk -F'|' '{print "reducer (" $9 ")|" $3 "|" $4 "|" $5 "|" $6 "|-|" $7 "|" $8}'
    grep -o 'TABLE|model|.*' "$log" | awk -F'|' '{print "model " $3 "px|" $4 "|" $5 "|" $6 "|" $7 "|" $8 "|" $10 "|" $9}'
} | column -t -s'|'
grep -o 'SKIP .*' "$log" | sort -u
exit $status
