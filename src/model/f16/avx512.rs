//! The AVX512-FP16 kernels: the 12 x 32 `vfmadd231ph` tile and the rows' rounding.

use std::arch::x86_64::*;

use super::{Tile, KCH, NR};

/// Rows per register tile.
const MR: usize = 12;

/// The 12 x 32 tile (24 accumulators, 32 f16 lanes each: 16 columns x (even k, odd k)): per K
/// pair, two loads of B, twelve 32-bit broadcasts of A's pair, 24 `vfmadd231ph`; after each
/// run of [`KCH`] pairs the lanes are split into even and odd sums (`vpmovdw`), widened to f32
/// (`vcvtph2ps`) and added to C (masked on the last panel's columns).
///
/// # Safety
/// AVX512-FP16/F/BW/VL present; `t.a` holds `t.rows` rows of `t.kc2` pairs at stride `t.rsa`,
/// `t.b` `t.kc2` rows at stride [`NR`], `c` `t.rows` rows of `t.cols` (<= 32) values at stride
/// `rsc`.
#[target_feature(enable = "avx512fp16,avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn tile(t: &Tile, c: &mut [f32], rsc: usize) {
    let (kc2, rows, cols) = (t.kc2, t.rows, t.cols);
    debug_assert!((1..=MR).contains(&rows) && cols <= 32);
    debug_assert!(t.b.len() >= (kc2 - 1) * NR + 32 && t.a.len() > (rows - 1) * t.rsa + kc2 - 1);
    debug_assert!(c.len() >= (rows - 1) * rsc + cols);
    // Rows past `rows` re-read the last row (in bounds); their sums are not stored.
    let rows_at: [*const u32; MR] = std::array::from_fn(|i| unsafe { t.a.as_ptr().add(i.min(rows - 1) * t.rsa) });
    let mask = |v: usize| -> __mmask16 {
        let n = cols.saturating_sub(v * 16).min(16);
        ((1u32 << n) - 1) as __mmask16
    };
    let masks = [mask(0), mask(1)];
    for run in (0..kc2).step_by(KCH) {
        // SAFETY: the run's pairs are inside the chunk (see above).
        let acc = unsafe { sums(t.b.as_ptr(), &rows_at, run, (run + KCH).min(kc2)) };
        // Constant bounds (the stores are masked or skipped), so the accumulators stay in
        // registers: a dynamic row count here made LLVM keep them on the stack.
        for (i, acc) in acc.iter().enumerate() {
            if i >= rows {
                break;
            }
            for (v, (x, &m)) in acc.iter().zip(&masks).enumerate() {
                let u = _mm512_castph_si512(*x);
                let even = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(u));
                let odd = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(u)));
                // SAFETY: row i's `cols` values are in bounds (see above); the mask stops at cols.
                unsafe {
                    let p = c.as_mut_ptr().add(i * rsc + v * 16);
                    let sum = _mm512_add_ps(_mm512_add_ps(_mm512_maskz_loadu_ps(m, p), even), odd);
                    _mm512_mask_storeu_ps(p, m, sum);
                }
            }
        }
    }
}

/// One run's f16 sums of the 12 x 32 tile: pairs `p0..p1` of each row times the panel rows.
///
/// # Safety
/// AVX512-FP16 present; pairs `p0..p1` of each row and rows `p0..p1` of `b` (stride [`NR`], 32
/// pairs read) are in bounds.
#[inline]
#[target_feature(enable = "avx512fp16,avx512f,avx512bw,avx512vl")]
unsafe fn sums(b: *const u32, rows_at: &[*const u32; MR], p0: usize, p1: usize) -> [[__m512h; 2]; MR] {
    let mut acc = [[_mm512_setzero_ph(); 2]; MR];
    for p in p0..p1 {
        // SAFETY: p is in bounds (caller).
        unsafe {
            let pb = b.add(p * NR);
            let b0 = _mm512_castsi512_ph(_mm512_loadu_si512(pb as *const __m512i));
            let b1 = _mm512_castsi512_ph(_mm512_loadu_si512(pb.add(16) as *const __m512i));
            for (acc, row) in acc.iter_mut().zip(rows_at) {
                let av = _mm512_castsi512_ph(_mm512_set1_epi32(*row.add(p) as i32));
                acc[0] = _mm512_fmadd_ph(av, b0, acc[0]);
                acc[1] = _mm512_fmadd_ph(av, b1, acc[1]);
            }
        }
    }
    acc
}

/// The whole 16-value groups of a row rounded to f16 pairs (`vcvtps2ph`, nearest even);
/// returns how many pairs it wrote (the caller rounds the rest).
///
/// # Safety
/// AVX512F present; `dst.len() == src.len().div_ceil(2)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn round_row(src: &[f32], dst: &mut [u32]) -> usize {
    let whole = src.len() / 16 * 16;
    for (s, d) in src[..whole].chunks_exact(16).zip(dst.chunks_exact_mut(8)) {
        // SAFETY: 16 values in, 8 pairs out.
        unsafe {
            let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_loadu_ps(s.as_ptr()));
            _mm256_storeu_si256(d.as_mut_ptr() as *mut __m256i, h);
        }
    }
    whole / 2
}

/// The whole 16-value groups of `src` rounded to f16 (`vcvtps2ph`, nearest even); returns how
/// many values it wrote (the caller rounds the rest).
///
/// # Safety
/// AVX512F present; `dst.len() == src.len()`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn round_u16(src: &[f32], dst: &mut [u16]) -> usize {
    let whole = src.len() / 16 * 16;
    for (s, d) in src[..whole].chunks_exact(16).zip(dst.chunks_exact_mut(16)) {
        // SAFETY: 16 values in, 16 out.
        unsafe {
            let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_loadu_ps(s.as_ptr()));
            _mm256_storeu_si256(d.as_mut_ptr() as *mut __m256i, h);
        }
    }
    whole
}
