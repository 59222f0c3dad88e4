//! The AVX-512 12 x 32 tile (`Level::Avx512`): the k-loop, its stores, and the stores' tail
//! (bias, residual, GELU; [`super::Tail`]).

use std::arch::x86_64::*;

use super::{Erf, Store};

const MR: usize = 12;
const NR: usize = 32;

/// The 12 x 32 tile: per k, two 16-lane loads of B, twelve broadcasts of A, 24 FMAs.
///
/// # Safety
/// AVX-512 F/BW/VL and FMA present; A's `rows` rows (at stride `rsa`) hold kc values, the
/// packed B panel kc x NR values; C's
/// `rows x cols` at row stride `rsc` are in bounds.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
pub(super) unsafe fn kernel(
    kc: usize,
    pa: *const f32,
    rsa: usize,
    pb: *const f32,
    c: *mut f32,
    rsc: usize,
    rows: usize,
    cols: usize,
    first: bool,
) {
    // SAFETY: as the caller promises.
    unsafe { kernel_runs(&[(pa, pb, kc)], rsa, c, rsc, rows, cols, first) }
}

/// [`kernel`], then the rest of `store` ([`tail`]). Its own entry, so that the plain
/// tile's code stays as it was: with the store's branch in it, the attention's products
/// ran 7% slower (Intel Xeon, 1 thread, 448 px).
///
/// # Safety
/// As [`kernel`]; the store's bias (`cols` values) and residual (`rows x cols` at stride
/// `rsc`) are in bounds where not null.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
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

/// The tile summed over several runs `(A, packed B panel, kc)` before C is touched once:
/// per run, its A rows (at stride `rsa`) times its panel.
///
/// # Safety
/// As [`kernel`] for every run.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
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
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for &(pa, pb, kc) in runs {
            acc = run(acc, kc, pa, rsa, pb, rows);
        }
        let mask = |v: usize| -> __mmask16 {
            let n = cols.saturating_sub(v * 16).min(16);
            ((1u32 << n) - 1) as __mmask16
        };
        let (m0, m1) = (mask(0), mask(1));
        for (i, acc) in acc.iter().enumerate().take(rows) {
            let row = c.add(i * rsc);
            for (v, (x, m)) in acc.iter().zip([m0, m1]).enumerate() {
                let p = row.add(v * 16);
                let x = if first { *x } else { _mm512_add_ps(_mm512_maskz_loadu_ps(m, p), *x) };
                _mm512_mask_storeu_ps(p, m, x);
            }
        }
    }
}

/// The rest of `store` on the tile just written (in L1): `bias + residual` added on the first
/// K chunk, the GELU on the last. A second pass over the tile rather than work in the
/// store above: there, the sums spilled to a realigned stack, which cost the k-loop a
/// register and two of its row pointers went to the stack (every product 5-10% slower).
///
/// # Safety
/// As [`kernel`].
#[inline(never)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma")]
unsafe fn tail(c: *mut f32, rsc: usize, rows: usize, cols: usize, store: &Store) {
    unsafe {
        let mask = |v: usize| -> __mmask16 {
            let n = cols.saturating_sub(v * 16).min(16);
            ((1u32 << n) - 1) as __mmask16
        };
        let masks = [mask(0), mask(1)];
        // The bias's two vectors (zero past `cols`), the same for every row.
        let bias: [__m512; 2] = std::array::from_fn(|v| {
            if store.bias.is_null() {
                _mm512_setzero_ps()
            } else {
                _mm512_maskz_loadu_ps(masks[v], store.bias.add(v * 16))
            }
        });
        #[allow(clippy::redundant_closure)] // a target_feature fn is not an FnOnce
        let gelu = store.gelu.map(|e| Gelu::new(e));
        for i in 0..rows {
            let row = c.add(i * rsc);
            for (v, m) in masks.into_iter().enumerate() {
                let p = row.add(v * 16);
                let mut x = _mm512_maskz_loadu_ps(m, p);
                if store.first {
                    // As `init_rows` then an accumulating store: (residual + bias) + sum.
                    let start = if store.residual.is_null() {
                        bias[v]
                    } else {
                        let r = _mm512_maskz_loadu_ps(m, store.residual.add(i * rsc + v * 16));
                        if store.bias.is_null() {
                            r
                        } else {
                            _mm512_add_ps(r, bias[v])
                        }
                    };
                    x = _mm512_add_ps(start, x);
                }
                if let Some(g) = &gelu {
                    x = g.apply(x);
                }
                _mm512_mask_storeu_ps(p, m, x);
            }
        }
    }
}

/// tract's `GeluExact` on 16 lanes, `(x * 0.5) * (1 + erf(x * (1 / sqrt 2)))`, with the exact
/// arithmetic of the erf kernel named: its AVX-512 one (`x86_64_avx512_erf_f32_64n`: Abramowitz
/// & Stegun 7.1.26 by Horner FMAs, then `* |x|`, `+ 1`, four squarings, `1 - 1 / y` by a true
/// division, the sign put back) or its generic one (the same steps by separate multiplies and
/// adds), so the fused MLP's hidden rows are tract's bit for bit (the caller names the kernel
/// tract runs on this CPU).
pub(super) struct Gelu {
    erf: Erf,
    c: __m512,
    a: [__m512; 6],
    one: __m512,
    half: __m512,
}

impl Gelu {
    #[target_feature(enable = "avx512f")]
    pub(super) fn new(erf: Erf) -> Gelu {
        // tract's coefficients as its kernel writes them (each rounds to the same f32).
        #[allow(clippy::excessive_precision)]
        const A: [f32; 6] = [0.0705230784, 0.0422820123, 0.0092705272, 0.0001520143, 0.0002765672, 0.0000430638];
        Gelu {
            erf,
            c: _mm512_set1_ps(2f32.sqrt().recip()),
            a: A.map(|a| _mm512_set1_ps(a)),
            one: _mm512_set1_ps(1.0),
            half: _mm512_set1_ps(0.5),
        }
    }

    #[target_feature(enable = "avx512f,fma")]
    #[inline]
    pub(super) fn apply(&self, x: __m512) -> __m512 {
        let arg = _mm512_mul_ps(x, self.c);
        let sign = _mm512_and_si512(_mm512_castps_si512(arg), _mm512_set1_epi32(i32::MIN));
        let abs = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(arg), _mm512_set1_epi32(i32::MAX)));
        let [a1, a2, a3, a4, a5, a6] = self.a;
        let y = match self.erf {
            Erf::Avx512 => {
                let y = _mm512_fmadd_ps(a6, abs, a5);
                let y = _mm512_fmadd_ps(y, abs, a4);
                let y = _mm512_fmadd_ps(y, abs, a3);
                let y = _mm512_fmadd_ps(y, abs, a2);
                let y = _mm512_fmadd_ps(y, abs, a1);
                _mm512_add_ps(_mm512_mul_ps(y, abs), self.one)
            }
            Erf::Generic => {
                let y = _mm512_mul_ps(a6, abs);
                let y = _mm512_mul_ps(_mm512_add_ps(a5, y), abs);
                let y = _mm512_mul_ps(_mm512_add_ps(a4, y), abs);
                let y = _mm512_mul_ps(_mm512_add_ps(a3, y), abs);
                let y = _mm512_mul_ps(_mm512_add_ps(a2, y), abs);
                let y = _mm512_mul_ps(_mm512_add_ps(a1, y), abs);
                _mm512_add_ps(y, self.one)
            }
        };
        let y = _mm512_mul_ps(y, y);
        let y = _mm512_mul_ps(y, y);
        let y = _mm512_mul_ps(y, y);
        let y = _mm512_mul_ps(y, y);
        let e = _mm512_sub_ps(self.one, _mm512_div_ps(self.one, y));
        let e = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(e), sign));
        _mm512_mul_ps(_mm512_mul_ps(x, self.half), _mm512_add_ps(e, self.one))
    }
}

/// One run's k-loop on the tile's sums (taken and returned by value, so they stay in
/// registers across runs).
#[inline(always)]
unsafe fn run(
    mut acc: [[__m512; 2]; MR],
    kc: usize,
    pa: *const f32,
    rsa: usize,
    pb: *const f32,
    rows: usize,
) -> [[__m512; 2]; MR] {
    unsafe {
        // Rows past `rows` re-read the last row (in bounds); their sums are not stored.
        let rows_at: [*const f32; MR] = std::array::from_fn(|i| pa.add(i.min(rows - 1) * rsa));
        let step = |acc: &mut [[__m512; 2]; MR], p: usize| {
            let b = pb.add(p * NR);
            let b0 = _mm512_loadu_ps(b);
            let b1 = _mm512_loadu_ps(b.add(16));
            for (acc, row) in acc.iter_mut().zip(&rows_at) {
                let av = _mm512_set1_ps(*row.add(p));
                acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
            }
        };
        // Four k a trip: the loop's counter, pointer and branch uops compete with the FMAs for
        // their ports (the 12 x 32 GEMMs 2-6% faster on the linear shapes, `gemm_shapes`; the
        // frame 2% faster, 448 px a=4 M=736, Intel Xeon, 1 thread).
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
