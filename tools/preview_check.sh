#!/usr/bin/env bash
# Check the http sink's live preview page in a real headless Chromium, on a real run.
#
# Starts `ailurus run` with only the http sink enabled (the real model at 224 px, the photos of
# .cache/photos looping at 4 FPS), then:
#   1. waits for /healthz to answer 200 (model loaded, frames flowing);
#   2. loads the page once (--dump-dom with a virtual-time budget): the page itself must have
#      shown at least 3 different frames (its data-updates counter), i.e. the image updates;
#   3. takes two screenshots a few frames apart: they must differ;
#   4. saves the screenshots, the DOM, /metrics, /healthz and the server log in OUT_DIR;
#   5. stops the server with SIGTERM: it must exit 0.
#
# Usage: tools/preview_check.sh [OUT_DIR]          (default out/preview, git-ignored)
# Env:   AILURUS_BIN (default: build with cargo and copy the binary), CHROMIUM (default
#        chromium; Debian: apt-get install -y chromium), PORT (default 18717).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/out/preview}"
port="${PORT:-18717}"
chromium="${CHROMIUM:-chromium}"
url="http://127.0.0.1:$port"
mkdir -p "$out"
fail() { echo "preview_check: FAIL: $*" >&2; exit 1; }

command -v "$chromium" >/dev/null || fail "no $chromium (Debian: apt-get install -y chromium)"
command -v curl >/dev/null || fail "no curl"
[ -f "$root/.cache/models/vit_s_focus.onnx" ] || fail "no model: run tools/fetch_assets.sh"
bin="${AILURUS_BIN:-}"
if [ -z "$bin" ]; then
  (cd "$root" && cargo build --release -q)
  # Copy it at once: a shared CARGO_TARGET_DIR may be rebuilt by someone else meanwhile.
  cp "${CARGO_TARGET_DIR:-$root/target}/release/ailurus" "$out/ailurus"
  bin="$out/ailurus"
fi

cat > "$out/preview.toml" <<TOML
[model]
manifest = "$root/models/vit_s_focus.toml"
input_size = 224
[reduce]
m = 128
[source]
path = "$root/.cache/photos"
fps = 4.0
[sink.files]
enabled = false
[sink.http]
enabled = true
port = $port
refresh_ms = 200
TOML
"$bin" check-config "$out/preview.toml" >/dev/null

curl -s -o /dev/null -m 2 "$url/" && fail "something already answers on $url (set PORT)"
profile="$(mktemp -d)"
"$bin" run --config "$out/preview.toml" >"$out/server.log" 2>&1 &
pid=$!
cleanup() {
  kill -TERM "$pid" 2>/dev/null || true
  rm -rf "$profile"
}
trap cleanup EXIT

chrome() {
  "$chromium" --headless --no-sandbox --disable-gpu --disable-background-networking \
    --hide-scrollbars --user-data-dir="$profile" "$@" 2>>"$out/chromium.log"
}
latest_seq() { curl -fsS -m 5 "$url/latest.json" | sed -n 's/^{"seq":\([0-9]*\),.*/\1/p'; }

echo "preview_check: waiting for $url/healthz (model load) ..."
for _ in $(seq 1 300); do
  code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url/healthz" || true)"
  [ "$code" = 200 ] && break
  kill -0 "$pid" 2>/dev/null || fail "the server exited; see $out/server.log"
  sleep 1
done
[ "$code" = 200 ] || fail "/healthz still $code after 300 s"

# 2. One page load: the page's own refresh must show several different frames.
chrome --virtual-time-budget=4000 --dump-dom "$url/" >"$out/page.html"
updates="$(sed -n 's/.*data-updates="\([0-9]*\)".*/\1/p' "$out/page.html" | head -1)"
caption="$(sed -n 's/.*<div id="status">\(.*\)<\/div>.*/\1/p' "$out/page.html" | head -1)"
[ "${updates:-0}" -ge 3 ] || fail "the page showed ${updates:-0} frame(s) in one load (want >= 3): $caption"
echo "preview_check: one page load showed $updates frames; caption: $caption"

# 3. Two screenshots a few frames apart.
chrome --window-size=900,800 --virtual-time-budget=1500 --screenshot="$out/preview-1.png" "$url/" >/dev/null
seq1="$(latest_seq)"
for _ in $(seq 1 120); do
  [ "$(latest_seq)" -ge $((seq1 + 3)) ] && break
  sleep 0.5
done
chrome --window-size=900,800 --virtual-time-budget=1500 --screenshot="$out/preview-2.png" "$url/" >/dev/null
for f in "$out/preview-1.png" "$out/preview-2.png"; do
  [ "$(stat -c %s "$f")" -gt 20000 ] || fail "$f is suspiciously small"
done
cmp -s "$out/preview-1.png" "$out/preview-2.png" && fail "the two screenshots are identical"
echo "preview_check: screenshots differ (frames ~$seq1 and $(latest_seq))"

# 4. The other endpoints of the same run.
curl -fsS -m 5 "$url/metrics" >"$out/metrics.txt"
curl -sS -m 5 -i "$url/healthz" >"$out/healthz.txt"
curl -fsS -m 5 "$url/mask.png" -o "$out/mask.png"

# 5. SIGTERM: drain and exit 0.
kill -TERM "$pid"
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && fail "the server did not exit within 10 s of SIGTERM"
rc=0; wait "$pid" || rc=$?
[ "$rc" = 0 ] || fail "the server exited $rc after SIGTERM"
trap - EXIT; rm -rf "$profile"
echo "preview_check: OK; screenshots $out/preview-1.png $out/preview-2.png, metrics $out/metrics.txt"
