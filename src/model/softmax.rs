//! The attention's softmax rows (issue #18): the row maximum (with the key bias added on the
//! way) and `exp(x - max)` in place with its sum.
//!
//! At level `avx512` both are ours: a 16-lane exp (Cephes' `expf` polynomial, range reduction by
//! ln 2 in two parts, `vscalefps` for the power of two; within 2 ulp of the f64 exp, checked
//! below), and a maximum with four independent accumulators. tract's `Softmax2` kernel and our
//! portable maximum (16 running maxima the compiler vectorises) were 18% of the fused attention
//! at T = 1028 on the Intel Xeon (`perf`, 1 thread: the exp about 13 cycles per 16 values).
//! At level `avx2` the same exp on 8 lanes (the same bits; `avx2` below). Other levels, and the
//! 16-bit products on every level, keep tract's exp kernel (tract's own dispatch); levels below
//! `avx512` the portable max.
//!
//! The sums run in a fixed lane order, so a row's result depends only on its values (not on
//! where the row sits in memory or which thread runs it).

use tract_core::internal::*;

/// Lanes of the portable maximum's accumulators: wide enough for the compiler to keep them in
/// vector registers (SSE or AVX, whatever the build targets).
const MAX_LANES: usize = 16;

/// `exp(x)` for `x <= -EXP_FLOOR` is 0 (below the smallest f32 denormal): the polynomial's input
/// is clamped there so -inf and the padding's -1e9 give exactly 0.
#[cfg(target_arch = "x86_64")]
const EXP_FLOOR: f32 = 110.0;

/// The largest value of `row`, after adding `bias` to it element-wise when given: one pass
/// instead of an add pass and a max pass. The max of a set is exact in any order, so the result
/// does not depend on the lane split. NaN compares false and is skipped here; it still reaches
/// the output through the exp.
pub fn row_max(row: &mut [f32], bias: Option<&[f32]>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::isa::level() == super::isa::Level::Avx512 {
        // SAFETY: the process's level is supported by this CPU.
        return unsafe { avx512::row_max(row, bias) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        /// SAFETY (of calling it): the CPU has AVX2 (checked above).
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(row: &mut [f32], bias: Option<&[f32]>) -> f32 {
            row_max_body(row, bias)
        }
        // SAFETY: AVX2 is present.
        return unsafe { avx2(row, bias) };
    }
    row_max_body(row, bias)
}

/// The portable maximum (see [`row_max`]).
pub fn row_max_portable(row: &mut [f32], bias: Option<&[f32]>) -> f32 {
    row_max_body(row, bias)
}

#[inline(always)]
fn row_max_body(row: &mut [f32], bias: Option<&[f32]>) -> f32 {
    let mut m = [f32::NEG_INFINITY; MAX_LANES];
    let mut chunks = row.chunks_exact_mut(MAX_LANES);
    match bias {
        Some(b) => {
            let mut bc = b.chunks_exact(MAX_LANES);
            for (c, bb) in (&mut chunks).zip(&mut bc) {
                for ((x, b), m) in c.iter_mut().zip(bb).zip(&mut m) {
                    *x += *b;
                    *m = if *x > *m { *x } else { *m };
                }
            }
            for (x, b) in chunks.into_remainder().iter_mut().zip(bc.remainder()) {
                *x += *b;
                m[0] = if *x > m[0] { *x } else { m[0] };
            }
        }
        None => {
            for c in &mut chunks {
                for (x, m) in c.iter().zip(&mut m) {
                    *m = if *x > *m { *x } else { *m };
                }
            }
            for x in chunks.into_remainder().iter() {
                m[0] = if *x > m[0] { *x } else { m[0] };
            }
        }
    }
    m.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
}

/// The exp-and-sum of a softmax row: tract's kernel, or at levels `avx512` and `avx2` ours (the
/// same arithmetic on 16 or 8 lanes, so the same bits per element).
pub enum ExpSum {
    Tract(Box<dyn tract_linalg::reduce::MapReduce<f32, f32>>),
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl ExpSum {
    /// The one for attention products on `level` (f32) or in a 16-bit format (`half`): ours at
    /// `avx512` and `avx2` in f32; tract's otherwise. The 16-bit products keep tract's exp on every CPU, so
    /// that their masks stay those of the NEON FP16 path on a Jetson (ours flipped 0.2% of an f16
    /// mask's pixels against arm64's, where tract's exp differs by 0.04%: `tools/ci_deploy.sh`).
    pub fn new(level: super::isa::Level, half: bool) -> TractResult<ExpSum> {
        #[cfg(target_arch = "x86_64")]
        if level == super::isa::Level::Avx512 && !half {
            return Ok(ExpSum::Avx512);
        }
        #[cfg(target_arch = "x86_64")]
        if level == super::isa::Level::Avx2 && !half {
            return Ok(ExpSum::Avx2);
        }
        let _ = (level, half);
        Self::tract()
    }

    /// tract's kernel (any CPU).
    pub fn tract() -> TractResult<ExpSum> {
        use tract_linalg::routines::Func;
        Ok(ExpSum::Tract(Func::Softmax2.map_reduce_f32()?))
    }

    /// `row[i] = exp(row[i] - max)`, returning their sum.
    pub fn run(&self, row: &mut [f32], max: f32) -> TractResult<f32> {
        match self {
            ExpSum::Tract(k) => k.run_with_params(row, max),
            // SAFETY: made only when the process's level (supported by this CPU) is avx512.
            #[cfg(target_arch = "x86_64")]
            ExpSum::Avx512 => Ok(unsafe { avx512::exp_sum(row, max) }),
            // SAFETY: made only when the process's level (supported by this CPU) is avx2.
            #[cfg(target_arch = "x86_64")]
            ExpSum::Avx2 => Ok(unsafe { avx2::exp_sum(row, max) }),
        }
    }

    /// Its name, for the bench header.
    pub fn name(&self) -> &'static str {
        match self {
            ExpSum::Tract(_) => "tract-softmax",
            #[cfg(target_arch = "x86_64")]
            ExpSum::Avx512 => "ailurus-softmax-avx512",
            #[cfg(target_arch = "x86_64")]
            ExpSum::Avx2 => "ailurus-softmax-avx2",
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::EXP_FLOOR;

    /// `exp(x)` on 16 lanes (Cephes `expf`): `x = n ln 2 + r`, `|r| <= ln 2 / 2`, `exp(r) = 1 + r
    /// + r^2 P(r)`, times `2^n`.
    #[inline(always)]
    unsafe fn exp16(x: __m512) -> __m512 {
        unsafe {
            let x = _mm512_max_ps(x, _mm512_set1_ps(-EXP_FLOOR));
            let x = _mm512_min_ps(x, _mm512_set1_ps(88.7));
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
                x,
                _mm512_set1_ps(std::f32::consts::LOG2_E),
            ));
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
            let mut p = _mm512_set1_ps(1.987_569_1e-4);
            for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
                p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
            }
            let r2 = _mm512_mul_ps(r, r);
            let e = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
            _mm512_scalef_ps(e, n)
        }
    }

    /// `exp` of 16 values (tests).
    ///
    /// # Safety
    /// AVX-512 F present.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_lanes(x: &[f32; 16]) -> [f32; 16] {
        let mut out = [0f32; 16];
        // SAFETY: 16 values each side.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), exp16(_mm512_loadu_ps(x.as_ptr()))) };
        out
    }

    /// # Safety
    /// AVX-512 F present.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_sum(row: &mut [f32], max: f32) -> f32 {
        unsafe {
            let m = _mm512_set1_ps(max);
            let mut sums = [_mm512_setzero_ps(); 4];
            let mut chunks = row.chunks_exact_mut(64);
            for c in &mut chunks {
                for (i, s) in sums.iter_mut().enumerate() {
                    let p = c.as_mut_ptr().add(16 * i);
                    let e = exp16(_mm512_sub_ps(_mm512_loadu_ps(p), m));
                    _mm512_storeu_ps(p, e);
                    *s = _mm512_add_ps(*s, e);
                }
            }
            for (i, c) in chunks.into_remainder().chunks_mut(16).enumerate() {
                let k: __mmask16 = ((1u32 << c.len()) - 1) as __mmask16;
                let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, c.as_ptr()), m));
                _mm512_mask_storeu_ps(c.as_mut_ptr(), k, e);
                sums[i] = _mm512_add_ps(sums[i], _mm512_maskz_mov_ps(k, e));
            }
            let s = _mm512_add_ps(_mm512_add_ps(sums[0], sums[1]), _mm512_add_ps(sums[2], sums[3]));
            _mm512_reduce_add_ps(s)
        }
    }

    /// # Safety
    /// AVX-512 F present.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn row_max(row: &mut [f32], bias: Option<&[f32]>) -> f32 {
        unsafe {
            let n = row.len();
            let b = bias.map(|b| b[..n].as_ptr());
            let p = row.as_mut_ptr();
            let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
            // `max(x, m)` keeps m where x is NaN (the second operand wins): NaN is skipped.
            let mut m = [ninf; 4];
            let mut i = 0;
            while i + 64 <= n {
                for (j, m) in m.iter_mut().enumerate() {
                    let at = i + 16 * j;
                    let mut x = _mm512_loadu_ps(p.add(at));
                    if let Some(b) = b {
                        x = _mm512_add_ps(x, _mm512_loadu_ps(b.add(at)));
                        _mm512_storeu_ps(p.add(at), x);
                    }
                    *m = _mm512_max_ps(x, *m);
                }
                i += 64;
            }
            while i < n {
                let take = 16.min(n - i);
                let k: __mmask16 = ((1u32 << take) - 1) as __mmask16;
                let mut x = _mm512_mask_loadu_ps(ninf, k, p.add(i));
                if let Some(b) = b {
                    x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(k, b.add(i)));
                    _mm512_mask_storeu_ps(p.add(i), k, x);
                }
                m[0] = _mm512_max_ps(x, m[0]);
                i += take;
            }
            _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m[0], m[1]), _mm512_max_ps(m[2], m[3])))
        }
    }
}

/// [`avx512`]'s exp on 8 lanes (AVX2 + FMA): `roundscale` becomes `round`, and `scalef`'s `2^n`
/// two factors `2^(n/2)` and `2^(n - n/2)` built from exponent bits (each a normal number over
/// the clamped range, `-159 <= n <= 128`; the first product is exact, so the one rounding is
/// `scalef`'s): the same bits as the AVX-512 kernel, lane for lane (tests).
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::EXP_FLOOR;

    #[inline(always)]
    unsafe fn pow2(n: __m256i) -> __m256 {
        unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n, _mm256_set1_epi32(127)))) }
    }

    #[inline(always)]
    unsafe fn exp8(x: __m256) -> __m256 {
        unsafe {
            let x = _mm256_max_ps(x, _mm256_set1_ps(-EXP_FLOOR));
            let x = _mm256_min_ps(x, _mm256_set1_ps(88.7));
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
                x,
                _mm256_set1_ps(std::f32::consts::LOG2_E),
            ));
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
            let mut p = _mm256_set1_ps(1.987_569_1e-4);
            for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
                p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
            }
            let r2 = _mm256_mul_ps(r, r);
            let e = _mm256_fmadd_ps(p, r2, _mm256_add_ps(r, _mm256_set1_ps(1.0)));
            let n = _mm256_cvtps_epi32(n);
            let half = _mm256_srai_epi32::<1>(n);
            _mm256_mul_ps(_mm256_mul_ps(e, pow2(half)), pow2(_mm256_sub_epi32(n, half)))
        }
    }

    /// `exp` of 16 values, 8 at a time (tests).
    ///
    /// # Safety
    /// AVX2 and FMA present.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_lanes(x: &[f32; 16]) -> [f32; 16] {
        let mut out = [0f32; 16];
        // SAFETY: 16 values each side.
        unsafe {
            for h in [0, 8] {
                _mm256_storeu_ps(out.as_mut_ptr().add(h), exp8(_mm256_loadu_ps(x.as_ptr().add(h))));
            }
        }
        out
    }

    /// # Safety
    /// AVX2 and FMA present.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_sum(row: &mut [f32], max: f32) -> f32 {
        unsafe {
            let m = _mm256_set1_ps(max);
            let mut sums = [_mm256_setzero_ps(); 4];
            let mut chunks = row.chunks_exact_mut(32);
            for c in &mut chunks {
                for (i, s) in sums.iter_mut().enumerate() {
                    let p = c.as_mut_ptr().add(8 * i);
                    let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), m));
                    _mm256_storeu_ps(p, e);
                    *s = _mm256_add_ps(*s, e);
                }
            }
            for c in chunks.into_remainder().chunks_mut(8) {
                // The tail through a buffer; its padding's exp is exactly 0 (-inf is clamped).
                let mut buf = [f32::NEG_INFINITY; 8];
                buf[..c.len()].copy_from_slice(c);
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(buf.as_ptr()), m));
                _mm256_storeu_ps(buf.as_mut_ptr(), e);
                c.copy_from_slice(&buf[..c.len()]);
                sums[0] = _mm256_add_ps(sums[0], e);
            }
            let s = _mm256_add_ps(_mm256_add_ps(sums[0], sums[1]), _mm256_add_ps(sums[2], sums[3]));
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), s);
            lanes.iter().sum()
        }
    }
}

/// `exp` of 16 values on the AVX2 kernel (tests; `None` without AVX2 and FMA).
#[cfg(target_arch = "x86_64")]
pub fn exp_avx2(x: &[f32; 16]) -> Option<[f32; 16]> {
    // SAFETY: AVX2 and FMA checked.
    super::isa::Level::Avx2.supported().then(|| unsafe { avx2::exp_lanes(x) })
}

/// `exp` of 16 values on the AVX-512 kernel (tests; `None` without AVX-512).
#[cfg(target_arch = "x86_64")]
pub fn exp_avx512(x: &[f32; 16]) -> Option<[f32; 16]> {
    // SAFETY: AVX-512 F checked.
    std::arch::is_x86_feature_detected!("avx512f").then(|| unsafe { avx512::exp_lanes(x) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within 2 ulp of the f64 exp over the softmax's range (x - max <= 0) and a little above,
    /// exactly 0 far below (padding keys), 1 at 0.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_and_avx2_exp_are_within_2_ulp_of_f64_and_the_same_bits() {
        let mut xs: Vec<f32> = (0..200_000).map(|i| -100.0 + i as f32 * 0.000_55).collect();
        xs.extend([0.0, -0.0, 1.0, 5.0, -87.0, -103.0, -104.0, -109.9, 88.0, 88.7]);
        for c in xs.chunks(16) {
            let mut x = [0f32; 16];
            x[..c.len()].copy_from_slice(c);
            let (e512, e2) = (exp_avx512(&x), exp_avx2(&x));
            if let (Some(a), Some(b)) = (e512, e2) {
                let same = a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "exp({x:?}): avx512 {a:?} vs avx2 {b:?}");
            }
            let Some(e) = e512.or(e2) else {
                eprintln!("neither AVX-512 nor AVX2: skipped");
                return;
            };
            for (x, e) in x.iter().zip(e) {
                let want = (*x as f64).exp();
                if want < f32::MIN_POSITIVE as f64 {
                    // Denormal results: absolute error at most a couple of denormal steps.
                    assert!((e as f64 - want).abs() < 4.0 * 1.4e-45, "exp({x}) = {e}, want {want}");
                    continue;
                }
                let ulp = (want as f32).to_bits().abs_diff(e.to_bits());
                assert!(ulp <= 2, "exp({x}) = {e}, want {want} ({ulp} ulp)");
            }
        }
        let special =
            [f32::NEG_INFINITY, -1e9, -111.0, 0.0, -1e30, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        for e in [exp_avx512(&special), exp_avx2(&special)].into_iter().flatten() {
            assert_eq!(&e[..5], &[0.0, 0.0, 0.0, 1.0, 0.0]);
        }
    }

    /// The row maximum (with and without the key bias) and the exp-sum of every available kernel
    /// against the obvious loops, on lengths around the 16- and 64-lane steps.
    #[test]
    fn row_max_and_exp_sum_match_the_obvious_loops() {
        let mut kernels: Vec<ExpSum> = crate::model::isa::Level::all_supported()
            .into_iter()
            .map(|l| ExpSum::new(l, false).unwrap())
            .filter(|k| !matches!(k, ExpSum::Tract(_)))
            .collect();
        kernels.push(ExpSum::tract().unwrap());
        for n in [1, 5, 15, 16, 17, 63, 64, 65, 100, 1025, 1028] {
            let row: Vec<f32> = (0..n).map(|i| ((i * 7919) % 1000) as f32 / 50.0 - 10.0).collect();
            let bias: Vec<f32> = (0..n).map(|i| if i % 7 == 3 { -1e9 } else { (i % 5) as f32 * 0.25 }).collect();
            for b in [None, Some(&bias[..])] {
                let added: Vec<f32> =
                    row.iter().zip(&bias).map(|(x, y)| if b.is_some() { x + y } else { *x }).collect();
                let want_max = added.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                for f in [row_max, row_max_portable] {
                    let mut r = row.clone();
                    assert_eq!(f(&mut r, b), want_max, "n {n}, bias {}", b.is_some());
                    assert_eq!(r, added, "n {n}: the row holds the biased values");
                }
                for k in &kernels {
                    let mut r = added.clone();
                    let sum = k.run(&mut r, want_max).unwrap();
                    let want: Vec<f64> = added.iter().map(|x| (*x as f64 - want_max as f64).exp()).collect();
                    let want_sum: f64 = want.iter().sum();
                    assert!(
                        ((sum as f64 - want_sum) / want_sum).abs() < 1e-5,
                        "{}: n {n}, sum {sum} vs {want_sum}",
                        k.name()
                    );
                    // x - max is rounded to f32 first (up to 1e-6 of x's size at |x| ~ 20), the
                    // reference subtracts exactly: 3e-6 relative, past 2 ulp of the exp itself.
                    for (x, w) in r.iter().zip(&want) {
                        assert!((*x as f64 - w).abs() <= 3e-6 * w + 1e-37, "{}: n {n}: {x} vs {w}", k.name());
                    }
                }
            }
        }
    }
}
