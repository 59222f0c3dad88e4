//! Dot-product kernels of the CPU reducers, with ONE bit-exact definition of a dot product.
//!
//! Owns `dot`, `dots_gather` (one row against a list of rows) and `dot_block` (a block of rows
//! against a block of rows, the GEMM of the reducers). Every path, whatever its tiling or SIMD
//! width, returns the same bits for the same pair of rows, so a distance is the same number
//! wherever it is computed (and identical tokens are at distance exactly 0). Must not allocate.
//!
//! Definition (the CUDA side can reproduce it exactly): for rows `a`, `b` of length `c`,
//! `acc[l]` (l in 0..8) starts at +0.0 and runs `acc[l] = fma(a[k], b[k], acc[l])` over
//! `k = l, l + 8, l + 16, ... < c` in ascending order; the result is
//! `((acc0 + acc1) + (acc2 + acc3)) + ((acc4 + acc5) + (acc6 + acc7))`, all in f32.

/// Lanes of the definition (one AVX register of f32).
pub const LANES: usize = 8;
/// Rows of `b` kept hot in L2 while `a` streams past them.
const B_BLOCK: usize = 64;

#[inline(always)]
fn tree(acc: &[f32; LANES]) -> f32 {
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
}

/// `out[i][j] = dot(a[i], b[j])` for an `MR x NR` tile (rows already cut to length `c`).
#[inline(always)]
fn tile<const MR: usize, const NR: usize>(a: [&[f32]; MR], b: [&[f32]; NR], c: usize) -> [[f32; NR]; MR] {
    let mut acc = [[[0.0f32; LANES]; NR]; MR];
    let full = c / LANES * LANES;
    let mut k = 0;
    while k < full {
        let mut av = [[0.0f32; LANES]; MR];
        let mut bv = [[0.0f32; LANES]; NR];
        for i in 0..MR {
            av[i].copy_from_slice(&a[i][k..k + LANES]);
        }
        for j in 0..NR {
            bv[j].copy_from_slice(&b[j][k..k + LANES]);
        }
        fma_step(&mut acc, &av, &bv);
        k += LANES;
    }
    if k < c {
        // Zero padding: fma(0, 0, acc) == acc, so the tail follows the definition exactly.
        let mut av = [[0.0f32; LANES]; MR];
        let mut bv = [[0.0f32; LANES]; NR];
        for i in 0..MR {
            av[i][..c - k].copy_from_slice(&a[i][k..c]);
        }
        for j in 0..NR {
            bv[j][..c - k].copy_from_slice(&b[j][k..c]);
        }
        fma_step(&mut acc, &av, &bv);
    }
    let mut out = [[0.0f32; NR]; MR];
    for i in 0..MR {
        for j in 0..NR {
            out[i][j] = tree(&acc[i][j]);
        }
    }
    out
}

#[inline(always)]
fn fma_step<const MR: usize, const NR: usize>(
    acc: &mut [[[f32; LANES]; NR]; MR],
    av: &[[f32; LANES]; MR],
    bv: &[[f32; LANES]; NR],
) {
    for i in 0..MR {
        for j in 0..NR {
            for l in 0..LANES {
                acc[i][j][l] = av[i][l].mul_add(bv[j][l], acc[i][j][l]);
            }
        }
    }
}

/// A tile kernel: `tile::<MR, NR>` as defined above (one implementation per instruction set).
trait Kern {
    /// # Safety
    /// The CPU must support the kernel's instruction set, and every row must hold `c` values.
    unsafe fn tile<const MR: usize, const NR: usize>(a: [&[f32]; MR], b: [&[f32]; NR], c: usize) -> [[f32; NR]; MR];
}

/// Plain Rust (`mul_add`), for any CPU.
struct Portable;

impl Kern for Portable {
    #[inline(always)]
    unsafe fn tile<const MR: usize, const NR: usize>(a: [&[f32]; MR], b: [&[f32]; NR], c: usize) -> [[f32; NR]; MR] {
        tile(a, b, c)
    }
}

/// AVX2 + FMA intrinsics: one `__m256` accumulator per pair holds the 8 lanes.
#[cfg(target_arch = "x86_64")]
struct Avx;

#[cfg(target_arch = "x86_64")]
impl Kern for Avx {
    #[inline(always)]
    unsafe fn tile<const MR: usize, const NR: usize>(a: [&[f32]; MR], b: [&[f32]; NR], c: usize) -> [[f32; NR]; MR] {
        use std::arch::x86_64::*;
        debug_assert!(a.iter().chain(b.iter()).all(|r| r.len() >= c));
        let mut acc = [[_mm256_setzero_ps(); NR]; MR];
        let full = c / LANES * LANES;
        let mut k = 0;
        while k < full {
            let mut av = [_mm256_setzero_ps(); MR];
            for i in 0..MR {
                av[i] = _mm256_loadu_ps(a[i].as_ptr().add(k));
            }
            for j in 0..NR {
                let bv = _mm256_loadu_ps(b[j].as_ptr().add(k));
                for i in 0..MR {
                    acc[i][j] = _mm256_fmadd_ps(av[i], bv, acc[i][j]);
                }
            }
            k += LANES;
        }
        if k < c {
            let pad = |r: &[f32]| {
                let mut t = [0.0f32; LANES];
                t[..c - k].copy_from_slice(&r[k..c]);
                _mm256_loadu_ps(t.as_ptr())
            };
            for j in 0..NR {
                let bv = pad(b[j]);
                for i in 0..MR {
                    acc[i][j] = _mm256_fmadd_ps(pad(a[i]), bv, acc[i][j]);
                }
            }
        }
        let mut out = [[0.0f32; NR]; MR];
        for i in 0..MR {
            let mut j = 0;
            // Four sums at once; hadd, hadd, low + high is exactly `tree` for each of them.
            while j + 4 <= NR {
                let h01 = _mm256_hadd_ps(acc[i][j], acc[i][j + 1]);
                let h23 = _mm256_hadd_ps(acc[i][j + 2], acc[i][j + 3]);
                let h = _mm256_hadd_ps(h01, h23);
                let r = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
                _mm_storeu_ps(out[i][j..j + 4].as_mut_ptr(), r);
                j += 4;
            }
            while j < NR {
                let mut lanes = [0.0f32; LANES];
                _mm256_storeu_ps(lanes.as_mut_ptr(), acc[i][j]);
                out[i][j] = tree(&lanes);
                j += 1;
            }
        }
        out
    }
}

#[inline(always)]
fn row(x: &[f32], c: usize, i: usize) -> &[f32] {
    &x[i * c..(i + 1) * c]
}

/// # Safety
/// The CPU must support `K`'s instruction set.
#[inline(always)]
unsafe fn gather_body<K: Kern>(x: &[f32], c: usize, a: &[f32], js: &[u32], out: &mut [f32]) {
    let a = &a[..c];
    let mut t = 0;
    while t + 4 <= js.len() {
        let b = [
            row(x, c, js[t] as usize),
            row(x, c, js[t + 1] as usize),
            row(x, c, js[t + 2] as usize),
            row(x, c, js[t + 3] as usize),
        ];
        let r = K::tile::<1, 4>([a], b, c);
        out[t..t + 4].copy_from_slice(&r[0]);
        t += 4;
    }
    while t < js.len() {
        out[t] = K::tile::<1, 1>([a], [row(x, c, js[t] as usize)], c)[0][0];
        t += 1;
    }
}

/// # Safety
/// The CPU must support `K`'s instruction set.
#[inline(always)]
unsafe fn block_body<K: Kern>(a: &[f32], ma: usize, b: &[f32], nb: usize, c: usize, out: &mut [f32], ldo: usize) {
    let mut j0 = 0;
    while j0 < nb {
        let j1 = (j0 + B_BLOCK).min(nb);
        let mut i = 0;
        while i + 3 <= ma {
            let ar = [row(a, c, i), row(a, c, i + 1), row(a, c, i + 2)];
            let mut j = j0;
            while j + 4 <= j1 {
                let br = [row(b, c, j), row(b, c, j + 1), row(b, c, j + 2), row(b, c, j + 3)];
                let r = K::tile::<3, 4>(ar, br, c);
                for (di, rr) in r.iter().enumerate() {
                    out[(i + di) * ldo + j..(i + di) * ldo + j + 4].copy_from_slice(rr);
                }
                j += 4;
            }
            while j < j1 {
                let r = K::tile::<3, 1>(ar, [row(b, c, j)], c);
                for (di, rr) in r.iter().enumerate() {
                    out[(i + di) * ldo + j] = rr[0];
                }
                j += 1;
            }
            i += 3;
        }
        while i < ma {
            let ar = [row(a, c, i)];
            let mut j = j0;
            while j + 4 <= j1 {
                let br = [row(b, c, j), row(b, c, j + 1), row(b, c, j + 2), row(b, c, j + 3)];
                out[i * ldo + j..i * ldo + j + 4].copy_from_slice(&K::tile::<1, 4>(ar, br, c)[0]);
                j += 4;
            }
            while j < j1 {
                out[i * ldo + j] = K::tile::<1, 1>(ar, [row(b, c, j)], c)[0][0];
                j += 1;
            }
            i += 1;
        }
        j0 = j1;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gather_fma(x: &[f32], c: usize, a: &[f32], js: &[u32], out: &mut [f32]) {
    gather_body::<Avx>(x, c, a, js, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_fma(a: &[f32], ma: usize, b: &[f32], nb: usize, c: usize, out: &mut [f32], ldo: usize) {
    block_body::<Avx>(a, ma, b, nb, c, out, ldo)
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn has_fma() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

/// The dot product of the definition above (`a.len() == b.len()`).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: rows of different lengths");
    let mut out = [0.0f32];
    dots_gather(b, b.len(), a, &[0], &mut out);
    out[0]
}

/// `out[t] = dot(a, x[js[t]])`, where `x` is `[_, c]` row-major and `a` has length `c`.
pub fn dots_gather(x: &[f32], c: usize, a: &[f32], js: &[u32], out: &mut [f32]) {
    assert!(a.len() == c && out.len() >= js.len(), "dots_gather: bad lengths");
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { gather_fma(x, c, a, js, out) };
        return;
    }
    // SAFETY: the portable kernel runs anywhere.
    unsafe { gather_body::<Portable>(x, c, a, js, out) }
}

/// `out[i * ldo + j] = dot(a[i], b[j])` for `i < ma`, `j < nb`; `a` is `[ma, c]`, `b` is
/// `[nb, c]`, both row-major (A times B transposed).
pub fn dot_block(a: &[f32], ma: usize, b: &[f32], nb: usize, c: usize, out: &mut [f32], ldo: usize) {
    assert!(a.len() >= ma * c && b.len() >= nb * c, "dot_block: inputs too short");
    assert!(nb <= ldo && (ma == 0 || out.len() >= (ma - 1) * ldo + nb), "dot_block: output too short");
    #[cfg(target_arch = "x86_64")]
    if has_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { block_fma(a, ma, b, nb, c, out, ldo) };
        return;
    }
    // SAFETY: the portable kernel runs anywhere.
    unsafe { block_body::<Portable>(a, ma, b, nb, c, out, ldo) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// The definition, written out with scalar fused multiply-adds.
    fn spec_dot(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0.0f32; LANES];
        for k in 0..a.len() {
            acc[k % LANES] = a[k].mul_add(b[k], acc[k % LANES]);
        }
        tree(&acc)
    }

    #[test]
    fn every_path_gives_the_bits_of_the_definition() {
        let mut s = 7;
        for c in [1, 3, 8, 13, 64, 385] {
            let (ma, nb) = (7, 70);
            let a: Vec<f32> = (0..ma * c).map(|_| lcg(&mut s) * 10.0).collect();
            let b: Vec<f32> = (0..nb * c).map(|_| lcg(&mut s)).collect();
            let mut blk = vec![0.0; ma * (nb + 3)];
            dot_block(&a, ma, &b, nb, c, &mut blk, nb + 3);
            let mut portable = vec![0.0; ma * (nb + 3)];
            // SAFETY: the portable kernel runs anywhere.
            unsafe { block_body::<Portable>(&a, ma, &b, nb, c, &mut portable, nb + 3) };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&blk), bits(&portable), "dispatched vs portable, c={c}");
            let js: Vec<u32> = (0..nb as u32).rev().collect();
            let mut g = vec![0.0; nb];
            for i in 0..ma {
                let ai = &a[i * c..(i + 1) * c];
                dots_gather(&b, c, ai, &js, &mut g);
                for j in 0..nb {
                    let bj = &b[j * c..(j + 1) * c];
                    let want = spec_dot(ai, bj);
                    assert_eq!(blk[i * (nb + 3) + j].to_bits(), want.to_bits(), "block c={c} {i},{j}");
                    assert_eq!(g[nb - 1 - j].to_bits(), want.to_bits(), "gather c={c} {i},{j}");
                    assert_eq!(dot(ai, bj).to_bits(), want.to_bits(), "dot c={c}");
                    let exact: f64 = ai.iter().zip(bj).map(|(&x, &y)| x as f64 * y as f64).sum();
                    assert!((want as f64 - exact).abs() < 1e-4 * (1.0 + exact.abs()), "c={c}");
                }
            }
        }
    }

    #[test]
    fn dot_is_symmetric_and_self_distance_cancels() {
        let mut s = 3;
        let a: Vec<f32> = (0..384).map(|_| lcg(&mut s) * 30.0).collect();
        let b: Vec<f32> = (0..384).map(|_| lcg(&mut s)).collect();
        assert_eq!(dot(&a, &b).to_bits(), dot(&b, &a).to_bits());
        let n = dot(&a, &a);
        assert_eq!((n + n) - 2.0 * n, 0.0);
    }
}
