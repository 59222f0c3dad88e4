#!/usr/bin/env bash
# Check the http sink's live preview page in a real headless Chromium, on a real run.
#
# Starts `ailurus run` with only the http sink enabled (the real model at 224 px, M=64 of N=256
# tokens, the photos of .cache/photos looping at 4 FPS), then:
#   1. waits for /healthz to answer 200 (model loaded, frames flowing);
#   2. loads the page once (--dump-dom with a virtual-time budget): the page itself must have
#      shown at least 3 different frames (its data-updates counter), i.e. the image updates;
#   3. takes two screenshots a few frames apart: they must differ;
#   4. opens the page in the cluster view with the charts (#view=clusters&charts=1), with
#      Chromium's network log on: the page must have loaded a cluster image, its charts must
#      hold every frame published from the first on (no gap), and every request in the network
#      log must go to 127.0.0.1:PORT (the log must show the page's own requests, so a request
#      elsewhere would show too);
#   5. /clusters.png must show at least M distinct cluster colours;
#   6. FPS without and with 4 clients hammering /clusters.png (printed; frames must keep flowing);
#   7. saves the screenshots (mask view; clusters with charts), the DOMs, the network log,
#      /metrics, /healthz and the server log in OUT_DIR, and with DOCS=1 the two screenshots
#      as docs/preview-mask.png and docs/preview-clusters-charts.png;
#   8. stops the server with SIGTERM: it must exit 0.
#
# Usage: tools/preview_check.sh [OUT_DIR]          (default out/preview, git-ignored)
# Env:   AILURUS_BIN (default: build with cargo and copy the binary), CHROMIUM (default
#        chromium; Debian: apt-get install -y chromium), PORT (default 18717), PYTHON (default
#        .cache/venv/bin/python, with Pillow: tools/setup_python.sh), DOCS=1 (update docs/).
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
python="${PYTHON:-$root/.cache/venv/bin/python}"
"$python" -c "import PIL" 2>/dev/null || fail "no $python with Pillow (run tools/setup_python.sh)"
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
m = 64
[budget]
enabled = false
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

# One headless Chromium call, bounded: headless Chromium now and then never exits (with a virtual
# time budget, or after writing its screenshot; stop 34's CI sat in such a call for 70 minutes).
# A call that runs past CHROME_TIMEOUT seconds (default 60; a normal one takes 2-7 s) is killed
# and tried again with a fresh profile, at most 3 times, each try said on stderr. Its standard
# output (--dump-dom) goes through a file, so a killed try leaves nothing behind.
chrome_timeout="${CHROME_TIMEOUT:-60}"
chrome() {
  local try rc t0 dt log0
  for try in 1 2 3; do
    rm -rf "$profile" && mkdir -p "$profile"
    t0=$(date +%s); rc=0; log0=$(stat -c %s "$out/chromium.log" 2>/dev/null || echo 0)
    timeout -k 5 "$chrome_timeout" "$chromium" --headless --no-sandbox --disable-gpu \
      --disable-background-networking --disable-component-update --disable-sync --no-first-run \
      --hide-scrollbars --user-data-dir="$profile" "$@" >"$out/chrome.stdout" 2>>"$out/chromium.log" || rc=$?
    dt=$(( $(date +%s) - t0 ))
    if [ "$rc" = 0 ]; then cat "$out/chrome.stdout"; return 0; fi
    if [ "$rc" != 124 ] && [ "$rc" != 137 ]; then
      fail "chromium exited $rc after ${dt}s on ${*: -1} (see $out/chromium.log)"
    fi
    # Say whether the server still answered, so a hang on our side would show as one.
    echo "preview_check: chromium did not finish within ${chrome_timeout}s on ${*: -1}" \
      "(try $try of 3); killed; the server then answered /healthz" \
      "$(curl -s -o /dev/null -m 5 -w '%{http_code} in %{time_total} s' "$url/healthz")" >&2
    # What this try logged, if anything (its last lines).
    tail -c +$((log0 + 1)) "$out/chromium.log" | tail -n 3 | sed 's/^/preview_check:   chromium: /' >&2
  done
  fail "chromium did not finish within ${chrome_timeout}s in 3 tries on ${*: -1}"
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
caption="$(sed -n 's/.*<div id="status"[^>]*>\([^<]*\)<\/div>.*/\1/p' "$out/page.html" | head -1)"
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

metric() { curl -fsS -m 5 "$url/metrics" | sed -n "s/^$1 \([0-9.e+]*\)$/\1/p"; }

# 4. The cluster view and the charts, with the network log on.
published0="$(metric ailurus_http_frames_published_total)"
chrome --window-size=1100,1250 --virtual-time-budget=6000 --log-net-log="$out/netlog.json" \
  --dump-dom "$url/#view=clusters&charts=1" >"$out/page-clusters.html"
attr() { sed -n "s/.*<body[^>]* $1=\"\([^\"]*\)\".*/\1/p" "$out/page-clusters.html" | head -1; }
view="$(attr data-view)"; loaded="$(attr data-clusters-loaded)"; points="$(attr data-chart-points)"
first="$(attr data-chart-first-gen)"; last="$(attr data-chart-last-gen)"
echo "preview_check: cluster view: view=$view, cluster images loaded $loaded; charts: $points points," \
  "frames $first..$last (published before the load: $published0)"
[ "$view" = clusters ] || fail "the page is in view '$view', not clusters"
[ "${loaded:-0}" -ge 1 ] || fail "the page loaded no cluster image"
[ "$first" = 1 ] || fail "the charts start at frame $first, not at the first one published"
[ "${last:-0}" -ge "${published0%.*}" ] || fail "the charts end at frame $last, before the $published0 published"
[ "$points" = "$last" ] || fail "the charts hold $points points for frames 1..$last (a gap)"
for series in latency M N input FPS drops; do
  grep -q "data-series=\"$series\" data-n=\"$points\"" "$out/page-clusters.html" \
    || fail "the chart line '$series' does not hold the $points points"
done
"$python" - "$out/netlog.json" "$port" <<'PY' || fail "the page made a request outside 127.0.0.1:$port (see $out/netlog.json)"
# Chromium's network log: a request made for the page carries the page's site in its network
# isolation key; the browser's own background requests (component updates, ...) do not.
import json, sys
log = json.load(open(sys.argv[1]))
types = {v: k for k, v in log["constants"]["logEventTypes"].items()}
url, nik = {}, {}
for e in log["events"]:
    p, src = e.get("params", {}), e["source"]["id"]
    if "url" in p and types[e["type"]] in ("REQUEST_ALIVE", "URL_REQUEST_START_JOB", "CORS_REQUEST"):
        url.setdefault(src, p["url"])
    if types[e["type"]] == "URL_REQUEST_START_JOB":
        nik.setdefault(src, p.get("network_isolation_key", ""))
mine = "http://127.0.0.1:%s/" % sys.argv[2]
page = {src: u for src, u in url.items() if nik.get(src, "").startswith("http://127.0.0.1")}
outside = sorted(set(u for u in page.values() if not u.startswith(mine)))
browser = sorted(set(u.split("?")[0] for s, u in url.items() if s not in page))
print("preview_check: network log: the page made %d request(s), %d outside %s; the browser's own: %s"
      % (len(page), len(outside), mine, ", ".join(browser) or "none"))
for u in outside:
    print("preview_check:   page request outside:", u)
seen = {u[len(mine) - 1:].split("?")[0].split("#")[0] for u in page.values() if u.startswith(mine)}
assert {"/", "/clusters.png", "/history.json", "/latest.json"} <= seen, "the log misses the page's own requests: %s" % seen
sys.exit(1 if outside else 0)
PY
chrome --window-size=1100,1250 --virtual-time-budget=6000 --screenshot="$out/preview-clusters-charts.png" \
  "$url/#view=clusters&charts=1" >/dev/null
chrome --window-size=900,800 --virtual-time-budget=2000 --screenshot="$out/preview-mask.png" \
  "$url/#view=mask&charts=0" >/dev/null

# 5. The cluster image itself: at least M distinct cluster colours (black and white are the
#    borders, centre marks and the label).
curl -fsS -m 5 "$url/clusters.png" -o "$out/clusters.png"
m="$(curl -fsS -m 5 "$url/latest.json" | sed -n 's/.*"m":\([0-9]*\),.*/\1/p')"
colours="$("$python" -c "
import sys; from PIL import Image
px = {c for _, c in Image.open(sys.argv[1]).convert('RGB').getcolors(1 << 24)} - {(0, 0, 0), (255, 255, 255)}
print(len(px))" "$out/clusters.png")"
echo "preview_check: clusters.png shows $colours cluster colours (M=$m)"
[ "$colours" -ge "$m" ] || fail "clusters.png shows $colours colours for M=$m"

# 6. FPS without and with clients hammering /clusters.png (printed, not asserted: the machine
#    is shared; frames must keep flowing).
fps_over() { # fps_over SECONDS: frames published per second over that long
  local a b; a="$(metric ailurus_http_frames_published_total)"; sleep "$1"
  b="$(metric ailurus_http_frames_published_total)"; awk -v a="$a" -v b="$b" -v s="$1" 'BEGIN{printf "%.2f", (b-a)/s}'
}
fps_quiet="$(fps_over 8)"
hammer() { while :; do curl -s -o /dev/null -m 5 "$url/clusters.png?h=$RANDOM" || true; done; }
hammers=(); for _ in 1 2 3 4; do hammer & hammers+=($!); done
fps_hammer="$(fps_over 8)"
kill "${hammers[@]}" 2>/dev/null || true; wait "${hammers[@]}" 2>/dev/null || true
requests="$(curl -fsS -m 5 "$url/metrics" | sed -n 's/^ailurus_http_requests_total{path="\/clusters.png"} //p')"
echo "preview_check: FPS $fps_quiet without, $fps_hammer with 4 clients hammering /clusters.png ($requests requests)"
awk -v f="$fps_hammer" 'BEGIN{exit !(f > 0)}' || fail "no frame published while /clusters.png was hammered"

if [ "${DOCS:-0}" = 1 ]; then
  cp "$out/preview-mask.png" "$root/docs/preview-mask.png"
  cp "$out/preview-clusters-charts.png" "$root/docs/preview-clusters-charts.png"
  echo "preview_check: docs/preview-mask.png and docs/preview-clusters-charts.png updated"
fi

# 7. The other endpoints of the same run.
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
echo "preview_check: OK; screenshots $out/preview-{1,2,mask,clusters-charts}.png, metrics $out/metrics.txt"
