//! The products in IEEE binary16 (`[model] precision = "f16"`, issue #18): for the Jetson's
//! Cortex-A78AE (ARMv8.2 FEAT_FP16: `fmla v.8h`, eight f16 multiply-adds per instruction, twice
//! the f32 rate) and, on x86, Intel's AVX512-FP16 (Sapphire Rapids and later). The linear layers
//! (here), the attention's two products and the head's deconvolutions (through
//! [`super::bf16::Half`], on the same pair layout as bf16) all run on these kernels.
//!
//! Those CPUs multiply and add in f16 (no f32 accumulation: that needs FEAT_FHM, which the
//! A78AE lacks). A whole row of K = 1536 summed in f16 would lose digits with every term, so the
//! kernels sum in f16 over runs of [`KCH`] pairs of K only, then add each run's sum into the
//! f32 output. Per output value the arithmetic is fixed, whatever the kernel:
//! - x and W are rounded to f16 (nearest even); W once at the plan's build, packed in the
//!   pair layout of the bf16 kernels ([`super::bf16::Packed16`] in [`super::bf16::Format::F16`]), x per call;
//! - two f16 sums per output, one over the even k and one over the odd k (a pair lane: the
//!   32-bit lane holding (k, k + 1) of a row meets the same lane of the panel), each a chain of
//!   f16 fused multiply-adds (one rounding each) in k order, starting at zero for every run;
//! - at the end of a run the output (f32) gets the even sum, then the odd sum added.
//!
//! So the AVX512-FP16 kernel, the NEON kernel and the portable one (plain Rust emulating each
//! f16 fused multiply-add through f64, the tests' reference) give the same bits, and a mask
//! computed on the Jetson in f16 is the one measured here on x86 (`tests.rs` checks each kernel
//! the CPU has against the portable one bit for bit; under qemu-aarch64 that is the NEON
//! kernel). The rows' rounding is also the same everywhere (IEEE round to nearest even).
//! LayerNorm, softmax, GELU and the sums between runs stay f32. Everywhere without f16
//! arithmetic the plans stay f32, with one log line
//! ([`super::bf16::Precision::fallback_reason`]).
//!
//! Own code: no maintained stable crate has an f16 GEMM that sums in f16 (the `gemm` crate's
//! f16 path converts to f32 and computes in f32, which gains nothing over f32 weights in
//! arithmetic).

use super::bf16::{blocked, Tile, NR};

/// K pairs per f16 run: each of a run's two f16 sums has at most 64 terms (k < 128), good to
/// about 3 decimal digits of the run's magnitude; the runs are summed in f32. Measured on 8
/// photos at 448 px (Intel Xeon, AVX512-FP16), mask IoU against f32: 0.999 (MAE 0.0001) with
/// 64, 1.000 with 32, whose run ends cost twice as much (a quarter of the NEON tile's work).
pub const KCH: usize = 64;
/// K pairs per chunk of the blocked loop (a multiple of [`KCH`], so runs never straddle chunks).
const KC2: usize = 128;

/// f32 to f16, rounded to nearest even (overflow to infinity, NaN stays NaN). Own bit
/// arithmetic, inlined into the callers' loops (the deconvolution rounds its input value by
/// value): `half::f16::from_f32` is an out-of-line call with a CPU-feature check per value,
/// which took a quarter of an f16 frame there. Checked against `half` in the tests.
#[inline]
pub fn to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let abs = b & 0x7FFF_FFFF;
    if abs >= 0x7F80_0000 {
        // Infinity, or NaN (kept quiet, with the top of its payload).
        let nan = if abs > 0x7F80_0000 { 0x0200 | ((abs >> 13) as u16 & 0x03FF) } else { 0 };
        return sign | 0x7C00 | nan;
    }
    if abs >= 0x477F_F000 {
        // 65520 and above round past the largest f16 (65504): infinity.
        return sign | 0x7C00;
    }
    if abs >= 0x3880_0000 {
        // Normal in f16 (>= 2^-14): rebias the exponent (127 -> 15), round the 13 dropped bits
        // to nearest even; a carry moves into the exponent, as it should.
        let v = abs - 0x3800_0000;
        return sign | ((v + 0x0FFF + ((v >> 13) & 1)) >> 13) as u16;
    }
    // Subnormal in f16 (or zero): the count of 2^-24 steps, exact in f32, rounded to even (1024
    // is the smallest normal's bit pattern, as it should be).
    sign | (f32::from_bits(abs) * 16_777_216.0).round_ties_even() as u16
}

/// f16 to f32 (exact).
pub fn from_f16(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// One f16 fused multiply-add, `round16(a b + c)` (operands are f16 values): the product is
/// exact in f64 (22 significant bits) and so is the sum, unless the two are over 2^31 apart,
/// when the smaller cannot move the f16 result anyway; then one rounding to f16.
fn fma16(a: f32, b: f32, c: f32) -> f32 {
    round16(a as f64 * b as f64 + c as f64) as f32
}

/// `v` rounded to the nearest f16 value, ties to even, past the largest one to infinity. Own
/// code: `half::f16::from_f64` goes through f32 on x86 (F16C), rounding twice.
fn round16(v: f64) -> f64 {
    if !v.is_finite() {
        return v;
    }
    // The f16 spacing at v: 2^(e - 10) for normal values (e = v's binary exponent), 2^-24
    // (the subnormals') below 2^-14.
    let e = ((v.to_bits() >> 52) & 0x7FF) as i32 - 1023;
    let ulp = 2f64.powi(e.max(-14) - 10);
    let r = (v / ulp).round_ties_even() * ulp;
    if r.abs() > 65504.0 {
        f64::INFINITY.copysign(v)
    } else {
        r
    }
}

/// The f16 product kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `vfmadd231ph` on 512-bit registers (x86 AVX512-FP16), a 12 x 32 tile.
    Avx512Fp16,
    /// `fmla v.8h` (aarch64 FEAT_FP16), a 6 x 16 tile.
    NeonFp16,
    /// Plain Rust emulating the same f16 arithmetic (tests; any CPU; slow).
    Portable,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Avx512Fp16 => "ailurus-avx512fp16",
            Kernel::NeonFp16 => "ailurus-neon-fp16",
            Kernel::Portable => "ailurus-f16-portable",
        }
    }

    pub fn supported(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Fp16 => {
                use std::arch::is_x86_feature_detected as has;
                has!("avx512fp16") && has!("avx512f") && has!("avx512bw") && has!("avx512vl")
            }
            #[cfg(target_arch = "aarch64")]
            Kernel::NeonFp16 => std::arch::is_aarch64_feature_detected!("fp16"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The register tile: (rows, columns).
    pub(crate) fn tile(self) -> (usize, usize) {
        match self {
            Kernel::Avx512Fp16 => (12, 32),
            Kernel::NeonFp16 => (6, 16),
            Kernel::Portable => (4, 32),
        }
    }
}

/// The best f16 kernel of this CPU.
pub fn kernel_level() -> Kernel {
    [Kernel::Avx512Fp16, Kernel::NeonFp16].into_iter().find(|k| k.supported()).unwrap_or(Kernel::Portable)
}

/// One row rounded to f16 pairs (row `2p` in the low half); an odd length pads with zero.
pub(crate) fn round_row(kernel: Kernel, src: &[f32], dst: &mut [u32]) {
    let done = match kernel {
        // SAFETY: the CPU has AVX512-FP16 (so AVX512F; checked by the caller).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Fp16 => unsafe { avx512::round_row(src, dst) },
        // SAFETY: the CPU has FEAT_FP16 (checked by the caller).
        #[cfg(target_arch = "aarch64")]
        Kernel::NeonFp16 => unsafe { neon::round_row(src, dst) },
        _ => 0,
    };
    for p in done..dst.len() {
        let hi = src.get(2 * p + 1).map_or(0, |&v| to_f16(v) as u32);
        dst[p] = to_f16(src[2 * p]) as u32 | (hi << 16);
    }
}

/// `src` rounded to f16 (same length).
pub(crate) fn round_u16(kernel: Kernel, src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len());
    let done = match kernel {
        // SAFETY: the CPU has AVX512-FP16 (so AVX512F; checked by the caller).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Fp16 => unsafe { avx512::round_u16(src, dst) },
        // SAFETY: the CPU has FEAT_FP16 (checked by the caller).
        #[cfg(target_arch = "aarch64")]
        Kernel::NeonFp16 => unsafe { neon::round_u16(src, dst) },
        _ => 0,
    };
    src[done..].iter().zip(&mut dst[done..]).for_each(|(s, d)| *d = to_f16(*s));
}

/// `c[i, j] += sum_p a[i, p] b[p, j]` in the f16 arithmetic: `a` is `rows` rows of `k2` f16
/// pairs at stride `rsa`, `b` `n.div_ceil(NR)` packed panels of `k2 x NR` pairs, `c` `rows x n`
/// at row stride `rsc`.
///
/// # Safety
/// `c.add(i * rsc + j)` is writable for `i < rows`, `j < n`, and aliased by nothing else;
/// `kernel` is supported by this CPU.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn product(
    kernel: Kernel,
    a: &[u32],
    rsa: usize,
    rows: usize,
    b: &[u32],
    k2: usize,
    n: usize,
    c: *mut f32,
    rsc: usize,
) {
    let each = |t: &Tile, c: &mut [f32]| match kernel {
        // SAFETY: the CPU has AVX512-FP16 (caller); the tile's bounds hold (`blocked`).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Fp16 => unsafe { avx512::tile(t, c, rsc) },
        // SAFETY: the CPU has FEAT_FP16 (caller); the tile's bounds hold (`blocked`).
        #[cfg(target_arch = "aarch64")]
        Kernel::NeonFp16 => unsafe { neon::tile(t, c, rsc) },
        _ => portable_tile(t, c, rsc),
    };
    // Chunks of KC2 pairs, a multiple of KCH: the runs start at multiples of KCH everywhere.
    debug_assert!(KC2.is_multiple_of(KCH));
    // SAFETY: as the caller promises.
    unsafe { blocked(a, rsa, rows, b, k2, n, c, rsc, kernel.tile(), KC2, each) }
}

/// The arithmetic of the module doc, one value at a time (the reference of the SIMD kernels).
fn portable_tile(t: &Tile, c: &mut [f32], rsc: usize) {
    let lo = |v: u32| from_f16(v as u16);
    let hi = |v: u32| from_f16((v >> 16) as u16);
    for i in 0..t.rows {
        for j in 0..t.cols {
            let out = &mut c[i * rsc + j];
            for run in (0..t.kc2).step_by(KCH) {
                let (mut even, mut odd) = (0f32, 0f32);
                for p in run..(run + KCH).min(t.kc2) {
                    let (a, b) = (t.a[i * t.rsa + p], t.b[p * NR + j]);
                    even = fma16(lo(a), lo(b), even);
                    odd = fma16(hi(a), hi(b), odd);
                }
                *out += even;
                *out += odd;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(test)]
mod tests;
