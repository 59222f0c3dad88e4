#!/usr/bin/env bash
# The instruction mix of the hot NEON loop in the arm64 binary (issue #18): the gemm crate's
# f32 NEON microkernel that `isa::Level::Neon` dispatches the linear layers and attention to.
# Prints its most frequent instructions; fails if it has no vector FMA (fmla vN.4s), i.e. if the
# arm64 build lost its NEON kernel. Usage: tools/neon_mix.sh [BINARY] [KERNEL] [LANES]; LANES is
# the FMA's arrangement, 4s (f32, the default) or 8h (f16: `ailurus::model::f16::neon::tile`).
set -euo pipefail
bin=${1:-target/aarch64-unknown-linux-gnu/release/ailurus}
kernel=${2:-gemm_f32::microkernel::neon::f32::x3x4}
lanes=${3:-4s}
nm=aarch64-linux-gnu-nm; objdump=aarch64-linux-gnu-objdump
[ -e "$bin" ] || { echo "neon_mix: $bin: no such file (cross build first)" >&2; exit 2; }
addr=$($nm -C "$bin" | awk -v k="$kernel" '$3==k && !f {print $1; f=1}')
[ -n "$addr" ] || { echo "neon_mix: $bin: no symbol $kernel" >&2; exit 1; }
end=$($nm -n "$bin" | awk -v a="$addr" '$1==a {f=1; next} f==1 && $1!=a {print $1; f=2}')
asm=$($objdump -d --start-address=0x"$addr" --stop-address=0x"$end" "$bin")
total=$(awk 'NF>=3 && $1 ~ /:$/' <<<"$asm" | wc -l)
fmla=$(grep -cE "fmla\s+v[0-9]+\.$lanes" <<<"$asm" || true)
echo "neon_mix: $kernel in $bin: $total instructions, $fmla vector FMAs (fmla vN.$lanes); the top 10:"
awk 'NF>=3 && $1 ~ /:$/ {print $3}' <<<"$asm" | sort | uniq -c | sort -rn | sed 10q
[ "$fmla" -gt 0 ] || { echo "neon_mix: no NEON FMA in $kernel" >&2; exit 1; }
