#!/usr/bin/env bash
# Extra real training photos for tools/finetune, from packages tools/fetch_assets.sh already
# downloads (scikit-image 0.26.0 wheel, labelme 7.9.1 sdist), plus three validation photos from
# the scikit-learn 1.9.1 and matplotlib 3.10.0 wheels, into .cache/ft-photos.
# The split between training and evaluation photos is tools/finetune/split.txt.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cache="${AILURUS_CACHE:-$root/.cache}"
py="${PYTHON:-python3}"
out="$cache/ft-photos"; mkdir -p "$out" "$cache/pip"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
whl=$(ls "$cache"/pip/scikit_image-0.26.0-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$whl" ]; then
  "$py" -m pip download -q --no-deps -d "$cache/pip" --only-binary=:all: --platform manylinux_2_28_x86_64 \
    --python-version 3.11 --implementation cp scikit-image==0.26.0
  whl=$(ls "$cache"/pip/scikit_image-0.26.0-*.whl | head -n1)
fi
for p in motorcycle_right.png gravel.png hubble_deep_field.jpg ihc.png moon.png clock_motion.png text.png cell.png page.png; do
  unzip -o -q "$whl" "skimage/data/$p" -d "$tmp" && mv "$tmp/skimage/data/$p" "$out/skimage_$p"
done
sd="$cache/pip/labelme-7.9.1.tar.gz"
[ -f "$sd" ] || "$py" -m pip download -q --no-deps --no-binary :all: --ignore-requires-python -d "$cache/pip" labelme==7.9.1
e=labelme-7.9.1/examples
tar xzf "$sd" -C "$tmp" "$e/classification/data_annotated/0001.jpg" "$e/classification/data_annotated/0002.jpg" \
  "$e/tutorial/apc2016_obj3.jpg" "$e/video_annotation/data_annotated/00000100.jpg" \
  "$e/video_annotation/data_annotated/00000103.jpg"
cp "$tmp/$e/classification/data_annotated/0001.jpg" "$out/labelme_cls_0001.jpg"
cp "$tmp/$e/classification/data_annotated/0002.jpg" "$out/labelme_cls_0002.jpg"
cp "$tmp/$e/tutorial/apc2016_obj3.jpg" "$out/labelme_apc2016_obj3.jpg"
cp "$tmp/$e/video_annotation/data_annotated/00000100.jpg" "$out/labelme_video_00000100.jpg"
cp "$tmp/$e/video_annotation/data_annotated/00000103.jpg" "$out/labelme_video_00000103.jpg"
# Validation photos (checkpoint selection in train.py; never trained on, never in the eval
# set): scikit-learn's two sample photos and matplotlib's Grace Hopper portrait.
for spec in "scikit-learn==1.9.1|manylinux_2_28_x86_64|scikit_learn-1.9.1-*.whl" \
            "matplotlib==3.10.0|manylinux2014_x86_64|matplotlib-3.10.0-*.whl"; do
  IFS='|' read -r req plat glob <<< "$spec"
  w=$(ls "$cache"/pip/$glob 2>/dev/null | head -n1 || true)
  if [ -z "$w" ]; then
    "$py" -m pip download -q --no-deps -d "$cache/pip" --only-binary=:all: --platform "$plat" \
      --python-version 3.11 --implementation cp "$req"
    w=$(ls "$cache"/pip/$glob | head -n1)
  fi
  case "$req" in
    scikit-learn*) for p in china.jpg flower.jpg; do
        unzip -o -q "$w" "sklearn/datasets/images/$p" -d "$tmp" && mv "$tmp/sklearn/datasets/images/$p" "$out/sklearn_$p"
      done ;;
    matplotlib*) unzip -o -q "$w" "matplotlib/mpl-data/sample_data/grace_hopper.jpg" -d "$tmp" &&
        mv "$tmp/matplotlib/mpl-data/sample_data/grace_hopper.jpg" "$out/matplotlib_grace_hopper.jpg" ;;
  esac
done
echo "fetch_photos: $(ls "$out" | wc -l) photos in $out"
