#!/usr/bin/env bash
# One-time (idempotent) set-up for a fresh Debian/Ubuntu machine:
#   - libclang-dev: the v4l crate generates its V4L2 bindings with bindgen at build time
#   - GStreamer (the default `gstreamer` feature, src/source/gst.rs): the dev libraries to build
#     (libgstreamer1.0-dev, libgstreamer-plugins-base1.0-dev) and the plugins to play H.264
#     MP4 files and RTSP (-base, -good, -bad, -libav); python3-gi + gir1.2-gst-rtsp-server-1.0
#     for tools/rtsp_server.py, the RTSP server tests/source/gst.rs starts on 127.0.0.1 (a
#     separate process, so a test can SIGKILL it like a lost camera; no extra Rust crate)
#   - mosquitto (broker + mosquitto_passwd): tests/sink_mqtt.rs starts its own on 127.0.0.1
#     (the package's system service is not needed; the tests never use it)
#   - the real model and photos (tools/fetch_assets.sh, checksum-verified), and the clips decoded
#     to frame folders with GStreamer (gstreamer1.0-tools/-libav/-plugins-good; tools/decode_clips.sh)
#   - a pinned Python venv in .cache/venv (numpy, onnx, onnxruntime, pillow, paho-mqtt,
#     jsonschema) for the ONNX Runtime peer bench, the socket client test and the MQTT
#     consumer/schema checks (tools/setup_python.sh)
# Used by both README commands and by .ci/run.
#
# `tools/setup.sh --deploy` also installs what the cross build, the packages and the systemd
# test need (tools/ci_deploy.sh, tools/package.sh, tools/systemd_test.sh):
#   - the Rust target aarch64-unknown-linux-gnu (rustup) and Debian gcc-aarch64-linux-gnu +
#     libc6-dev-arm64-cross (linker and the arm64 sysroot /usr/aarch64-linux-gnu)
#   - qemu-user-static: runs the arm64 tests and binary (.cargo/config.toml's runner)
#   - cargo-deb (cargo install --locked), binutils (objdump, for the libc check)
#   - debootstrap + systemd-container (systemd-nspawn) for the booted-container test
#   - the arm64 GStreamer dev libraries through Debian multiarch (dpkg --add-architecture
#     arm64; libgstreamer1.0-dev:arm64, libgstreamer-plugins-base1.0-dev:arm64): the arm64
#     binary has the GStreamer source (RTSP, CSI) like the amd64 one
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
deploy=0
case "${1:-}" in
  "") ;;
  --deploy) deploy=1 ;;
  *) echo "usage: tools/setup.sh [--deploy]" >&2; exit 2 ;;
esac

need_apt=()
if ! ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so'; then need_apt+=(libclang-dev); fi
command -v unzip >/dev/null || need_apt+=(unzip)
pkg-config --exists gstreamer-app-1.0 2>/dev/null || need_apt+=(pkg-config libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev)
for p in gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav \
         gir1.2-gst-rtsp-server-1.0 python3-gi; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need_apt+=("$p")
done
if [ $deploy = 1 ]; then
  command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu)
  [ -e /usr/aarch64-linux-gnu/include/stdio.h ] || need_apt+=(libc6-dev-arm64-cross)
  command -v qemu-aarch64-static >/dev/null || need_apt+=(qemu-user-static)
  command -v objdump >/dev/null || need_apt+=(binutils)
  command -v dpkg-deb >/dev/null || need_apt+=(dpkg)
  command -v debootstrap >/dev/null || need_apt+=(debootstrap)
  command -v systemd-nspawn >/dev/null || need_apt+=(systemd-container)
  # The arm64 GStreamer libraries (Debian multiarch) for the cross build with the default
  # `gstreamer` feature (.cargo/config.toml points pkg-config and the linker at them):
  # libgstreamer1.0-dev:arm64 (Multi-Arch: same, beside the amd64 one) and the arm64 runtime
  # of gstreamer-plugins-base (its -dev package is not Multi-Arch: same, so the arm64 one
  # would remove the amd64 one; arm64_gst_shim below stands in for it).
  for p in libgstreamer1.0-dev:arm64 libgstreamer-plugins-base1.0-0:arm64; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
      dpkg --print-foreign-architectures | grep -qx arm64 || { sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"; $sudo_ dpkg --add-architecture arm64; }
      need_apt+=("$p")
    fi
  done
fi
{ command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null || need_apt+=(mosquitto)
command -v openssl >/dev/null || need_apt+=(openssl)   # test certificates for the MQTT TLS test
command -v chromium >/dev/null || need_apt+=(chromium)  # tools/preview_check.sh (headless)
command -v curl >/dev/null || need_apt+=(curl)
# Decoding the real clips into frame folders (tools/decode_clips.sh, issue #19).
command -v gst-launch-1.0 >/dev/null || need_apt+=(gstreamer1.0-tools)
gst-inspect-1.0 avdec_h264 >/dev/null 2>&1 || need_apt+=(gstreamer1.0-libav)
gst-inspect-1.0 qtdemux >/dev/null 2>&1 || need_apt+=(gstreamer1.0-plugins-good)
gst-inspect-1.0 pngenc >/dev/null 2>&1 || need_apt+=(gstreamer1.0-plugins-good)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} (Debian packages)"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
if [ $deploy = 1 ]; then
  rustup target list --installed | grep -qx aarch64-unknown-linux-gnu \
    || rustup target add aarch64-unknown-linux-gnu
  if ! cargo deb --version >/dev/null 2>&1; then
    echo "setup: cargo install cargo-deb --locked (a few minutes, once)"
    nice -n 10 cargo install cargo-deb --locked
  fi
fi
# What the cross build needs of gstreamer-plugins-base's -dev package for arm64: the
# gstreamer-app-1.0 pkg-config file and the libgstapp-1.0.so link name (the Rust -sys crates
# compile no C headers), in .cache/arm64-gst (PKG_CONFIG_PATH in .cargo/config.toml).
arm64_gst_shim() {
  local d="$root/.cache/arm64-gst" lib=/usr/lib/aarch64-linux-gnu/libgstapp-1.0.so.0 ver
  [ -e "$lib" ] || { echo "setup: $lib missing (libgstreamer-plugins-base1.0-0:arm64)" >&2; exit 1; }
  ver=$(dpkg-query -W -f='${Version}' libgstreamer-plugins-base1.0-0:arm64 | sed 's/-.*//')
  mkdir -p "$d/pkgconfig" "$d/lib"
  ln -sfn "$lib" "$d/lib/libgstapp-1.0.so"
  cat > "$d/pkgconfig/gstreamer-app-1.0.pc" <<EOF
# Written by tools/setup.sh --deploy: the arm64 libgstapp for the cross build (see there).
libdir=\${pcfiledir}/../lib
Name: gstreamer-app-1.0
Description: GStreamer appsink/appsrc (arm64 runtime library, link name only)
Version: $ver
Requires: gstreamer-1.0, gstreamer-base-1.0
Libs: -L\${libdir} -lgstapp-1.0
Cflags:
EOF
}
if [ $deploy = 1 ]; then arm64_gst_shim; fi
"$root/tools/fetch_assets.sh"
"$root/tools/decode_clips.sh"
"$root/tools/setup_python.sh"
