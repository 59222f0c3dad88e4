#!/usr/bin/env bash
# The tables of a stop's note in one go (about 17 minutes on 2 cores): the CPU, the peer bench
# against ONNX Runtime at 448 px (three rounds, each row the median round's, with the range of
# its ratio) and 224 px (f32, bf16, f16), temporal reuse on the three clips at
# 448 px, and peak RSS of the embedded default with 1 and 2 lanes. Run on a quiet machine after
# `tools/setup.sh && cargo build --release`; every table is against its own baseline in the same
# run. CSVs go to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/release/ailurus
lscpu | grep -E "Model name|Flags" | cut -c1-300
echo "== peer 448 f32,bf16"
$B bench --strategies ailurus --m 768 --cuts 4 --extra-cuts none --combo none --lowres none --peer-rounds 3 \
  --peer ort --max-photos 8 --precisions f32,bf16,f16 2>&1 | grep -v "^\[" | tail -23
echo "== peer 224 f32,bf16"
$B bench --size 224 --strategies ailurus --m 192 --cuts 3 --extra-cuts none --combo none \
  --lowres none --peer ort --max-photos 8 --precisions f32,bf16,f16 2>&1 | grep -v "^\[" | tail -23
for clip in carphone_pristine bikes bigbuckbunny; do
  echo "== video $clip"
  $B bench --video ".cache/video/$clip.mp4" --size 448 --max-frames 40 --thresholds 0.3,0.2 \
    --reduced-m 768 --carry-m 768 --csv "out/video-$clip.csv" 2>&1 | grep -v "^\[" | tail -10
done
for l in 1 2; do
  cfg=$(mktemp --suffix .toml)
  printf '[pipeline]\nlanes = %s\n' "$l" > "$cfg"
  echo "== peak RSS, embedded default, lanes = $l"
  /usr/bin/time -v $B run -c "$cfg" --frames 30 2>&1 | grep -E "Maximum resident|final" | cut -c1-220
  rm -f "$cfg"
done
