//! Dot products of the CPU reducers under the arithmetic contract of `kernels/ailurus.cu`, so the
//! CPU and GPU `ailurus` reducers compute bit-identical distances.
//!
//! Owns the one definition of a dot product and the kernels that evaluate it: `dot` (one pair),
//! `sqnorms_t` (every token's |x|^2), `runs` (one token against 8-token runs of a transposed
//! matrix) and `Panel` + `panel_dots` (up to 4 tokens against 16 packed tokens, the GEMM tile).
//! Must not allocate on a warm path, and must not reorder or fuse the arithmetic.
//!
//! Definition: `dot(a, b) = ((0 + a[0] b[0]) + a[1] b[1]) + ... + a[c-1] b[c-1]` in f32, every
//! product and every sum rounded on its own (no FMA), channels in ascending order. The SIMD
//! kernels vectorise across token pairs, never across channels, so each lane runs exactly that
//! sequence; the portable path is the same loop in plain Rust (which never contracts to FMA).

/// Tokens per run of `runs` (one AVX register of f32).
pub const RUN: usize = 8;
/// Tokens per packed panel of `panel_dots`.
pub const PANEL: usize = 16;
/// Rows per `panel_dots` tile.
pub const TILE_ROWS: usize = 4;

/// The dot product of the definition, one pair.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: rows of different lengths");
    let mut acc = 0.0f32;
    for (&x, &y) in a.iter().zip(b) {
        acc += x * y;
    }
    acc
}

/// Leading dimension of the transpose of `n` tokens: room for a full run at every token.
pub fn transposed_ld(n: usize) -> usize {
    (n + RUN).next_multiple_of(RUN)
}

/// `xt[k * ld + i] = x[i * c + k]` with `ld = transposed_ld(n)`; the padding columns are 0.
pub fn transpose(x: &[f32], n: usize, c: usize, xt: &mut Vec<f32>) -> usize {
    let ld = transposed_ld(n);
    xt.clear();
    xt.resize(c * ld, 0.0);
    const B: usize = 16;
    for i0 in (0..n).step_by(B) {
        let i1 = (i0 + B).min(n);
        for k0 in (0..c).step_by(B) {
            let k1 = (k0 + B).min(c);
            for i in i0..i1 {
                for k in k0..k1 {
                    xt[k * ld + i] = x[i * c + k];
                }
            }
        }
    }
    ld
}

/// `out[i] = dot(x_i, x_i)` for every token, from the transpose.
pub fn sqnorms_t(xt: &[f32], ld: usize, n: usize, c: usize, out: &mut Vec<f32>) {
    out.clear();
    out.resize(n.next_multiple_of(RUN), 0.0);
    for j0 in (0..n).step_by(RUN) {
        let mut acc = [0.0f32; RUN];
        for k in 0..c {
            let col = &xt[k * ld + j0..k * ld + j0 + RUN];
            for l in 0..RUN {
                acc[l] += col[l] * col[l];
            }
        }
        out[j0..j0 + RUN].copy_from_slice(&acc);
    }
    out.truncate(n);
}

/// Up to `PANEL` tokens packed channel-major (`data[k * PANEL + l]` = channel k of token l),
/// zero-padded to a full panel.
#[derive(Debug, Default)]
pub struct Panel {
    data: Vec<f32>,
    c: usize,
    /// Valid tokens in the panel.
    pub len: usize,
}

impl Panel {
    /// Pack `rows` (at most `PANEL`, each of length `c`).
    pub fn pack<'a>(&mut self, rows: impl Iterator<Item = &'a [f32]>, c: usize) {
        self.c = c;
        self.data.clear();
        self.data.resize(c * PANEL, 0.0);
        self.len = 0;
        for (l, r) in rows.enumerate() {
            assert!(l < PANEL && r.len() == c, "Panel::pack: too many rows or a short row");
            for (k, &v) in r.iter().enumerate() {
                self.data[k * PANEL + l] = v;
            }
            self.len = l + 1;
        }
    }
}

/// Kernel set: one implementation per instruction set, identical bits.
trait Kern {
    /// # Safety
    /// The CPU supports the instruction set; `xt` holds `c` rows of `ld` with `j0 + RUN <= ld`.
    unsafe fn runs<const R: usize>(xi: &[f32], xt: &[f32], ld: usize, j0: [usize; R]) -> [[f32; RUN]; R];
    /// # Safety
    /// The CPU supports the instruction set; every row of `a` and the panel hold `c` channels.
    unsafe fn tile<const M: usize>(a: [&[f32]; M], p: &[f32], c: usize) -> [[f32; PANEL]; M];
    /// Per row i: min over lanes `l < lim[i]` of `max((sqa[i] + sqp[l]) - 2 dot(a_i, p_l), 0)`
    /// (`+inf` when `lim[i] == 0`).
    ///
    /// # Safety
    /// As `tile`.
    #[inline(always)]
    unsafe fn tile_min<const M: usize>(
        a: [&[f32]; M],
        p: &[f32],
        c: usize,
        sqa: [f32; M],
        sqp: &[f32; PANEL],
        lim: [usize; M],
    ) -> [f32; M] {
        let d = Self::tile::<M>(a, p, c);
        let mut out = [f32::INFINITY; M];
        for i in 0..M {
            for l in 0..lim[i] {
                let t = (sqa[i] + sqp[l]) - 2.0 * d[i][l];
                out[i] = out[i].min(if t > 0.0 { t } else { 0.0 });
            }
        }
        out
    }
}

struct Portable;

impl Kern for Portable {
    #[inline(always)]
    unsafe fn runs<const R: usize>(xi: &[f32], xt: &[f32], ld: usize, j0: [usize; R]) -> [[f32; RUN]; R] {
        let mut acc = [[0.0f32; RUN]; R];
        for (k, &a) in xi.iter().enumerate() {
            for r in 0..R {
                let col = &xt[k * ld + j0[r]..k * ld + j0[r] + RUN];
                for l in 0..RUN {
                    acc[r][l] += a * col[l];
                }
            }
        }
        acc
    }

    #[inline(always)]
    unsafe fn tile<const M: usize>(a: [&[f32]; M], p: &[f32], c: usize) -> [[f32; PANEL]; M] {
        let mut acc = [[0.0f32; PANEL]; M];
        for k in 0..c {
            let b = &p[k * PANEL..(k + 1) * PANEL];
            for i in 0..M {
                let ai = a[i][k];
                for l in 0..PANEL {
                    acc[i][l] += ai * b[l];
                }
            }
        }
        acc
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx;

#[cfg(target_arch = "x86_64")]
impl Kern for Avx {
    #[inline(always)]
    unsafe fn runs<const R: usize>(xi: &[f32], xt: &[f32], ld: usize, j0: [usize; R]) -> [[f32; RUN]; R] {
        use std::arch::x86_64::*;
        debug_assert!(j0.iter().all(|&j| xi.is_empty() || (xi.len() - 1) * ld + j + RUN <= xt.len()));
        let mut acc = [_mm256_setzero_ps(); R];
        let base = xt.as_ptr();
        for (k, &a) in xi.iter().enumerate() {
            let av = _mm256_set1_ps(a);
            for r in 0..R {
                let b = _mm256_loadu_ps(base.add(k * ld + j0[r]));
                acc[r] = _mm256_add_ps(acc[r], _mm256_mul_ps(av, b));
            }
        }
        let mut out = [[0.0f32; RUN]; R];
        for r in 0..R {
            _mm256_storeu_ps(out[r].as_mut_ptr(), acc[r]);
        }
        out
    }

    #[inline(always)]
    unsafe fn tile<const M: usize>(a: [&[f32]; M], p: &[f32], c: usize) -> [[f32; PANEL]; M] {
        use std::arch::x86_64::*;
        debug_assert!(p.len() >= c * PANEL && a.iter().all(|r| r.len() >= c));
        let mut acc = [[_mm256_setzero_ps(); 2]; M];
        for k in 0..c {
            let b0 = _mm256_loadu_ps(p.as_ptr().add(k * PANEL));
            let b1 = _mm256_loadu_ps(p.as_ptr().add(k * PANEL + 8));
            for i in 0..M {
                let av = _mm256_set1_ps(*a[i].get_unchecked(k));
                acc[i][0] = _mm256_add_ps(acc[i][0], _mm256_mul_ps(av, b0));
                acc[i][1] = _mm256_add_ps(acc[i][1], _mm256_mul_ps(av, b1));
            }
        }
        let mut out = [[0.0f32; PANEL]; M];
        for i in 0..M {
            _mm256_storeu_ps(out[i].as_mut_ptr(), acc[i][0]);
            _mm256_storeu_ps(out[i].as_mut_ptr().add(8), acc[i][1]);
        }
        out
    }

    #[inline(always)]
    unsafe fn tile_min<const M: usize>(
        a: [&[f32]; M],
        p: &[f32],
        c: usize,
        sqa: [f32; M],
        sqp: &[f32; PANEL],
        lim: [usize; M],
    ) -> [f32; M] {
        use std::arch::x86_64::*;
        let d = Self::tile::<M>(a, p, c);
        let (two, zero, inf) = (_mm256_set1_ps(2.0), _mm256_setzero_ps(), _mm256_set1_ps(f32::INFINITY));
        let lanes =
            [_mm256_setr_ps(0., 1., 2., 3., 4., 5., 6., 7.), _mm256_setr_ps(8., 9., 10., 11., 12., 13., 14., 15.)];
        let mut out = [f32::INFINITY; M];
        for i in 0..M {
            let (sa, li) = (_mm256_set1_ps(sqa[i]), _mm256_set1_ps(lim[i] as f32));
            let mut m = inf;
            for (h, &lane) in lanes.iter().enumerate() {
                let g = _mm256_loadu_ps(d[i].as_ptr().add(8 * h));
                let t =
                    _mm256_sub_ps(_mm256_add_ps(sa, _mm256_loadu_ps(sqp.as_ptr().add(8 * h))), _mm256_mul_ps(two, g));
                // max(t, 0) takes the second operand for NaN, like the scalar `if t > 0 { t } else { 0 }`.
                let t = _mm256_max_ps(t, zero);
                let keep = _mm256_cmp_ps::<_CMP_LT_OQ>(lane, li);
                m = _mm256_min_ps(m, _mm256_blendv_ps(inf, t, keep));
            }
            let m4 = _mm_min_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
            let m2 = _mm_min_ps(m4, _mm_movehl_ps(m4, m4));
            let m1 = _mm_min_ss(m2, _mm_shuffle_ps::<1>(m2, m2));
            out[i] = _mm_cvtss_f32(m1);
        }
        out
    }
}

/// # Safety
/// The CPU supports `K`'s instruction set; every `j0 + RUN <= ld` and `xt` is `[c, ld]`.
#[inline(always)]
unsafe fn runs_body<K: Kern>(xi: &[f32], xt: &[f32], ld: usize, j0s: &[usize], out: &mut [[f32; RUN]]) {
    // Up to 6 runs per pass: independent accumulators hide the add latency.
    for (j0, o) in j0s.chunks(6).zip(out.chunks_mut(6)) {
        match *j0 {
            [a, b, c, d, e, f] => o.copy_from_slice(&K::runs::<6>(xi, xt, ld, [a, b, c, d, e, f])),
            [a, b, c, d, e] => o[..5].copy_from_slice(&K::runs::<5>(xi, xt, ld, [a, b, c, d, e])),
            [a, b, c, d] => o[..4].copy_from_slice(&K::runs::<4>(xi, xt, ld, [a, b, c, d])),
            [a, b, c] => o[..3].copy_from_slice(&K::runs::<3>(xi, xt, ld, [a, b, c])),
            [a, b] => o[..2].copy_from_slice(&K::runs::<2>(xi, xt, ld, [a, b])),
            [a] => o[0] = K::runs::<1>(xi, xt, ld, [a])[0],
            _ => unreachable!("chunks(6) yields 1..=6 runs"),
        }
    }
}

/// # Safety
/// The CPU supports `K`'s instruction set; rows and panel hold `c` channels.
#[inline(always)]
unsafe fn tile_body<K: Kern>(a: &[&[f32]], p: &[f32], c: usize, out: &mut [[f32; PANEL]]) {
    if a.len() == TILE_ROWS {
        out[..TILE_ROWS].copy_from_slice(&K::tile::<TILE_ROWS>([a[0], a[1], a[2], a[3]], p, c));
    } else {
        for (i, r) in a.iter().enumerate() {
            out[i] = K::tile::<1>([r], p, c)[0];
        }
    }
}

/// # Safety
/// The CPU supports `K`'s instruction set; rows and panel hold `c` channels.
#[inline(always)]
unsafe fn tile_min_body<K: Kern>(
    a: &[&[f32]],
    p: &[f32],
    c: usize,
    sqa: &[f32],
    sqp: &[f32; PANEL],
    lim: &[usize],
    mins: &mut [f32],
) {
    let r: &[f32] = if a.len() == TILE_ROWS {
        &K::tile_min::<TILE_ROWS>(
            [a[0], a[1], a[2], a[3]],
            p,
            c,
            [sqa[0], sqa[1], sqa[2], sqa[3]],
            sqp,
            [lim[0], lim[1], lim[2], lim[3]],
        )
    } else {
        for i in 0..a.len() {
            let v = K::tile_min::<1>([a[i]], p, c, [sqa[i]], sqp, [lim[i]])[0];
            mins[i] = mins[i].min(v);
        }
        return;
    };
    for (m, &v) in mins.iter_mut().zip(r) {
        *m = m.min(v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn tile_min_avx(
    a: &[&[f32]],
    p: &[f32],
    c: usize,
    sqa: &[f32],
    sqp: &[f32; PANEL],
    lim: &[usize],
    mins: &mut [f32],
) {
    tile_min_body::<Avx>(a, p, c, sqa, sqp, lim, mins)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn runs_avx(xi: &[f32], xt: &[f32], ld: usize, j0s: &[usize], out: &mut [[f32; RUN]]) {
    runs_body::<Avx>(xi, xt, ld, j0s, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn tile_avx(a: &[&[f32]], p: &[f32], c: usize, out: &mut [[f32; PANEL]]) {
    tile_body::<Avx>(a, p, c, out)
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn has_avx() -> bool {
    std::is_x86_feature_detected!("avx")
}

/// `out[t][l] = dot(xi, x[j0s[t] + l])` for `l < RUN`, where `xt` is the transpose of `x`
/// (`transpose`, leading dimension `ld`) and `xi` has the channel count of `x`.
pub fn runs(xi: &[f32], xt: &[f32], ld: usize, j0s: &[usize], out: &mut [[f32; RUN]]) {
    let c = xi.len();
    assert!(out.len() >= j0s.len(), "runs: output too short");
    assert!(j0s.iter().all(|&j| j + RUN <= ld) && xt.len() >= c * ld, "runs: run outside the transpose");
    #[cfg(target_arch = "x86_64")]
    if has_avx() {
        // SAFETY: AVX is present (checked just above); bounds asserted above.
        unsafe { runs_avx(xi, xt, ld, j0s, out) };
        return;
    }
    // SAFETY: the portable kernel runs anywhere; bounds asserted above.
    unsafe { runs_body::<Portable>(xi, xt, ld, j0s, out) }
}

/// `out[i][l] = dot(a[i], panel token l)` for `a.len() <= TILE_ROWS` rows of `c` channels
/// (lanes past `panel.len` are dots with zero padding).
pub fn panel_dots(a: &[&[f32]], panel: &Panel, out: &mut [[f32; PANEL]]) {
    let c = panel.c;
    assert!(a.len() <= TILE_ROWS && out.len() >= a.len(), "panel_dots: too many rows");
    assert!(a.iter().all(|r| r.len() == c) && panel.data.len() == c * PANEL, "panel_dots: bad lengths");
    #[cfg(target_arch = "x86_64")]
    if has_avx() {
        // SAFETY: AVX is present (checked just above); lengths asserted above.
        unsafe { tile_avx(a, &panel.data, c, out) };
        return;
    }
    // SAFETY: the portable kernel runs anywhere; lengths asserted above.
    unsafe { tile_body::<Portable>(a, &panel.data, c, out) }
}

/// For each row i of `a` (at most `TILE_ROWS`): `mins[i] = min(mins[i], min over lanes
/// l < lim[i] of max((sqa[i] + sqp[l]) - 2 dot(a_i, panel token l), 0))`: the clamped t of the
/// distance contract, minimised without leaving registers.
pub fn panel_min_t(a: &[&[f32]], panel: &Panel, sqa: &[f32], sqp: &[f32; PANEL], lim: &[usize], mins: &mut [f32]) {
    let c = panel.c;
    let rows = a.len();
    assert!(rows <= TILE_ROWS && sqa.len() >= rows && lim.len() >= rows && mins.len() >= rows, "panel_min_t: lengths");
    assert!(a.iter().all(|r| r.len() == c) && panel.data.len() == c * PANEL, "panel_min_t: bad lengths");
    assert!(lim[..rows].iter().all(|&l| l <= PANEL), "panel_min_t: lane limit past the panel");
    #[cfg(target_arch = "x86_64")]
    if has_avx() {
        // SAFETY: AVX is present (checked just above); lengths asserted above.
        unsafe { tile_min_avx(a, &panel.data, c, sqa, sqp, lim, mins) };
        return;
    }
    // SAFETY: the portable kernel runs anywhere; lengths asserted above.
    unsafe { tile_min_body::<Portable>(a, &panel.data, c, sqa, sqp, lim, mins) }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)] // parallel arrays compared index by index
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn every_kernel_gives_the_bits_of_the_sequential_loop() {
        let mut s = 7;
        for (n, c) in [(1, 1), (5, 3), (21, 13), (40, 384)] {
            let x: Vec<f32> = (0..n * c).map(|_| lcg(&mut s) * 10.0).collect();
            let row = |i: usize| &x[i * c..(i + 1) * c];
            let mut xt = Vec::new();
            let ld = transpose(&x, n, c, &mut xt);
            let mut sq = Vec::new();
            sqnorms_t(&xt, ld, n, c, &mut sq);
            for i in 0..n {
                assert_eq!(sq[i].to_bits(), dot(row(i), row(i)).to_bits(), "sqnorm n={n} c={c}");
            }
            // Runs at every start, both dispatches.
            let j0s: Vec<usize> = (0..n).rev().collect();
            let (mut got, mut portable) = (vec![[0.0; RUN]; n], vec![[0.0; RUN]; n]);
            for i in 0..n {
                runs(row(i), &xt, ld, &j0s, &mut got);
                // SAFETY: the portable kernel runs anywhere; runs() checked the bounds.
                unsafe { runs_body::<Portable>(row(i), &xt, ld, &j0s, &mut portable) };
                for (t, &j0) in j0s.iter().enumerate() {
                    assert_eq!(bits(&got[t]), bits(&portable[t]), "runs dispatch n={n} c={c}");
                    for l in 0..RUN.min(n - j0) {
                        assert_eq!(got[t][l].to_bits(), dot(row(i), row(j0 + l)).to_bits(), "runs n={n} c={c}");
                    }
                }
            }
            // Panels of every size against tiles of 1..=4 rows.
            let mut p = Panel::default();
            for p0 in (0..n).step_by(PANEL) {
                let p1 = (p0 + PANEL).min(n);
                p.pack((p0..p1).map(row), c);
                assert_eq!(p.len, p1 - p0);
                for rows in 1..=TILE_ROWS.min(n) {
                    let a: Vec<&[f32]> = (0..rows).map(|q| row((q * 7) % n)).collect();
                    let (mut got, mut portable) = ([[0.0; PANEL]; TILE_ROWS], [[0.0; PANEL]; TILE_ROWS]);
                    panel_dots(&a, &p, &mut got);
                    // SAFETY: the portable kernel runs anywhere; panel_dots() checked the lengths.
                    unsafe { tile_body::<Portable>(&a, &p.data, c, &mut portable) };
                    for q in 0..rows {
                        assert_eq!(bits(&got[q]), bits(&portable[q]), "tile dispatch");
                        for l in 0..p.len {
                            let want = dot(a[q], row(p0 + l));
                            assert_eq!(got[q][l].to_bits(), want.to_bits(), "tile n={n} c={c}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn panel_min_t_is_the_scalar_min_of_the_clamped_t() {
        let mut s = 11;
        for (n, c) in [(9, 5), (40, 384)] {
            let x: Vec<f32> = (0..n * c).map(|_| lcg(&mut s)).collect();
            let row = |i: usize| &x[i * c..(i + 1) * c];
            let sq: Vec<f32> = (0..n).map(|i| dot(row(i), row(i))).collect();
            let mut p = Panel::default();
            let p1 = PANEL.min(n);
            p.pack((0..p1).map(row), c);
            let mut sqp = [f32::INFINITY; PANEL];
            sqp[..p1].copy_from_slice(&sq[..p1]);
            for rows in [1, TILE_ROWS] {
                let a: Vec<&[f32]> = (0..rows).map(|q| row(n - 1 - q)).collect();
                let sqa: Vec<f32> = (0..rows).map(|q| sq[n - 1 - q]).collect();
                for lim in [0, 1, 3, p1] {
                    let lims = vec![lim; rows];
                    let mut mins = vec![0.5f32; rows];
                    let mut portable = mins.clone();
                    panel_min_t(&a, &p, &sqa, &sqp, &lims, &mut mins);
                    // SAFETY: the portable kernel runs anywhere; panel_min_t() checked lengths.
                    unsafe { tile_min_body::<Portable>(&a, &p.data, c, &sqa, &sqp, &lims, &mut portable) };
                    for q in 0..rows {
                        let want = (0..lim).fold(0.5f32, |m, l| {
                            let t = (sqa[q] + sqp[l]) - 2.0 * dot(a[q], row(l));
                            m.min(if t > 0.0 { t } else { 0.0 })
                        });
                        assert_eq!(mins[q].to_bits(), want.to_bits(), "n={n} rows={rows} lim={lim}");
                        assert_eq!(portable[q].to_bits(), want.to_bits(), "portable n={n} rows={rows} lim={lim}");
                    }
                }
            }
        }
    }

    #[test]
    fn dot_is_symmetric_and_exact_against_f64_on_small_integers() {
        let a: Vec<f32> = (0..384).map(|k| (k % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..384).map(|k| (k % 5) as f32 - 2.0).collect();
        assert_eq!(dot(&a, &b).to_bits(), dot(&b, &a).to_bits());
        let exact: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
        assert_eq!(dot(&a, &b) as f64, exact);
    }
}
