#!/usr/bin/env bash
# One-time (idempotent) set-up for a fresh Debian/Ubuntu machine:
#   - libclang-dev: the v4l crate generates its V4L2 bindings with bindgen at build time
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
if [ $deploy = 1 ]; then
  command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu)
  [ -e /usr/aarch64-linux-gnu/include/stdio.h ] || need_apt+=(libc6-dev-arm64-cross)
  command -v qemu-aarch64-static >/dev/null || need_apt+=(qemu-user-static)
  command -v objdump >/dev/null || need_apt+=(binutils)
  command -v dpkg-deb >/dev/null || need_apt+=(dpkg)
  command -v debootstrap >/dev/null || need_apt+=(debootstrap)
  command -v systemd-nspawn >/dev/null || need_apt+=(systemd-container)
fi
{ command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null || need_apt+=(mosquitto)
command -v openssl >/dev/null || need_apt+=(openssl)   # test certificates for the MQTT TLS test
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
"$root/tools/fetch_assets.sh"
"$root/tools/decode_clips.sh"
"$root/tools/setup_python.sh"
