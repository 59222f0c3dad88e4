#!/usr/bin/env bash
# One-time (idempotent) set-up for a fresh Debian/Ubuntu machine:
#   - libclang-dev: the v4l crate generates its V4L2 bindings with bindgen at build time
#   - mosquitto (broker + mosquitto_passwd): tests/sink_mqtt.rs starts its own on 127.0.0.1
#     (the package's system service is not needed; the tests never use it)
#   - the real model and photos (tools/fetch_assets.sh, checksum-verified)
#   - a pinned Python venv in .cache/venv (numpy, onnx, onnxruntime, pillow, paho-mqtt,
#     jsonschema) for the ONNX Runtime peer bench, the socket client test and the MQTT
#     consumer/schema checks (tools/setup_python.sh)
# Used by both README commands and by .ci/run.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

need_apt=()
if ! ldconfig -p 2>/dev/null | grep -q 'libclang[-.0-9]*\.so'; then need_apt+=(libclang-dev); fi
command -v unzip >/dev/null || need_apt+=(unzip)
{ command -v mosquitto || [ -x /usr/sbin/mosquitto ]; } >/dev/null || need_apt+=(mosquitto)
command -v openssl >/dev/null || need_apt+=(openssl)   # test certificates for the MQTT TLS test
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} (Debian packages)"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
"$root/tools/fetch_assets.sh"
"$root/tools/setup_python.sh"
