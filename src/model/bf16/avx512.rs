//! The AVX512-BF16 kernels: the 12 x 32 `vdpbf16ps` tile and the row rounding.

use std::arch::x86_64::*;

use super::{MR, NR};

/// The 12 x 32 tile: per K pair, two loads of B, twelve 32-bit broadcasts of A, 24
/// `vdpbf16ps`; C += the sums (masked on the last panel's columns).
///
/// # Safety
/// AVX512-BF16/F/BW/VL present; `a` holds `rows` rows of `kc2` pairs at stride `rsa`, `b`
/// `kc2 x NR` pairs, `c` `rows` rows of `cols` values at stride `rsc`.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn tile(
    kc2: usize,
    a: &[u32],
    rsa: usize,
    b: &[u32],
    c: &mut [f32],
    rsc: usize,
    rows: usize,
    cols: usize,
) {
    debug_assert!(b.len() >= kc2 * NR && a.len() > (rows - 1) * rsa + kc2 - 1);
    debug_assert!(c.len() >= (rows - 1) * rsc + cols);
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    // Rows past `rows` re-read the last row (in bounds); their sums are not stored.
    let rows_at: [*const u32; MR] = std::array::from_fn(|i| unsafe { a.as_ptr().add(i.min(rows - 1) * rsa) });
    let mut pb = b.as_ptr();
    for p in 0..kc2 {
        // SAFETY: p < kc2: inside the panel chunk and each row (see above).
        unsafe {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb as *const __m512i));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(pb.add(16) as *const __m512i));
            for (acc, row) in acc.iter_mut().zip(&rows_at) {
                let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*row.add(p) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
            }
            pb = pb.add(NR);
        }
    }
    let mask = |v: usize| -> __mmask16 {
        let n = cols.saturating_sub(v * 16).min(16);
        ((1u32 << n) - 1) as __mmask16
    };
    let (m0, m1) = (mask(0), mask(1));
    for (i, acc) in acc.iter().enumerate().take(rows) {
        // SAFETY: row i's `cols` values are in bounds (see above); the masks stop at cols.
        unsafe {
            let row = c.as_mut_ptr().add(i * rsc);
            for (v, (x, m)) in acc.iter().zip([m0, m1]).enumerate() {
                let p = row.add(v * 16);
                _mm512_mask_storeu_ps(p, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, p), *x));
            }
        }
    }
}

/// `src` rounded to bf16 (`vcvtneps2bf16`, round to nearest even), 16 values per step.
///
/// # Safety
/// AVX512-BF16/F present; `dst.len() == src.len()`.
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn round_u16(src: &[f32], dst: &mut [u16]) {
    let whole = src.len() / 16 * 16;
    for (s, d) in src[..whole].chunks_exact(16).zip(dst.chunks_exact_mut(16)) {
        // SAFETY: 16 values in, 16 out.
        unsafe {
            let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(s.as_ptr())));
            _mm256_storeu_si256(d.as_mut_ptr() as *mut __m256i, h);
        }
    }
    for i in whole..src.len() {
        dst[i] = super::to_bf16(src[i]);
    }
}

/// One row rounded to bf16 pairs, 16 values per step (`vcvtneps2bf16`, round to nearest
/// even); an odd length pads its last pair with a zero.
///
/// # Safety
/// AVX512-BF16/F present; `dst.len() == src.len().div_ceil(2)`.
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn round_row(src: &[f32], dst: &mut [u32]) {
    let whole = src.len() / 16 * 16;
    for (s, d) in src[..whole].chunks_exact(16).zip(dst.chunks_exact_mut(8)) {
        // SAFETY: 16 values in, 8 pairs out.
        unsafe {
            let h: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(_mm512_loadu_ps(s.as_ptr())));
            _mm256_storeu_si256(d.as_mut_ptr() as *mut __m256i, h);
        }
    }
    for p in whole / 2..dst.len() {
        let hi = src.get(2 * p + 1).map_or(0, |&v| super::to_bf16(v) as u32);
        dst[p] = super::to_bf16(src[2 * p]) as u32 | (hi << 16);
    }
}
