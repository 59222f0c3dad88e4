#!/usr/bin/env bash
# Decode the first frames of the real clips (.cache/video/*.mp4, tools/fetch_assets.sh) into
# folders of numbered PNGs for `ailurus bench --video` and its smoke test (issue #19):
#   .cache/video/frames/<clip>/000001.png ...
# With GStreamer's own tools (Debian gstreamer1.0-tools, -libav, -plugins-good; tools/setup.sh).
# Idempotent: a folder with a .done marker of the same settings is left alone.
# The frames are decoded, never committed. bikes and bigbuckbunny (1280x720) are scaled to 640x360
# (the model input is 448 px square anyway) to keep the folders small. Clips as measured here:
# carphone_pristine 176x144, static camera; bikes moves and jumps at frame 30; the first 60
# frames of bigbuckbunny pan and fade (it has no hard cut in its 132 frames).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
video="$root/.cache/video"
frames="${FRAMES:-60}"
command -v gst-launch-1.0 >/dev/null || { echo "decode_clips: gst-launch-1.0 not found (tools/setup.sh installs it)" >&2; exit 1; }
for clip in carphone_pristine bikes bigbuckbunny; do
  src="$video/$clip.mp4"
  out="$video/frames/$clip"
  stamp="frames=$frames v2"
  if [ -f "$out/.done" ] && [ "$(cat "$out/.done")" = "$stamp" ]; then continue; fi
  [ -f "$src" ] || { echo "decode_clips: $src missing (run tools/fetch_assets.sh)" >&2; exit 1; }
  caps="video/x-raw,format=RGB"
  [ "$clip" != carphone_pristine ] && caps="video/x-raw,width=640,height=360,format=RGB"
  rm -rf "$out"; mkdir -p "$out"
  echo "decode: $clip.mp4 -> $out ($frames frames)"
  gst-launch-1.0 -q filesrc location="$src" ! qtdemux ! avdec_h264 ! identity eos-after="$frames" \
    ! videoconvert ! videoscale ! "$caps" ! pngenc ! multifilesink location="$out/%06d.png" index=1 >/dev/null
  n=$(ls "$out"/*.png | wc -l)
  [ "$n" -ge 2 ] || { echo "decode_clips: only $n frame(s) from $src" >&2; exit 1; }
  echo "$stamp" > "$out/.done"
done
echo "decode: clip frames present in $video/frames"
