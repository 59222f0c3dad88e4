//! The AVX2 + FMA tile (`Level::Avx2`) on the AVX-512 tile's packed panels (`kc x 32`, so a
//! weight is packed once in one format whatever the level): 6 rows by the panel's 32 columns,
//! run as two 16-column halves of 12 ymm sums each (with the two B vectors and A's broadcast,
//! 15 of the 16 registers). Its stores' tail adds the bias and residual and applies the GELU
//! like the AVX-512 tile's ([`super::Tail`]). Own code rather than the `gemm` crate (whose
//! AVX2 kernel the level used before) because the crate packs B on every call and takes no
//! bias, residual or activation: numbers in `gemm_shapes` and the README.

use std::arch::x86_64::*;

use super::{Erf, Store};

const MR: usize = 6;
/// The packed panel's width ([`super::PackedF32::NR`]).
const NR: usize = 32;

/// [`kernel_runs`] over one run, then the rest of `store` ([`tail`]).
///
/// # Safety
/// As [`kernel_runs`]; the store's bias (`cols` values) and residual (`rows x cols` at stride
/// `rsc`) are in bounds where not null.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn kernel_tail(
    kc: usize,
    pa: *const f32,
    rsa: usize,
    pb: *const f32,
    c: *mut f32,
    rsc: usize,
    rows: usize,
    cols: usize,
    store: &Store,
) {
    // SAFETY: as the caller promises.
    unsafe {
        kernel_runs(&[(pa, pb, kc)], rsa, c, rsc, rows, cols, store.first);
        if store.first || store.gelu.is_some() {
            tail(c, rsc, rows, cols, store);
        }
    }
}

/// The tile (`rows <= 6`, `cols <= 32`) summed over several runs `(A, packed B panel, kc)`
/// before C is touched once per half: per run, its A rows (at stride `rsa`) times its panel.
///
/// # Safety
/// AVX2 and FMA present; every run's A rows hold kc values, its panel kc x 32; C's `rows x
/// cols` at row stride `rsc` are in bounds.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn kernel_runs(
    runs: &[(*const f32, *const f32, usize)],
    rsa: usize,
    c: *mut f32,
    rsc: usize,
    rows: usize,
    cols: usize,
    first: bool,
) {
    unsafe {
        for half in 0..cols.div_ceil(16) {
            let mut acc = [[_mm256_setzero_ps(); 2]; MR];
            for &(pa, pb, kc) in runs {
                acc = run(acc, kc, pa, rsa, pb.add(half * 16), rows);
            }
            let n = (cols - half * 16).min(16);
            let c = c.add(half * 16);
            if n == 16 {
                // Whole vectors (every linear layer's N is a multiple of 32): plain moves, as
                // AVX2's masked store is slow on AMD cores.
                for (i, acc) in acc.iter().enumerate().take(rows) {
                    let row = c.add(i * rsc);
                    for (v, x) in acc.iter().enumerate() {
                        let p = row.add(v * 8);
                        let x = if first { *x } else { _mm256_add_ps(_mm256_loadu_ps(p), *x) };
                        _mm256_storeu_ps(p, x);
                    }
                }
                continue;
            }
            let masks = [mask(n), mask(n.saturating_sub(8))];
            for (i, acc) in acc.iter().enumerate().take(rows) {
                let row = c.add(i * rsc);
                for (v, (x, m)) in acc.iter().zip(masks).enumerate() {
                    let p = row.add(v * 8);
                    let x = if first { *x } else { _mm256_add_ps(_mm256_maskload_ps(p, m), *x) };
                    _mm256_maskstore_ps(p, m, x);
                }
            }
        }
    }
}

/// Lanes `0..n` (n <= 8) set.
#[inline(always)]
unsafe fn mask(n: usize) -> __m256i {
    unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)) }
}

/// The rest of `store` on the tile just written (in L1): `bias + residual` added on the first
/// K chunk, the GELU on the last; as the AVX-512 tile's `tail`, 8 lanes at a time.
///
/// # Safety
/// As [`kernel_tail`].
#[inline(never)]
#[target_feature(enable = "avx2,fma")]
unsafe fn tail(c: *mut f32, rsc: usize, rows: usize, cols: usize, store: &Store) {
    unsafe {
        let vectors = cols.div_ceil(8);
        let masks: [__m256i; 4] = std::array::from_fn(|v| mask(cols.saturating_sub(v * 8)));
        let full: [bool; 4] = std::array::from_fn(|v| cols >= (v + 1) * 8);
        let load = |p: *const f32, v: usize| if full[v] { _mm256_loadu_ps(p) } else { _mm256_maskload_ps(p, masks[v]) };
        let bias: [__m256; 4] = std::array::from_fn(|v| {
            if store.bias.is_null() || v >= vectors {
                _mm256_setzero_ps()
            } else {
                load(store.bias.add(v * 8), v)
            }
        });
        #[allow(clippy::redundant_closure)] // a target_feature fn is not an FnOnce
        let gelu = store.gelu.map(|e| Gelu::new(e));
        for i in 0..rows {
            let row = c.add(i * rsc);
            for v in 0..vectors {
                let p = row.add(v * 8);
                let mut x = load(p, v);
                if store.first {
                    let start = if store.residual.is_null() {
                        bias[v]
                    } else {
                        let r = load(store.residual.add(i * rsc + v * 8), v);
                        if store.bias.is_null() {
                            r
                        } else {
                            _mm256_add_ps(r, bias[v])
                        }
                    };
                    x = _mm256_add_ps(start, x);
                }
                if let Some(g) = &gelu {
                    x = g.apply(x);
                }
                if full[v] {
                    _mm256_storeu_ps(p, x);
                } else {
                    _mm256_maskstore_ps(p, masks[v], x);
                }
            }
        }
    }
}

/// tract's `GeluExact`, `(x * 0.5) * (1 + erf(x * (1 / sqrt 2)))`, on 8 lanes with the
/// arithmetic of the erf kernel tract runs on this CPU ([`Erf`]): its AVX-512 kernel's Horner
/// FMAs where the CPU has AVX-512 (the level forced to `avx2` there), its generic kernel's
/// separate multiplies and adds on an AVX2-only CPU (`serf`: `(a + y) * |x|` per step, `powi(16)`
/// as four squarings, `1 - 1 / y`), so the fused MLP's hidden rows are tract's bit for bit.
struct Gelu {
    erf: Erf,
    c: __m256,
    a: [__m256; 6],
    one: __m256,
    half: __m256,
}

impl Gelu {
    #[target_feature(enable = "avx2")]
    fn new(erf: Erf) -> Gelu {
        // tract's coefficients as its kernels write them.
        #[allow(clippy::excessive_precision)]
        const A: [f32; 6] = [0.0705230784, 0.0422820123, 0.0092705272, 0.0001520143, 0.0002765672, 0.0000430638];
        Gelu {
            erf,
            c: _mm256_set1_ps(2f32.sqrt().recip()),
            a: A.map(|a| _mm256_set1_ps(a)),
            one: _mm256_set1_ps(1.0),
            half: _mm256_set1_ps(0.5),
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn apply(&self, x: __m256) -> __m256 {
        let arg = _mm256_mul_ps(x, self.c);
        let sign = _mm256_and_ps(arg, _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN)));
        let abs = _mm256_and_ps(arg, _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX)));
        let [a1, a2, a3, a4, a5, a6] = self.a;
        let y = match self.erf {
            Erf::Avx512 => {
                let y = _mm256_fmadd_ps(a6, abs, a5);
                let y = _mm256_fmadd_ps(y, abs, a4);
                let y = _mm256_fmadd_ps(y, abs, a3);
                let y = _mm256_fmadd_ps(y, abs, a2);
                let y = _mm256_fmadd_ps(y, abs, a1);
                _mm256_add_ps(_mm256_mul_ps(y, abs), self.one)
            }
            Erf::Generic => {
                let y = _mm256_mul_ps(a6, abs);
                let y = _mm256_mul_ps(_mm256_add_ps(a5, y), abs);
                let y = _mm256_mul_ps(_mm256_add_ps(a4, y), abs);
                let y = _mm256_mul_ps(_mm256_add_ps(a3, y), abs);
                let y = _mm256_mul_ps(_mm256_add_ps(a2, y), abs);
                let y = _mm256_mul_ps(_mm256_add_ps(a1, y), abs);
                _mm256_add_ps(y, self.one)
            }
        };
        let y = _mm256_mul_ps(y, y);
        let y = _mm256_mul_ps(y, y);
        let y = _mm256_mul_ps(y, y);
        let y = _mm256_mul_ps(y, y);
        let e = _mm256_sub_ps(self.one, _mm256_div_ps(self.one, y));
        let e = _mm256_or_ps(e, sign);
        _mm256_mul_ps(_mm256_mul_ps(x, self.half), _mm256_add_ps(e, self.one))
    }
}

/// One run's k-loop on one half's sums (taken and returned by value, so they stay in
/// registers across runs); `pb` points at the half's first column of the panel.
#[inline(always)]
unsafe fn run(
    mut acc: [[__m256; 2]; MR],
    kc: usize,
    pa: *const f32,
    rsa: usize,
    pb: *const f32,
    rows: usize,
) -> [[__m256; 2]; MR] {
    unsafe {
        // Rows past `rows` re-read the last row (in bounds); their sums are not stored.
        let rows_at: [*const f32; MR] = std::array::from_fn(|i| pa.add(i.min(rows - 1) * rsa));
        let step = |acc: &mut [[__m256; 2]; MR], p: usize| {
            let b = pb.add(p * NR);
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            for (acc, row) in acc.iter_mut().zip(&rows_at) {
                let av = _mm256_broadcast_ss(&*row.add(p));
                acc[0] = _mm256_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(av, b1, acc[1]);
            }
        };
        let mut p = 0;
        while p + 4 <= kc {
            step(&mut acc, p);
            step(&mut acc, p + 1);
            step(&mut acc, p + 2);
            step(&mut acc, p + 3);
            p += 4;
        }
        while p < kc {
            step(&mut acc, p);
            p += 1;
        }
        acc
    }
}
