#!/usr/bin/env bash
# tools/gpu-check.sh: the GPU check of the CUDA path (issue 8). Needs an NVIDIA GPU and driver.
#
#   tools/gpu-check.sh                 build with --features cuda, run the GPU checks, print one table
#   tools/gpu-check.sh --bundle DIR [--with-cli]
#                                      (no GPU needed) build the GPU test binaries (and with
#                                      --with-cli the ailurus binary) here, strip and xz them into
#                                      DIR with NVRTC 12.6, for a GPU machine without Rust or network
#                                      (e.g. the `device` tool: carry DIR)
#   tools/gpu-check.sh --prebuilt DIR  on the GPU machine: run the binaries from --bundle
#
# Runs, in order, from the test binaries cuda_probe and cuda (tests/cuda/), with
# AILURUS_REQUIRE_GPU=1: a test that cannot reach the GPU fails instead of printing SKIP. A step
# SKIPs only when the budget is spent (or the model file is missing, for the real-model steps):
#   cuda_probe            driver / NVRTC / tract-cuda probe and fallback paths
#   cuda equivalence::    CPU reference vs GPU: identical centres and assignments, N = 256..4096
#   cuda model_device::   [model] device through the Segmenter on the tiny model: tract-cuda vs CPU
#   cuda bench::          reducer GPU vs CPU at N = 1024, 2304, 4096
#   cuda model::          full model through the Segmenter on tract-cuda ([model] device = "cuda",
#                         [reduce] device = "cuda") at 448 and 896, with and without reduction
#   ailurus eval      the CLI with a config setting both devices to "cuda", at 448 (M = 512) and
#                     896 (M = 2048), on up to 5 photos: reduced vs unreduced FPS and mask IoU
# The real-model steps need .cache/models/vit_s_focus.onnx (97 MB: too big to carry to `device`).
#
# Budget: GPU_CHECK_BUDGET seconds in all (default 470, under the issue's 8 minutes), build
# included. Every step runs under `timeout` with what is left of it; a step that would start with
# under 20 s left is skipped (SKIP ... budget) and the table says so.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
# The test binaries, and the steps: "binary[ filter]" (a libtest name filter within the binary).
TESTS=(cuda_probe cuda)
STEPS=("cuda_probe" "cuda equivalence::" "cuda model_device::" "cuda bench::" "cuda model::")
export AILURUS_REQUIRE_GPU=1
BUDGET=${GPU_CHECK_BUDGET:-470}
start=$(date +%s)
elapsed() { echo $(($(date +%s) - start)); }
left() { echo $((BUDGET - $(elapsed))); }

# Build the test binaries and the ailurus binary; print the test executables' JSON lines.
build_json() {
    cargo build --release --features cuda --bin ailurus >&2
    cargo test --release --features cuda --no-run --message-format=json "${TESTS[@]/#/--test=}"
}

exe_of() { # JSON, test name -> its executable
    printf '%s\n' "$1" | grep -o "\"executable\":\"[^\"]*/deps/$2-[0-9a-f]*\"" | tail -1 | cut -d'"' -f4
}

bundle() { # DIR [--with-cli]
    local dir=$1 cli=${2:-} json t exe
    mkdir -p "$dir/lib"
    json=$(build_json)
    for t in "${TESTS[@]}"; do
        exe=$(exe_of "$json" "$t")
        [ -n "$exe" ] || { echo "gpu-check: no test binary for $t" >&2; exit 1; }
        strip -o "$dir/$t" "$exe" && xz -T0 -f "$dir/$t"
    done
    # The ailurus binary only with --with-cli: `ailurus eval` needs the 97 MB model, which the
    # `device` tool cannot carry, and the bundle must stay under its 64 MiB.
    if [ "$cli" = --with-cli ]; then
        strip -o "$dir/ailurus" "$CARGO_TARGET_DIR/release/ailurus" && xz -T0 -f "$dir/ailurus"
    fi
    local nv=.cache/cuda-tools/nvidia/cuda_nvrtc/lib f
    if [ -f "$nv/libnvrtc.so.12" ]; then
        for f in "$nv"/libnvrtc*.so*; do xz -T0 -c "$f" >"$dir/lib/$(basename "$f").xz"; done
    fi
    du -sh "$dir"
    echo "gpu-check: bundle ready in $dir; on the GPU machine: tools/gpu-check.sh --prebuilt $dir"
}

# Make the CUDA libraries the binaries dlopen findable: the bundle's NVRTC 12.6, and unversioned
# links to any CUDA 12/13 libraries installed as Python wheels (cudarc tries libX.so first).
setup_libs() {
    local dir=${1:-} links=/tmp/ailurus-cudalibs f sp lib found
    mkdir -p "$links"
    local paths=()
    if [ -n "$dir" ] && ls "$dir"/lib/*.xz >/dev/null 2>&1; then
        for f in "$dir"/lib/*.xz; do xz -dc "$f" >"$links/$(basename "$f" .xz)"; done
        ln -sf libnvrtc.so.12 "$links/libnvrtc.so"
    fi
    for sp in $(python3 -c 'import site; print(" ".join(site.getsitepackages()))' 2>/dev/null || true); do
        [ -d "$sp/nvidia" ] || continue
        for lib in nvrtc cudart cublas cublasLt cudnn; do
            [ -e "$links/lib$lib.so" ] && continue
            found=$(find "$sp/nvidia" -name "lib$lib.so*" -type f 2>/dev/null | sort | tail -1)
            if [ -n "$found" ]; then
                ln -sf "$found" "$links/lib$lib.so"
                paths+=("$(dirname "$found")")
            fi
        done
    done
    local joined=""
    [ "${#paths[@]}" -eq 0 ] || joined=$(printf '%s:' "${paths[@]}")
    export LD_LIBRARY_PATH="$links:${joined}${LD_LIBRARY_PATH:-}"
}

log=$(mktemp)
status=0
skip() { echo "SKIP $*" | tee -a "$log"; }

# run_capped NAME CAP CMD...: CMD under `timeout` with min(CAP, what is left of the budget).
run_capped() {
    local name=$1 cap=$2 rc=0 t
    shift 2
    t=$(left)
    if [ "$t" -lt 20 ]; then
        skip "$name: budget of ${BUDGET} s spent"
        return 0
    fi
    [ "$t" -gt "$cap" ] && t=$cap
    echo "== $name ($(elapsed) s, cap $t s)"
    timeout --kill-after=5 "$t" "$@" 2>&1 | tee -a "$log" || rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "gpu-check: $name TIMED OUT after $t s" | tee -a "$log"
        status=1
    elif [ "$rc" -ne 0 ]; then
        echo "gpu-check: $name FAILED (exit $rc)" | tee -a "$log"
        status=1
    fi
}

# ailurus eval on the GPU at SIZE with M clusters: one TABLE|cli row from its summary line.
eval_row() {
    local size=$1 m=$2 out line
    out=$(mktemp)
    run_capped "ailurus eval ${size}px M=$m" 120 \
        env RUST_LOG=warn "$AILURUS" eval --config "$gpu_cfg" --size "$size" --m "$m" "$photos" >"$out"
    cat "$out"
    line=$(grep '^summary:' "$out" || true)
    rm -f "$out"
    [ -n "$line" ] || return 0
    # summary: K image(s) at Spx, strategy S M=m (of n): A FPS vs B FPS unreduced (Cx); agreement
    # with unreduced: mask IoU D, ...
    echo "$line" | sed -E 's/.* at ([0-9]+)px, strategy [a-z]+ M=([0-9]+) \(of ([0-9]+)\): ([0-9.]+) FPS vs ([0-9.]+) FPS unreduced \(([0-9.]+)x\); agreement with unreduced: mask IoU ([0-9.]+).*/TABLE|cli|\1|\3|\2|\4|\5|\6|\7/' >>"$log"
}

case "${1:-}" in
--bundle)
    bundle "${2:?--bundle DIR}" "${3:-}"
    exit 0
    ;;
--prebuilt)
    pre=${2:?--prebuilt DIR}
    ;;
"") pre= ;;
*)
    echo "usage: tools/gpu-check.sh [--bundle DIR | --prebuilt DIR]" >&2
    exit 2
    ;;
esac

nvidia-smi -L 2>/dev/null || echo "gpu-check: nvidia-smi not found (continuing: the tests probe the driver themselves)"
setup_libs "$pre"
bin=/tmp/ailurus-gpu-bin
mkdir -p "$bin"
declare -A EXE
if [ -z "$pre" ]; then
    echo "gpu-check: building with --features cuda (budget ${BUDGET} s in all) ..."
    if ! json=$(timeout "$(left)" bash -c "$(declare -p TESTS); $(declare -f build_json); build_json"); then
        echo "gpu-check: the build FAILED or ran past the budget after $(elapsed) s" >&2
        exit 1
    fi
    for t in "${TESTS[@]}"; do EXE[$t]=$(exe_of "$json" "$t"); done
    # Other checkouts sharing the target dir may overwrite release/ailurus: run a copy (model_device's
    # CLI test too, through AILURUS_BIN).
    cp "$CARGO_TARGET_DIR/release/ailurus" "$bin/ailurus"
    export AILURUS_BIN=$bin/ailurus
    echo "gpu-check: build done at $(elapsed) s"
else
    for t in "${TESTS[@]}"; do
        if [ -f "$pre/$t.xz" ]; then
            xz -dc "$pre/$t.xz" >"$bin/$t" && chmod +x "$bin/$t"
            EXE[$t]=$bin/$t
        fi
    done
    if [ -f "$pre/ailurus.xz" ]; then
        xz -dc "$pre/ailurus.xz" >"$bin/ailurus" && chmod +x "$bin/ailurus"
    else
        rm -f "$bin/ailurus"
    fi
    # The tests find tools/, models/, tests/data and .cache/ through AILURUS_ROOT (this checkout),
    # and model_device's CLI test the binary through AILURUS_BIN.
    export AILURUS_ROOT=$PWD AILURUS_BIN=$bin/ailurus
fi
AILURUS=$bin/ailurus

for step in "${STEPS[@]}"; do
    read -r t filter <<<"$step"
    if [ -z "${EXE[$t]:-}" ]; then
        skip "$step: no test binary (bundle built before it existed?)"
        status=1
        continue
    fi
    run_capped "$step" 240 "${EXE[$t]}" ${filter:+"$filter"} --nocapture --test-threads=1
done

# The CLI, as users run it: both devices on "cuda", on a few real photos.
photos=$(mktemp -d)
gpu_cfg=$photos.toml
cat >"$gpu_cfg" <<EOF
[model]
manifest = "$PWD/models/vit_s_focus.toml"
device = "cuda"
[reduce]
strategy = "ailurus"
device = "cuda"
EOF
shopt -s nullglob
picked=(.cache/photos/*.png .cache/photos/*.jpg)
shopt -u nullglob
for p in "${picked[@]:0:5}"; do ln -s "$PWD/$p" "$photos/"; done
if [ ! -x "$AILURUS" ]; then
    skip "ailurus eval: no ailurus binary"
elif [ ! -f .cache/models/vit_s_focus.onnx ]; then
    skip "ailurus eval: .cache/models/vit_s_focus.onnx missing (tools/fetch_assets.sh)"
elif [ -z "$(ls -A "$photos")" ]; then
    skip "ailurus eval: no photos in .cache/photos (tools/fetch_assets.sh)"
else
    eval_row 448 512
    eval_row 896 2048
fi
rm -rf "$photos" "$gpu_cfg"

echo
echo "== ailurus gpu-check: one table ($(elapsed) s of ${BUDGET} s)"
rows() { grep -o "TABLE|$1|.*" "$log" || true; } # no rows is not an error
{
    echo "what|N|M|ms|CPU_ms|reduce_ms|reduce_share|speed-up|IoU_or_match"
    rows reduce | awk -F'|' '{print "reducer GPU (vs " $9 ")|" $3 "|" $4 "|" $5 "|" $6 "|-|-|" $7 "|" $8}'
    rows model | awk -F'|' '{print "model " $3 "px (Segmenter, GPU)|" $4 "|" $5 "|" $6 "|-|" $7 "|" $8 "|" $10 "|" $9}'
    rows cli | awk -F'|' '{printf "ailurus eval %spx (CLI, GPU)|%s|%s|%.1f|-|-|-|%sx|%s\n", $3, $4, $5, 1000/$6, $8, $9}'
} | column -t -s'|'
grep -o 'SKIP .*' "$log" | sort -u || true
grep -o 'gpu-check: .* \(FAILED\|TIMED OUT\).*' "$log" || true
rm -f "$log"
exit $status
