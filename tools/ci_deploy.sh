#!/usr/bin/env bash
# CI's deploy checks (called by .ci/run after the x86 tests; runnable alone from the repo root):
#
#   1. cross build for aarch64-unknown-linux-gnu (the Jetson target), without and with
#      --features cuda (.cargo/config.toml: linker, qemu runner, bindgen sysroot)
#   2. arm64 tests under qemu-user: the unit tests (--lib) and the test binaries named in
#      QEMU_TEST_BINARIES below
#   3. the real model on the arm64 binary under qemu vs the x86 binary: `ailurus segment` at
#      224 px on a few photos, masks >= 99.9% equal pixels
#   4. the Debian packages for amd64 and arm64 (tools/package.sh), listed with dpkg -c
#   5. the amd64 packages under a real systemd in a booted container (tools/systemd_test.sh)
#
# Every step prints how long it took. Needs root (apt, debootstrap, nspawn); everything is
# installed by `tools/setup.sh --deploy`. Under qemu one 448 px frame takes 100-130 s, hence
# 224 px and two photos.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

# The integration-test binaries run under qemu (cargo test --test NAME), besides --lib. The
# tests are being regrouped into a few binaries by area: when a name changes, change it here
# only. The tiny committed ONNX ViTs (tests/data) and the reducer's slow reference tests.
QEMU_TEST_BINARIES="reduce"
# The photos for the x86-vs-arm64 real-model comparison, and the setting they run at.
COMPARE_PHOTOS=".cache/photos/astronaut.png .cache/photos/coffee.png"
COMPARE_ARGS="--size 224 --strategy ailurus --m 128"
MIN_EQUAL=0.999

target=aarch64-unknown-linux-gnu
nice=(nice -n 10)
durations=()
step() { # step NAME CMD...: run CMD, print and record how long it took
  local name=$1; shift; local t0; t0=$(date +%s)
  echo "== $name"
  "$@"
  local dt=$(( $(date +%s) - t0 ))
  echo "-- $name: ${dt}s"; durations+=("$(printf '%5ds  %s' "$dt" "$name")")
}
summary() { echo "== deploy step durations"; printf '%s\n' "${durations[@]}"; }
trap summary EXIT

qemu_tests() {
  local t args=(--lib)
  for t in $QEMU_TEST_BINARIES; do args+=(--test "$t"); done
  # The real-model integration tests are covered by the binary-level comparison below.
  AILURUS_SKIP_REAL=1 "${nice[@]}" cargo test --release --locked --target "$target" "${args[@]}"
}

# compare_real_model LABEL MIN_EQUAL [CONFIG]: segment the photos on x86 and on arm64 (qemu) with
# the same flags (and config), and require MIN_EQUAL of the mask pixels to agree.
compare_real_model() {
  local label=$1 min_equal=$2 photos; local out=target/deploy-compare/$label; read -ra photos <<<"$COMPARE_PHOTOS"
  local cfg=(); [ -n "${3:-}" ] && cfg=(-c "$3")
  rm -rf "$out" && mkdir -p "$out"
  # shellcheck disable=SC2086 # COMPARE_ARGS is a list of flags
  target/release/ailurus segment "${cfg[@]}" $COMPARE_ARGS "${photos[@]}" --out "$out/x86_64"
  local t0; t0=$(date +%s)
  # shellcheck disable=SC2086
  qemu-aarch64-static -L / "target/$target/release/ailurus" \
    segment "${cfg[@]}" $COMPARE_ARGS "${photos[@]}" --out "$out/aarch64"
  echo "arm64 under qemu: $(( $(date +%s) - t0 ))s for ${#photos[@]} photos (model load included)"
  readelf -h "target/$target/release/ailurus" | grep -E "Class|Machine"
  .cache/venv/bin/python - "$out" "$min_equal" "${photos[@]}" <<'EOF'
import sys, pathlib
import numpy as np
from PIL import Image
out, min_equal, photos = pathlib.Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
bad = 0
for p in photos:
    name = pathlib.Path(p).stem + ".mask.png"
    a = np.asarray(Image.open(out / "x86_64" / name))
    b = np.asarray(Image.open(out / "aarch64" / name))
    equal = float((a == b).mean()) if a.shape == b.shape else 0.0
    ok = equal >= min_equal
    bad += not ok
    print(f"{name}: {a.shape} x86_64 vs {b.shape} aarch64: {equal:.5%} equal pixels "
          f"({'ok' if ok else 'BELOW'} >= {min_equal:.1%}), foreground {a.mean()/255:.3f} vs {b.mean()/255:.3f}")
sys.exit(1 if bad else 0)
EOF
}


# The f16 linear layers (`[model] precision = "f16"`) on arm64's NEON FEAT_FP16 kernel (qemu's
# `max` CPU has it) against x86: bit-identical linear layers where x86 has AVX512-FP16, so the
# same bar as f32; without it x86 falls back to f32 (one log line), and the bar is what f16 vs
# f32 measured on 8 photos (mask IoU 0.999): 99.5% equal pixels.
compare_f16() {
  local cfg=target/deploy-compare/f16.toml min=0.995
  mkdir -p target/deploy-compare && printf '[model]\nprecision = "f16"\n' > "$cfg"
  if grep -qw avx512_fp16 /proc/cpuinfo; then min=$MIN_EQUAL; else echo "x86 has no AVX512-FP16: arm64 f16 vs x86 f32"; fi
  # One photo: qemu emulates f16 arithmetic in software (77 s for it, against 20 s in f32).
  COMPARE_PHOTOS=${COMPARE_PHOTOS%% *} compare_real_model f16 "$min" "$cfg"
}

list_packages() {
  local d
  for d in dist/*.deb; do
    echo "-- $d ($(du -h "$d" | cut -f1))"
    dpkg-deb -f "$d" Package Version Architecture Depends Recommends | sed 's/^/   /'
    dpkg -c "$d"
  done
}

step "set-up (tools/setup.sh --deploy)" tools/setup.sh --deploy
step "x86 release build (the reference binary, and the amd64 package's)" "${nice[@]}" cargo build --release --locked
step "cross build $target" "${nice[@]}" cargo build --release --locked --target "$target"
step "arm64 tests under qemu (--lib $QEMU_TEST_BINARIES)" qemu_tests
step "NEON: the instruction mix of the hot GEMM loop in the arm64 binary (tools/neon_mix.sh)" tools/neon_mix.sh
step "NEON: the instruction mix of the f16 linear tile (fmla .8h)" \
  tools/neon_mix.sh "target/$target/release/ailurus" ailurus::model::f16::neon::tile 8h
step "cross build $target --features cuda (the arm64 package's binary)" \
  "${nice[@]}" cargo build --release --locked --target "$target" --features cuda
step "real model: arm64 (qemu) vs x86 masks" compare_real_model f32 "$MIN_EQUAL"
step "real model in f16: arm64 NEON FEAT_FP16 (qemu) vs x86 masks" compare_f16
step "packages (tools/package.sh: amd64, arm64, model)" tools/package.sh
step "package contents" list_packages
step "systemd: the amd64 packages in a booted container (tools/systemd_test.sh)" tools/systemd_test.sh
