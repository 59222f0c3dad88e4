//! The aarch64 FEAT_FP16 kernels: the 6 x 16 `fmla v.8h` tile and the rows' rounding.

use std::arch::aarch64::*;

use super::{Tile, KCH, NR};

/// Rows per register tile: 6 rows x 4 registers of accumulators (24), 4 of B, 1 of A.
const MR: usize = 6;

/// The 6 x 16 tile (24 accumulators, 8 f16 lanes each: 4 columns x (even k, odd k)): per K
/// pair, four loads of B, six 32-bit load-and-replicates of A's pair (`ld1r`), 24 `fmla v.8h`;
/// after each run of [`KCH`] pairs the lanes are split into even and odd sums (`xtn`, `shrn`),
/// widened to f32 (`fcvtl`) and added to C.
///
/// # Safety
/// FEAT_FP16 present; `t.a` holds `t.rows` rows of `t.kc2` pairs at stride `t.rsa`, `t.b`
/// `t.kc2` rows at stride [`NR`] (16 pairs read each), `c` `t.rows` rows of `t.cols` (<= 16)
/// values at stride `rsc`.
#[target_feature(enable = "neon,fp16")]
pub(super) unsafe fn tile(t: &Tile, c: &mut [f32], rsc: usize) {
    let (kc2, rows, cols) = (t.kc2, t.rows, t.cols);
    debug_assert!((1..=MR).contains(&rows) && cols <= 16);
    debug_assert!(t.b.len() >= (kc2 - 1) * NR + 16 && t.a.len() > (rows - 1) * t.rsa + kc2 - 1);
    debug_assert!(c.len() >= (rows - 1) * rsc + cols);
    // Rows past `rows` re-read the last row (in bounds); their sums are not stored.
    let rows_at: [*const u32; MR] = std::array::from_fn(|i| unsafe { t.a.as_ptr().add(i.min(rows - 1) * t.rsa) });
    for run in (0..kc2).step_by(KCH) {
        // SAFETY: the run's pairs are inside the chunk (see above).
        let acc = unsafe { sums(t.b.as_ptr(), &rows_at, run, (run + KCH).min(kc2)) };
        for (i, acc) in acc.iter().enumerate() {
            if i >= rows {
                break;
            }
            for (v, x) in acc.iter().enumerate() {
                let j0 = 4 * v;
                if j0 >= cols {
                    break;
                }
                let u = vreinterpretq_u32_f16(*x);
                let even = vcvt_f32_f16(vreinterpret_f16_u16(vmovn_u32(u)));
                let odd = vcvt_f32_f16(vreinterpret_f16_u16(vshrn_n_u32::<16>(u)));
                let row = &mut c[i * rsc + j0..];
                if cols - j0 >= 4 {
                    // SAFETY: 4 values of row i from column j0 are in bounds (j0 + 4 <= cols).
                    unsafe {
                        let p = row.as_mut_ptr();
                        vst1q_f32(p, vaddq_f32(vaddq_f32(vld1q_f32(p), even), odd));
                    }
                } else {
                    let (mut e, mut o) = ([0f32; 4], [0f32; 4]);
                    // SAFETY: 4 values each into local arrays.
                    unsafe {
                        vst1q_f32(e.as_mut_ptr(), even);
                        vst1q_f32(o.as_mut_ptr(), odd);
                    }
                    for (j, d) in row[..cols - j0].iter_mut().enumerate() {
                        *d = *d + e[j] + o[j];
                    }
                }
            }
        }
    }
}

/// One run's f16 sums of the 6 x 16 tile: pairs `p0..p1` of each row times the panel rows (a
/// function of its own, whose accumulators LLVM keeps in registers; inside the run loop it
/// kept them on the stack).
///
/// # Safety
/// FEAT_FP16 present; pairs `p0..p1` of each row and rows `p0..p1` of `b` (stride [`NR`], 16
/// pairs read) are in bounds.
#[inline]
#[target_feature(enable = "neon,fp16")]
unsafe fn sums(b: *const u32, rows_at: &[*const u32; MR], p0: usize, p1: usize) -> [[float16x8_t; 4]; MR] {
    let zero = vreinterpretq_f16_u32(vdupq_n_u32(0));
    let mut acc = [[zero; 4]; MR];
    for p in p0..p1 {
        // SAFETY: p is in bounds (caller).
        unsafe {
            let pb = b.add(p * NR);
            let b: [float16x8_t; 4] = std::array::from_fn(|v| vreinterpretq_f16_u32(vld1q_u32(pb.add(4 * v))));
            for (acc, row) in acc.iter_mut().zip(rows_at) {
                let av = vreinterpretq_f16_u32(vld1q_dup_u32(row.add(p)));
                for (x, b) in acc.iter_mut().zip(&b) {
                    *x = vfmaq_f16(*x, av, *b);
                }
            }
        }
    }
    acc
}

/// The whole 8-value groups of a row rounded to f16 pairs (`fcvtn`, nearest even under the
/// default FPCR); returns how many pairs it wrote (the caller rounds the rest).
///
/// # Safety
/// FEAT_FP16 present; `dst.len() == src.len().div_ceil(2)`.
#[target_feature(enable = "neon,fp16")]
pub(super) unsafe fn round_row(src: &[f32], dst: &mut [u32]) -> usize {
    let whole = src.len() / 8 * 8;
    for (s, d) in src[..whole].chunks_exact(8).zip(dst.chunks_exact_mut(4)) {
        // SAFETY: 8 values in, 4 pairs out.
        unsafe {
            let lo = vcvt_f16_f32(vld1q_f32(s.as_ptr()));
            let hi = vcvt_f16_f32(vld1q_f32(s.as_ptr().add(4)));
            vst1q_u32(d.as_mut_ptr(), vreinterpretq_u32_f16(vcombine_f16(lo, hi)));
        }
    }
    whole / 2
}

/// The whole 8-value groups of `src` rounded to f16 (`fcvtn`); returns how many values it
/// wrote (the caller rounds the rest).
///
/// # Safety
/// FEAT_FP16 present; `dst.len() == src.len()`.
#[target_feature(enable = "neon,fp16")]
pub(super) unsafe fn round_u16(src: &[f32], dst: &mut [u16]) -> usize {
    let whole = src.len() / 8 * 8;
    for (s, d) in src[..whole].chunks_exact(8).zip(dst.chunks_exact_mut(8)) {
        // SAFETY: 8 values in, 8 out.
        unsafe {
            let lo = vcvt_f16_f32(vld1q_f32(s.as_ptr()));
            let hi = vcvt_f16_f32(vld1q_f32(s.as_ptr().add(4)));
            vst1q_u16(d.as_mut_ptr(), vreinterpretq_u16_f16(vcombine_f16(lo, hi)));
        }
    }
    whole
}
