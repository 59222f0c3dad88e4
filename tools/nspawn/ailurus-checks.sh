#!/usr/bin/env bash
# Runs INSIDE the booted test container (tools/systemd_test.sh), as the oneshot
# ailurus-checks.service: checks the packaged ailurus.service and ailurus@.service under the
# container's real systemd, prints what it sees, writes its exit status to
# /var/log/ailurus-checks.rc and powers the container off. Exit 1 if any check failed.
set -uo pipefail
export SYSTEMD_PAGER="" SYSTEMD_COLORS=0 LC_ALL=C.UTF-8
exec > >(tee /var/log/ailurus-checks.log) 2>&1

failed=()
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failed+=("$*"); }
check() { local what=$1; shift; if "$@"; then pass "$what"; else fail "$what"; fi; }
finish() {
  local rc=0; [ ${#failed[@]} -eq 0 ] || rc=1
  echo "== summary: ${#failed[@]} failed"; local f; for f in "${failed[@]}"; do echo "  FAILED: $f"; done
  echo "$rc" > /var/log/ailurus-checks.rc
  sync; systemctl poweroff --no-block
}
trap finish EXIT

# wait_for SECONDS CMD...: poll CMD every 0.2 s; true once it succeeds
wait_for() { local end=$(( $(date +%s%N) + $1 * 1000000000 )); shift
  until "$@"; do [ "$(date +%s%N)" -lt "$end" ] || return 1; sleep 0.2; done; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
prop() { systemctl show -p "$2" --value "$1"; }
cursor() { journalctl -q -n 1 --show-cursor -o cat | sed -n 's/^-- cursor: //p'; }
log_after() { journalctl -q -o cat -u "$1" --after-cursor="$2"; }
http_get() { # http_get PORT PATH: a plain HTTP/1.0 GET on 127.0.0.1 (bash /dev/tcp, no curl)
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3; timeout 5 cat <&3; exec 3<&- ; }

conf=/etc/ailurus/ailurus.toml
watchdog_s=8
echo "== ailurus $(ailurus --version 2>/dev/null || true), $(systemctl --version | head -1)"
dpkg-query -W ailurus ailurus-model-vit-s-focus

echo "== the packaged config"
check "check-config accepts the shipped $conf" ailurus check-config "$conf"
# The test config: the shipped one, reading the photos copied into /srv at 224 px, 4 frames/s,
# one thread (the machine is shared), a metrics line every 2 s.
edit() { # edit FILE 'REGEX' 'REPLACEMENT': one whole-line replacement that must match
  grep -qx "$2" "$1" || { fail "$1 has no line '$2'"; return 1; }; sed -i "s|^$2\$|$3|" "$1"; }
edit $conf 'kind = "v4l"' 'kind = "folder"'
edit $conf 'path = "/var/lib/ailurus/photos"' 'path = "/srv/ailurus/photos"'
edit $conf 'input_size = 448' 'input_size = 224'
edit $conf 'sizes = \[448, 392, 336, 280\]' 'sizes = [224]'
edit $conf 'threads = 0' 'threads = 1'
edit $conf 'fps = 0.0' 'fps = 4.0'
edit $conf 'log_every_s = 10.0' 'log_every_s = 2.0'
edit $conf 'keep = 200' 'keep = 20'
check "check-config accepts the test config" ailurus check-config "$conf"
# A short watchdog for the freeze test; the abort is followed by SIGKILL after 3 s (a stopped
# process never handles SIGABRT); no core dumps.
mkdir -p /etc/systemd/system/ailurus.service.d
cat > /etc/systemd/system/ailurus.service.d/test.conf <<EOF
[Service]
WatchdogSec=$watchdog_s
TimeoutAbortSec=3
RestartSec=1
LimitCORE=0
EOF
systemctl daemon-reload

echo "== start: returns after the first frame (READY=1)"
# PID 1 at debug level during the first start: what it skips of the sandbox is logged there.
systemctl log-level debug
t=$(now); c=$(cursor); c_start=$c
systemctl start ailurus; rc=$?
systemctl log-level info
status=$(prop ailurus StatusText)
echo "systemctl start: rc $rc after $(since "$t") s; ActiveState=$(prop ailurus ActiveState); StatusText=$status"
check "start succeeded" [ "$rc" = 0 ]
check "StatusText set when start returned (READY came with the first frame): '$status'" grep -q 'M=' <<<"$status"
has_fps() { grep -Eq '[0-9.]+ FPS, M=[0-9]+' <<<"$(prop ailurus StatusText)"; }
check "StatusText shows FPS and M within 10 s" wait_for 10 has_fps
echo "StatusText: $(prop ailurus StatusText)"
pid=$(prop ailurus MainPID)
echo "process: $(grep -E '^(Uid|Gid|Groups)' /proc/"$pid"/status | tr -s '\t ' ' ' | paste -sd';')"
video=$(getent group video | cut -d: -f3)
check "SupplementaryGroups=video (gid $video) reaches the process under PrivateUsers=yes" \
  grep -Eq "^Groups:.*\b$video\b" /proc/"$pid"/status

echo "== the periodic metrics line"
metrics_line() { journalctl -q -o cat -u ailurus | grep -E 'frames in .* FPS' | tail -1 | grep .; }
check "journalctl -u ailurus has the metrics line" wait_for 10 metrics_line
echo "metrics: $(metrics_line)"

echo "== reload"
c=$(cursor)
edit $conf 'target_ms = 500.0' 'target_ms = 1500.0'
systemctl reload ailurus; rc=$?
[ "$rc" = 0 ] || log_after ailurus "$c" | tail -15 | sed 's/^/journal: /'
reloaded() { log_after ailurus "$c" | grep -E 'SIGHUP: reloaded .*budget: true' ; }
check "systemctl reload (target_ms 500 -> 1500) succeeded" [ "$rc" = 0 ]
check "the journal says the budget was reloaded" wait_for 5 reloaded
echo "journal: $(reloaded)"
check "no '[budget] not applied' error" bash -c "! journalctl -q -o cat -u ailurus | grep -F '[budget] not applied'"

c=$(cursor)
edit $conf 'target_ms = 1500.0' 'target_ms = "soon"'
systemctl reload ailurus; rc=$?
echo "systemctl reload with target_ms = \"soon\": rc $rc"
check "a broken edit fails systemctl reload (ExecReload's check-config)" [ "$rc" != 0 ]
log_after ailurus "$c" | grep -i -m3 'target_ms' | sed 's/^/journal: /'
# The direct path: SIGHUP with the broken file (as if it changed after the check).
systemctl kill -s HUP --kill-whom=main ailurus
rejected() { log_after ailurus "$c" | grep -F 'keeping the current config'; }
check "SIGHUP with the broken file is rejected and logged" wait_for 5 rejected
echo "journal: $(rejected | tail -1)"
check "still running, same process ($pid)" [ "$(prop ailurus ActiveState)/$(prop ailurus MainPID)" = "active/$pid" ]
frames_now() { prop ailurus StatusText | grep -Eo '[0-9]+ frames' | cut -d' ' -f1; }
wait_for 5 has_fps; n0=$(frames_now); sleep 3
check "still processing frames after the rejected reload ($n0 -> $(frames_now))" [ "$(frames_now)" -gt "${n0:-0}" ]
edit $conf 'target_ms = "soon"' 'target_ms = 1500.0'
check "the restored file reloads" systemctl reload ailurus

echo "== watchdog: freeze the process (SIGSTOP), WatchdogSec=$watchdog_s"
c=$(cursor); restarts=$(prop ailurus NRestarts)
t=$(now); kill -STOP "$pid"
timed_out() { log_after ailurus "$c" | grep -q -E 'Watchdog timeout|Failed with result .watchdog.'; }
if wait_for $((watchdog_s + 5)) timed_out; then
  dt=$(since "$t"); echo "watchdog timeout noticed $dt s after SIGSTOP"
  check "watchdog fired within WatchdogSec (+1 s polling slack): $dt s" awk -v d="$dt" -v w="$watchdog_s" 'BEGIN { exit !(d <= w + 1) }'
else
  fail "no 'Watchdog timeout' within $((watchdog_s + 5)) s of SIGSTOP"
fi
restarted() { [ "$(prop ailurus ActiveState)" = active ] && [ "$(prop ailurus MainPID)" != "$pid" ] && [ "$(prop ailurus MainPID)" != 0 ]; }
check "killed and restarted (a new process is active again within 120 s)" wait_for 120 restarted
echo "restarted $(since "$t") s after SIGSTOP: MainPID $pid -> $(prop ailurus MainPID), NRestarts $restarts -> $(prop ailurus NRestarts)"
log_after ailurus "$c" | grep -E 'Watchdog|Killing|Main process exited|Scheduled restart|Started' | sed 's/^/journal: /'

echo "== stop"
c=$(cursor); t=$(now)
systemctl stop ailurus; rc=$?
dt=$(since "$t")
echo "systemctl stop: rc $rc after $dt s; Result=$(prop ailurus Result) ExecMainCode=$(prop ailurus ExecMainCode) ExecMainStatus=$(prop ailurus ExecMainStatus)"
check "stop succeeded within TimeoutStopSec=$(prop ailurus TimeoutStopUSec)" [ "$rc" = 0 ]
check "exited cleanly (Result=success, status 0)" [ "$(prop ailurus Result)/$(prop ailurus ExecMainStatus)" = "success/0" ]
log_after ailurus "$c" | grep -E 'draining|final:' | sed 's/^/journal: /'

echo "== two template instances side by side"
for name in front back; do cp $conf "/etc/ailurus/$name.toml"; done
edit /etc/ailurus/front.toml 'dir = "/var/lib/ailurus/masks"' 'dir = "masks"'
edit /etc/ailurus/back.toml 'dir = "/var/lib/ailurus/masks"' 'dir = "masks"'
# front: the photos, budget on, http on 8081. back: the synthetic source, budget off, M = 64,
# http on 8082.
http_on() { # http_on FILE PORT
  sed -i '/^\[sink.http\]/,/^\[/{s/^enabled = false$/enabled = true/;s/^port = 8080$/port = '"$2"'/}' "$1"; }
http_on /etc/ailurus/front.toml 8081
http_on /etc/ailurus/back.toml 8082
edit /etc/ailurus/back.toml 'kind = "folder"' 'kind = "synthetic"'
sed -i '/^\[budget\]/,/^\[/s/^enabled = true$/enabled = false/' /etc/ailurus/back.toml
edit /etc/ailurus/back.toml 'm = 512' 'm = 64'
for name in front back; do check "check-config $name.toml" ailurus check-config "/etc/ailurus/$name.toml"; done
t=$(now)
systemctl start ailurus@front ailurus@back; rc=$?
echo "systemctl start ailurus@front ailurus@back: rc $rc after $(since "$t") s"
check "both instances started" [ "$rc" = 0 ]
inst_fps() { grep -q FPS <<<"$(prop "$1" StatusText)"; }
for name in front back; do
  u="ailurus@$name"
  wait_for 15 inst_fps "$u" || true
  echo "$u: $(prop "$u" ActiveState), MainPID $(prop "$u" MainPID), StatusText=$(prop "$u" StatusText)"
done
check "two processes" [ "$(prop ailurus@front MainPID)" != "$(prop ailurus@back MainPID)" ]
sleep 4
for name in front back; do
  u="ailurus@$name"
  check "$u active" [ "$(prop "$u" ActiveState)" = active ]
  check "$u ran with /etc/ailurus/$name.toml" bash -c "journalctl -q -o cat -u $u | grep -q /etc/ailurus/$name.toml"
  n=$(find "/var/lib/private/ailurus-$name/masks" -name '*.png' 2>/dev/null | wc -l)
  check "$u wrote masks into its own /var/lib/ailurus-$name/masks ($n files)" [ "$n" -gt 0 ]
done
front_health=$(http_get 8081 /healthz | head -1); back_metrics=$(http_get 8082 /metrics)
echo "front /healthz: $front_health"
echo "back /metrics: $(grep -c . <<<"$back_metrics") lines, e.g. $(grep -v '^#' <<<"$back_metrics" | grep -m2 . | paste -sd' ')"
check "front answers on 127.0.0.1:8081" grep -q ' 200' <<<"$front_health"
check "back answers on 127.0.0.1:8082" grep -q '^ailurus' <<<"$(grep -v '^#' <<<"$back_metrics")"
back_m=$(prop ailurus@back StatusText)
check "back runs its own M (64): $back_m" grep -q 'M=64' <<<"$back_m"
systemctl stop ailurus@front ailurus@back

echo "== systemd-analyze security"
systemd-analyze security --no-pager ailurus.service | grep -v '^✓' 
score=$(systemd-analyze security --no-pager ailurus.service | sed -n 's/.*Overall exposure level for ailurus.service: \([0-9.]*\).*/\1/p')
echo "exposure: ailurus.service $score; $(systemd-analyze security --no-pager ailurus@front.service | grep -o 'Overall exposure.*')"
check "exposure score $score <= 2.0" awk -v s="$score" 'BEGIN { exit !(s != "" && s <= 2.0) }'
echo "== what systemd could not apply in this container (PID 1's log while starting ailurus, debug level)"
journalctl -q -o cat _PID=1 --after-cursor="$c_start" | grep -iE 'ailurus' \
  | grep -iE 'not supported|unsupported|proceeding without|cannot|bpf|firewall|namespace|seccomp' | sort | uniq -c | head -20
echo "(system calls this systemd's seccomp does not know, ignored: $(journalctl -q -o cat _PID=1 --after-cursor="$c_start" \
  | sed -n 's/^ailurus.service: Failed to parse system call, ignoring: //p' | sort -u | paste -sd' '))"
journalctl -q -o cat -b _PID=1 | grep -iE 'dev-video0.device.*unsupported' | sort -u
