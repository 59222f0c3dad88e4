#!/usr/bin/env bash
# The packaged service under a real systemd (run by .ci/run through tools/ci_deploy.sh; needs
# root, debootstrap and systemd-nspawn: `tools/setup.sh --deploy`).
#
#   tools/package.sh amd64 && tools/systemd_test.sh
#
# 1. A Debian bookworm rootfs (debootstrap minbase + systemd, dbus, procps), made once and cached
#    in .cache/nspawn/; every run starts from a fresh copy in target/systemd-test/root.
# 2. dist/ailurus_*_amd64.deb and dist/ailurus-model-vit-s-focus_*_all.deb installed in it with
#    dpkg, three of the fetched photos copied to /srv/ailurus/photos (no camera exists).
# 3. The container boots (systemd-nspawn -b, its own network namespace: only its loopback;
#    not --console=pipe: with it the container's systemd exits at once here);
#    ailurus-checks.service runs tools/nspawn/ailurus-checks.sh (start/READY, STATUS=, reload,
#    a rejected reload, watchdog restart, clean stop, the metrics line, two template instances,
#    systemd-analyze security) and powers it off. Its log is printed; exit 1 if a check failed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# minbase + systemd, and the ailurus package's dependencies beyond minbase (procps: /bin/kill;
# the GStreamer libraries),
# so that dpkg -i works offline. A new dependency fails the install here, by design.
include=systemd,systemd-sysv,dbus,procps,libgstreamer1.0-0,libgstreamer-plugins-base1.0-0
cache="${AILURUS_CACHE:-$root/.cache}/nspawn/bookworm-${include//,/-}"
work="$root/target/systemd-test"
rootfs="$work/root"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
photos="astronaut.png coffee.png chelsea.png"

[ "$(id -u)" = 0 ] || { echo "systemd_test: needs root (debootstrap, systemd-nspawn)" >&2; exit 2; }
shopt -s nullglob
debs=("$root"/dist/ailurus_*_amd64.deb "$root"/dist/ailurus-model-vit-s-focus_*_all.deb)
[ ${#debs[@]} = 2 ] || { echo "systemd_test: need exactly one ailurus amd64 and one model .deb in dist/ (tools/package.sh amd64): ${debs[*]}" >&2; exit 2; }

if [ ! -e "$cache/.complete" ]; then
  echo "systemd_test: debootstrap bookworm (minbase + $include) into $cache, once"
  rm -rf "$cache.tmp" && mkdir -p "$(dirname "$cache")"
  debootstrap --variant=minbase --include="$include" bookworm "$cache.tmp" "$mirror" >/dev/null
  rm -rf "$cache" && mv "$cache.tmp" "$cache" && touch "$cache/.complete"
fi

rm -rf "$work" && mkdir -p "$work"
cp -a "$cache" "$rootfs"
nspawn=(systemd-nspawn --quiet --register=no --keep-unit --private-network -D "$rootfs")

echo "systemd_test: installing ${debs[*]##*/}"
mkdir -p "$rootfs/var/tmp/debs" && cp "${debs[@]}" "$rootfs/var/tmp/debs/"  # not /tmp: nspawn mounts a tmpfs there
"${nspawn[@]}" sh -c 'dpkg -i /var/tmp/debs/*.deb && rm -r /var/tmp/debs'
"${nspawn[@]}" dpkg -L ailurus | grep -E 'bin/|systemd|etc/' | sed 's/^/  /'

mkdir -p "$rootfs/srv/ailurus/photos"
for p in $photos; do install -m 0644 "$root/.cache/photos/$p" "$rootfs/srv/ailurus/photos/"; done
install -m 0755 "$root/tools/nspawn/ailurus-checks.sh" "$rootfs/usr/local/sbin/ailurus-checks"
cat > "$rootfs/etc/systemd/system/ailurus-checks.service" <<'EOF'
[Unit]
Description=ailurus packaged-service checks (tools/systemd_test.sh)
[Service]
Type=exec
ExecStart=/usr/local/sbin/ailurus-checks
StandardOutput=journal+console
StandardError=journal+console
[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$rootfs/etc/systemd/system/multi-user.target.wants"
ln -sf ../ailurus-checks.service "$rootfs/etc/systemd/system/multi-user.target.wants/ailurus-checks.service"
# A persistent journal: readable after the run with journalctl -D target/systemd-test/root/var/log/journal.
mkdir -p "$rootfs/var/log/journal"
# Nothing else needs to start in the container: no console login.
ln -sf /dev/null "$rootfs/etc/systemd/system/console-getty.service"

echo "systemd_test: booting the container (systemd-nspawn -b); console in $work/console.log"
t0=$(date +%s)
rc=0; timeout 900 "${nspawn[@]}" -b </dev/null >"$work/console.log" 2>&1 || rc=$?
echo "systemd_test: container exited with $rc after $(( $(date +%s) - t0 )) s"
result=$(cat "$rootfs/var/log/ailurus-checks.rc" 2>/dev/null || echo missing)
if [ -f "$rootfs/var/log/ailurus-checks.log" ]; then
  echo "---- the checks (/var/log/ailurus-checks.log in the container)"
  cat "$rootfs/var/log/ailurus-checks.log"
else
  echo "---- the checks did not run; the end of the console:"; tail -40 "$work/console.log"
fi
echo "systemd_test: checks exit status: $result"
[ "$result" = 0 ] && [ "$rc" = 0 ]
