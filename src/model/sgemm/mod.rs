//! One single-threaded f32 GEMM entry for our CPU ops, dispatched over [`Level`] (issue #18).
//!
//! `C = A B` or `C += A B` with A's rows contiguous, B at any strides and C's rows contiguous:
//! the shapes of the linear layers (`x W`, W row-major) and of the fused attention (`q kᵀ` with
//! k read transposed, `p v`).
//!
//! - [`Level::Avx2`] and [`Level::Neon`]: the `gemm` crate (the GEMM under faer), whose AVX2/FMA
//!   and NEON kernels are well tuned; on x86 it has no AVX-512 kernels on stable Rust (they sit
//!   behind its `nightly` feature). At `avx2` only for products whose B is not packed: weights
//!   packed once ([`PackedF32`]) run on our AVX2 tile (`avx2.rs`), which also takes the
//!   stores' tail ([`Tail`]) and sums several runs ([`run_sum`]), as the AVX-512 one.
//! - [`Level::Avx512`]: our own kernel, a 12 x 32 register tile (24 zmm accumulators, the k-loop
//!   broadcasting A from a packed panel). Own code because no maintained stable crate exposes a
//!   plain AVX-512 SGEMM: tract-linalg has AVX-512 kernels, but only behind its packed-operand
//!   `MatMatMul` plumbing; measured against both on the model's shapes in
//!   `examples/gemm_shapes.rs` (numbers in the README).
//! - [`Level::Portable`]: the same blocking with a 4 x 16 tile in plain Rust, for CPUs with
//!   neither (and as the tests' reference-checked fallback).
//!
//! Blocking (own kernels): K in chunks of [`KC`] (B's packed panel, `KC x NR`, stays in L1/L2),
//! rows in blocks of [`MC`], read in place (A's rows are contiguous). Packing buffers are per thread and reused,
//! so steady calls allocate nothing.

use std::cell::RefCell;

use super::isa::Level;

/// K per packed chunk.
const KC: usize = 256;
/// Rows per packed A block (a multiple of both tiles' MR).
const MC: usize = 192;
/// Columns per packed B block (a multiple of both tiles' NR): `KC x NC` floats stay in L2.
const NC: usize = 384;

thread_local! {
    static PACK: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The operands of one product: `m x k` times `k x n` into `m x n`.
///
/// A's element (i, p) is at `a[i * rsa + p]`, B's (p, j) at `b[p * rsb + j * csb]`, C's (i, j)
/// at `c[i * rsc + j]`.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: *const f32,
    pub rsa: usize,
    pub b: *const f32,
    pub rsb: usize,
    pub csb: usize,
    pub c: *mut f32,
    pub rsc: usize,
    /// `C += A B` (else `C = A B`).
    pub accumulate: bool,
}

/// One register tile's call in [`Gemm::blocked`]: C's `rows x cols` at `c` (the product's row
/// `i`, column `j`), A's rows from `a` (`kc` values each), the packed panel `b`; the first and
/// the last of C's K chunks.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Tile {
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    i: usize,
    j: usize,
    rows: usize,
    cols: usize,
    first: bool,
    last: bool,
}

/// What [`Gemm::run_packed_tail`] adds and applies as it writes C: a linear layer's bias and
/// residual, the MLP's GELU.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
pub struct Tail {
    /// `n` values added to every row, or null.
    pub bias: *const f32,
    /// `m x n` values at C's row stride added, or null.
    pub residual: *const f32,
    /// tract's `GeluExact` on the sums, with the arithmetic of the erf kernel named.
    pub gelu: Option<Erf>,
}

/// Which of tract's erf kernels a fused GELU copies, bit for bit: the one tract runs on this
/// CPU (its AVX-512 kernel where the CPU has AVX-512F, else its generic one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Erf {
    /// `x86_64_avx512_erf_f32_64n`: Horner by FMAs.
    Avx512,
    /// `generic_erf_f32_4n` (`serf`): separate multiplies and adds.
    Generic,
}

impl Erf {
    /// The arithmetic of tract's erf kernel `name`, where a tile copies it.
    pub fn of_kernel(name: &str) -> Option<Erf> {
        match name {
            "x86_64_avx512_erf_f32_64n" => Some(Erf::Avx512),
            "generic_erf_f32_4n" => Some(Erf::Generic),
            _ => None,
        }
    }
}

/// Whether `level` runs weights packed once ([`PackedF32`]: [`Gemm::run_packed`],
/// [`Gemm::run_packed_tail`], [`run_sum`]) on our own tile: `avx512` (12 x 32) and `avx2` (6 x
/// 32, as two 16-column halves), on the same packed format.
pub fn packs(level: Level) -> bool {
    cfg!(target_arch = "x86_64") && matches!(level, Level::Avx512 | Level::Avx2)
}

/// How [`Gemm::run_packed_tail`]'s tile finishes C: on the first K chunk `bias + residual`
/// added (the tile's own, null where absent, zero with neither), on the last (`gelu`) the GELU.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(super) struct Store {
    first: bool,
    bias: *const f32,
    residual: *const f32,
    gelu: Option<Erf>,
}

impl Gemm {
    /// Run the product on `level`'s kernel, on this thread.
    ///
    /// # Safety
    /// Every element the strides address for `i < m`, `p < k`, `j < n` must be in bounds (C's
    /// writable and not aliased by A or B), and `level` must be supported by this CPU.
    pub unsafe fn run(&self, level: Level) {
        if self.m == 0 || self.n == 0 {
            return;
        }
        if self.k == 0 {
            if !self.accumulate {
                for i in 0..self.m {
                    // SAFETY: row i of C is in bounds (caller).
                    unsafe { std::slice::from_raw_parts_mut(self.c.add(i * self.rsc), self.n).fill(0.0) };
                }
            }
            return;
        }
        match level {
            Level::Avx2 | Level::Neon => unsafe { self.gemm_crate() },
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => unsafe {
                self.blocked(12, 32, |g, t| avx512::kernel(t.kc, t.a, g.rsa, t.b, t.c, g.rsc, t.rows, t.cols, t.first))
            },
            _ => unsafe {
                self.blocked(4, 16, |g, t| portable_kernel(t.kc, t.a, g.rsa, t.b, t.c, g.rsc, t.rows, t.cols, t.first))
            },
        }
    }

    unsafe fn gemm_crate(&self) {
        // dst = 1 * dst (when read) + 1 * lhs . rhs
        // SAFETY: strides as documented on `Gemm` (caller).
        unsafe {
            gemm::gemm(
                self.m,
                self.n,
                self.k,
                self.c,
                1,
                self.rsc as isize,
                self.accumulate,
                self.a,
                1,
                self.rsa as isize,
                self.b,
                self.csb as isize,
                self.rsb as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        }
    }

    /// `C (+)= A W` with the weight packed once ([`PackedF32`]; `self.b`, `rsb` and `csb` are
    /// not read) on `level`'s tile ([`packs`]): the same products as [`Gemm::run`] at
    /// [`Level::Avx512`], bit for bit at either level (each sum runs over K in the same order,
    /// one FMA a step), without packing B on every call (a tenth of a linear layer at T = 257).
    ///
    /// # Safety
    /// As [`Gemm::run`] for A and C; `w` is `k x n`; the CPU supports `level`.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn run_packed(&self, w: &PackedF32, level: Level) {
        assert!(w.k == self.k && w.n == self.n, "run_packed: [{}, {}] weight for K {} N {}", w.k, w.n, self.k, self.n);
        if self.m == 0 || self.n == 0 || self.k == 0 {
            // SAFETY: as the caller promises (no B is read for k = 0).
            return unsafe { self.run(Level::Portable) };
        }
        // SAFETY: as the caller promises.
        unsafe {
            match level {
                Level::Avx512 => self.blocked_with(12, 32, 32, Some(w), |g, t| {
                    avx512::kernel(t.kc, t.a, g.rsa, t.b, t.c, g.rsc, t.rows, t.cols, t.first)
                }),
                Level::Avx2 => self.blocked_with(6, 32, 16, Some(w), |g, t| {
                    avx2::kernel_runs(&[(t.a, t.b, t.kc)], g.rsa, t.c, g.rsc, t.rows, t.cols, t.first)
                }),
                _ => panic!("run_packed: no packed kernel at {level}"),
            }
        }
    }

    /// `C = tail.residual + tail.bias + A W`, then GELU where `tail.gelu`, with C written once:
    /// the first K chunk's store starts from the bias and residual in place of C, the last one
    /// applies the GELU in registers. The same values as initialising C (`weight::init_rows`),
    /// [`Gemm::run_packed`] with `accumulate`, then tract's `GeluExact` on the erf kernel
    /// named, bit for bit (`tests.rs`, `tests/model/mlp_op.rs`).
    ///
    /// # Safety
    /// As [`Gemm::run_packed`], with `accumulate` false and `k > 0`; `tail.bias` (if not null)
    /// holds `n` values, `tail.residual` (if not null) `m x n` at C's row stride.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn run_packed_tail(&self, w: &PackedF32, tail: Tail, level: Level) {
        assert!(w.k == self.k && w.n == self.n, "run_packed: [{}, {}] weight for K {} N {}", w.k, w.n, self.k, self.n);
        assert!(!self.accumulate && self.k > 0, "run_packed_tail: accumulate {}, K {}", self.accumulate, self.k);
        let store = |g: &Gemm, t: &Tile| Store {
            first: t.first,
            // SAFETY (of the offsets): the tile's columns of the bias, its rows and columns of
            // the residual (caller's bounds).
            bias: if tail.bias.is_null() { tail.bias } else { unsafe { tail.bias.add(t.j) } },
            residual: if tail.residual.is_null() {
                tail.residual
            } else {
                unsafe { tail.residual.add(t.i * g.rsc + t.j) }
            },
            gelu: tail.gelu.filter(|_| t.last),
        };
        // SAFETY: as the caller promises; the tail's offsets stay inside its bias and residual.
        unsafe {
            match level {
                Level::Avx512 => self.blocked_with(12, 32, 32, Some(w), |g, t| {
                    avx512::kernel_tail(t.kc, t.a, g.rsa, t.b, t.c, g.rsc, t.rows, t.cols, &store(g, &t))
                }),
                Level::Avx2 => self.blocked_with(6, 32, 16, Some(w), |g, t| {
                    avx2::kernel_tail(t.kc, t.a, g.rsa, t.b, t.c, g.rsc, t.rows, t.cols, &store(g, &t))
                }),
                _ => panic!("run_packed_tail: no packed kernel at {level}"),
            }
        }
    }

    /// The blocked loop nest around a `mr x nr` tile kernel.
    unsafe fn blocked(&self, mr: usize, nr: usize, kernel: impl Fn(&Gemm, Tile)) {
        // SAFETY: as the caller promises.
        unsafe { self.blocked_with(mr, nr, nr, None, kernel) }
    }

    /// [`Gemm::blocked`], B's panels from `pre` (packed for `nr` = 32) or packed here per call;
    /// the tile covers `sub` of a panel's `nr` columns (the AVX2 tile 16 of 32: each half of the
    /// panel then serves every row tile of the block while it is in L1).
    unsafe fn blocked_with(
        &self,
        mr: usize,
        nr: usize,
        sub: usize,
        pre: Option<&PackedF32>,
        kernel: impl Fn(&Gemm, Tile),
    ) {
        let g = *self;
        debug_assert!(pre.is_none() || nr == PackedF32::NR);
        PACK.with(|p| {
            let mut p = p.borrow_mut();
            let (_, buf) = &mut *p;
            let kc_max = KC.min(g.k);
            let need_b = NC.min(g.n.next_multiple_of(nr)) * kc_max;
            if pre.is_none() && buf.len() < need_b {
                buf.resize(need_b, 0.0);
            }
            for j0 in (0..g.n).step_by(NC) {
                let nc = NC.min(g.n - j0);
                for k0 in (0..g.k).step_by(KC) {
                    let kc = KC.min(g.k - k0);
                    let pb: &[f32] = match pre {
                        Some(w) => w.block(j0, k0, kc),
                        None => {
                            // SAFETY: B's rows k0..k0+kc, columns j0..j0+nc, are in bounds (caller).
                            unsafe { pack_b(&g, k0, kc, j0, nc, nr, buf) };
                            buf
                        }
                    };
                    let (first, last) = (k0 == 0 && !g.accumulate, k0 + kc == g.k);
                    for m0 in (0..g.m).step_by(MC) {
                        let mc = MC.min(g.m - m0);
                        // Column c0 of the block: panel jp, offset s0 in it (`sub` divides `nr`).
                        for c0 in (0..nc).step_by(sub) {
                            let (jp, s0, cols) = (c0 / nr, c0 % nr, sub.min(nc - c0));
                            for ip in 0..mc.div_ceil(mr) {
                                let rows = mr.min(mc - ip * mr);
                                // SAFETY: the tile's rows/cols are inside C, its rows x kc
                                // inside A (caller); the packed panel holds kc x nr values.
                                let (i, j) = (m0 + ip * mr, j0 + jp * nr + s0);
                                let c = unsafe { g.c.add(i * g.rsc + j) };
                                let a = unsafe { g.a.add(i * g.rsa + k0) };
                                let b = pb[jp * kc * nr + s0..].as_ptr();
                                kernel(&g, Tile { kc, a, b, c, i, j, rows, cols, first, last });
                            }
                        }
                    }
                }
            }
        })
    }
}

/// A `K x N` weight packed once into the panels [`Gemm::blocked`] packs per call for the
/// AVX-512 tile (N in blocks of [`NC`] columns, each K in chunks of [`KC`] rows, each chunk
/// 32-column panels of `kc x 32`, zero past N), which the AVX2 tile reads as two 16-column
/// halves: the linear layers hold it at the levels that [`packs`] in place of their f32 weight
/// (same memory), see `linear.rs`.
#[derive(PartialEq)]
pub struct PackedF32 {
    pub k: usize,
    pub n: usize,
    data: Vec<f32>,
}

impl std::fmt::Debug for PackedF32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedF32({} x {})", self.k, self.n)
    }
}

impl PackedF32 {
    /// Columns per panel (the AVX-512 tile's).
    pub const NR: usize = 32;

    /// Pack `w` (`k x n`, row-major).
    pub fn pack(w: &[f32], k: usize, n: usize) -> PackedF32 {
        assert_eq!(w.len(), k * n, "PackedF32::pack: {} values for [{k}, {n}]", w.len());
        let mut p = PackedF32 { k: 0, n: 0, data: Vec::new() };
        // SAFETY: w is k x n row-major (asserted).
        unsafe { p.repack(w.as_ptr(), n, 1, k, n) };
        p
    }

    /// An empty one, for [`PackedF32::repack`].
    pub const fn empty() -> PackedF32 {
        PackedF32 { k: 0, n: 0, data: Vec::new() }
    }

    /// Pack the `k x n` matrix whose element (p, j) is at `b[p * rsb + j * csb]` into `self`,
    /// reusing its buffer (the attention's keys and values, once per head and frame).
    ///
    /// # Safety
    /// Every such element for `p < k`, `j < n` is readable.
    pub unsafe fn repack(&mut self, b: *const f32, rsb: usize, csb: usize, k: usize, n: usize) {
        let nr = Self::NR;
        let len: usize = (0..n).step_by(NC).map(|j0| NC.min(n - j0).next_multiple_of(nr) * k).sum();
        self.data.resize(len, 0.0);
        (self.k, self.n) = (k, n);
        let g = Gemm {
            m: 0,
            n,
            k,
            a: std::ptr::null(),
            rsa: 0,
            b,
            rsb,
            csb,
            c: std::ptr::null_mut(),
            rsc: 0,
            accumulate: false,
        };
        let mut at = 0;
        for j0 in (0..n).step_by(NC) {
            let nc = NC.min(n - j0);
            for k0 in (0..k).step_by(KC) {
                let kc = KC.min(k - k0);
                let size = nc.next_multiple_of(nr) * kc;
                // SAFETY: rows k0..k0+kc, columns j0..j0+nc of B are readable (caller).
                unsafe { pack_b(&g, k0, kc, j0, nc, nr, &mut self.data[at..at + size]) };
                at += size;
            }
        }
    }

    /// The panels of columns `j0..` (a multiple of [`NC`]), rows `k0..k0 + kc`.
    fn block(&self, j0: usize, k0: usize, kc: usize) -> &[f32] {
        let nc = NC.min(self.n - j0).next_multiple_of(Self::NR);
        let at = j0 * self.k + nc * k0;
        &self.data[at..at + nc * kc]
    }

    /// Element (p, j) of the packed matrix.
    pub fn at(&self, p: usize, j: usize) -> f32 {
        assert!(p < self.k && j < self.n, "PackedF32::at: ({p}, {j}) outside [{}, {}]", self.k, self.n);
        let (j0, k0) = (j / NC * NC, p / KC * KC);
        let kc = KC.min(self.k - k0);
        let (jp, jj) = ((j - j0) / Self::NR, (j - j0) % Self::NR);
        self.block(j0, k0, kc)[(jp * kc + p - k0) * Self::NR + jj]
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}

/// The shared copy of `p` (interned by content, as `bf16::intern`: every plan that packs the same
/// weight gets the same `Arc`).
pub fn intern(p: PackedF32) -> std::sync::Arc<PackedF32> {
    use std::sync::{Arc, Mutex, Weak};
    static LIVE: Mutex<Vec<Weak<PackedF32>>> = Mutex::new(Vec::new());
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    live.retain(|w| w.strong_count() > 0);
    if let Some(s) = live.iter().filter_map(Weak::upgrade).find(|s| **s == p) {
        return s;
    }
    let p = Arc::new(p);
    live.push(Arc::downgrade(&p));
    p
}

/// B rows `k0..k0+kc`, columns `j0..j0+nc`, as `nr`-column panels: `dst[jp][p][jj]`, zero
/// past column nc.
unsafe fn pack_b(g: &Gemm, k0: usize, kc: usize, j0: usize, nc: usize, nr: usize, dst: &mut [f32]) {
    for jp in 0..nc.div_ceil(nr) {
        let panel = &mut dst[jp * kc * nr..(jp + 1) * kc * nr];
        let cols = nr.min(nc - jp * nr);
        if g.csb == 1 {
            // Row-major B (the linear layers' weights): whole panel rows at once, contiguous on
            // both sides. The column-wise loop below cost a fifth of a linear layer at T = 257.
            for (p, row) in panel.chunks_exact_mut(nr).enumerate() {
                // SAFETY: p + k0 < k and j0 + jp * nr + cols <= n (caller's bounds).
                let src = unsafe { std::slice::from_raw_parts(g.b.add((k0 + p) * g.rsb + j0 + jp * nr), cols) };
                row[..cols].copy_from_slice(src);
                row[cols..].fill(0.0);
            }
            continue;
        }
        for jj in 0..nr {
            if jj >= cols {
                (0..kc).for_each(|p| panel[p * nr + jj] = 0.0);
                continue;
            }
            let j = j0 + jp * nr + jj;
            for p in 0..kc {
                // SAFETY: p + k0 < k and j < n (caller's bounds).
                panel[p * nr + jj] = unsafe { *g.b.add((k0 + p) * g.rsb + j * g.csb) };
            }
        }
    }
}

/// The portable 4 x 16 tile: plain Rust the compiler vectorises for the build's baseline.
#[allow(clippy::too_many_arguments)]
fn portable_kernel(
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
    const MR: usize = 4;
    const NR: usize = 16;
    // SAFETY: A's `rows` rows hold kc values at stride rsa, the packed panel kc x NR (see
    // `blocked`); rows past `rows` re-read the last one and are not stored.
    let b = unsafe { std::slice::from_raw_parts(pb, kc * NR) };
    let a: [&[f32]; MR] =
        std::array::from_fn(|i| unsafe { std::slice::from_raw_parts(pa.add(i.min(rows - 1) * rsa), kc) });
    let mut acc = [[0f32; NR]; MR];
    for (p, bp) in b.chunks_exact(NR).enumerate() {
        for (row, ar) in acc.iter_mut().zip(&a) {
            let av = ar[p];
            for (x, &bv) in row.iter_mut().zip(bp) {
                *x += av * bv;
            }
        }
    }
    for (i, row) in acc.iter().enumerate().take(rows) {
        // SAFETY: rows x cols of C at row stride rsc are in bounds (see `blocked`).
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * rsc), cols) };
        for (d, v) in dst.iter_mut().zip(row) {
            *d = if first { *v } else { *d + *v };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

/// `C (m x n) (+)= sum_r A_r W_r` on `level`'s packed tile, each tile's sums kept in registers
/// across all runs and C written once: the four taps of a deconvolution's output parity as one
/// product with K = 4 C_in (as four accumulated GEMMs, C went through the cache four times and
/// the kernel reloaded it per tap). Run `r`'s A rows are at `a_r + i * rsa`, `w_r.k` values
/// each; every `w_r` has the same N.
///
/// # Safety
/// Every A row `i < m` of every run holds `w_r.k` readable values; C's `m x n` at row stride
/// `rsc` are writable and aliased by nothing else; the CPU supports `level`, one that
/// [`packs`].
#[cfg(target_arch = "x86_64")]
pub unsafe fn run_sum(
    runs: &[(*const f32, &PackedF32)],
    m: usize,
    rsa: usize,
    c: *mut f32,
    rsc: usize,
    accumulate: bool,
    level: Level,
) {
    const MAX: usize = 16;
    let Some(n) = runs.first().map(|r| r.1.n) else { return };
    assert!(runs.iter().all(|r| r.1.n == n), "run_sum: runs of different N");
    let (mr, nr, sub) = match level {
        Level::Avx512 => (12, PackedF32::NR, PackedF32::NR),
        Level::Avx2 => (6, PackedF32::NR, 16),
        _ => panic!("run_sum: no packed kernel at {level}"),
    };
    let mut segs = [(std::ptr::null(), std::ptr::null(), 0usize); MAX];
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        for m0 in (0..m).step_by(MC) {
            let mc = MC.min(m - m0);
            for c0 in (0..nc).step_by(sub) {
                let (jp, s0, cols) = (c0 / nr, c0 % nr, sub.min(nc - c0));
                for ip in 0..mc.div_ceil(mr) {
                    let (r0, rows) = (m0 + ip * mr, mr.min(mc - ip * mr));
                    let mut count = 0;
                    for &(a, w) in runs {
                        for k0 in (0..w.k).step_by(KC) {
                            let kc = KC.min(w.k - k0);
                            assert!(count < MAX, "run_sum: more than {MAX} K chunks");
                            // SAFETY (of the offsets): row r0 of this run's A, from column k0
                            // (caller's bounds).
                            segs[count] = (
                                unsafe { a.add(r0 * rsa + k0) },
                                w.block(j0, k0, kc)[jp * kc * nr + s0..].as_ptr(),
                                kc,
                            );
                            count += 1;
                        }
                    }
                    // SAFETY: the tile's rows x cols are inside C, every run's rows hold its K
                    // values (caller); each panel holds kc x nr values.
                    unsafe {
                        let (segs, c) = (&segs[..count], c.add(r0 * rsc + j0 + jp * nr + s0));
                        if level == Level::Avx512 {
                            avx512::kernel_runs(segs, rsa, c, rsc, rows, cols, !accumulate)
                        } else {
                            avx2::kernel_runs(segs, rsa, c, rsc, rows, cols, !accumulate)
                        }
                    };
                }
            }
        }
    }
}

/// The textbook product in f64 (tests).
pub fn reference(g: &Gemm, a: &[f32], b: &[f32], c0: &[f32]) -> Vec<f32> {
    let mut out = c0.to_vec();
    for i in 0..g.m {
        for j in 0..g.n {
            let s: f64 = (0..g.k).map(|p| a[i * g.rsa + p] as f64 * b[p * g.rsb + j * g.csb] as f64).sum();
            let o = &mut out[i * g.rsc + j];
            *o = if g.accumulate { (*o as f64 + s) as f32 } else { s as f32 };
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;
