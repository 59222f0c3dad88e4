//! The linear layers and the attention's two products in bfloat16 (`[model] precision = "bf16"`,
//! issue #18).
//!
//! A linear layer's weight is rounded to bf16 once, when the plan is built, and packed for the
//! kernel ([`Packed16`]); per call the token rows are rounded to bf16 too, and the products are
//! summed in f32. The fused attention (`attention.rs`) packs each call's keys and values once
//! ([`PackedHeads`]) and rounds the query rows and the softmax weights per block; the softmax
//! stays f32. Both products are summed in f32 (a bf16 x bf16 product is exact in f32, so the only loss is the two roundings
//! of the operands: about 3 significant digits each). On x86 with AVX512-BF16 (AMD Zen 4, Intel
//! Cooper Lake / Sapphire Rapids and later) the kernel is `vdpbf16ps`: one instruction does two
//! multiply-adds per f32 lane, twice the work of an f32 FMA, and the weights take half the memory
//! and half the memory traffic. Everywhere else [`Precision::supported`] says no and the plans
//! stay f32 (with one log line): a portable kernel in the same packed format exists for the tests
//! (it is the reference the AVX512-BF16 kernel is checked against), not for speed.
//!
//! Own code: no maintained stable crate has a bf16 GEMM for x86 (the `gemm` crate's f16 path
//! converts to f32; tract-linalg has no bf16 kernels).
//!
//! Packed weight layout: `N` in panels of [`NR`] = 32 columns (the last one zero-padded), each
//! panel `K/2` rows of 32 `u32`s, a `u32` holding the bf16 pair (row `2p` in the low half, row
//! `2p + 1` in the high half; an odd K is padded with a zero row). The token rows are rounded into
//! the same pairs (consecutive k), so one 32-bit broadcast of A meets one 32-bit lane of B.
//!
//! The weights are shared like the f32 ones ([`super::share`]): packed weights are interned by
//! content in a `Weak` table, so every plan (all sizes, all fixed-T middles, all lanes) holds one
//! copy.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tract_core::internal::TractResult;

crate::choice_enum! {
    /// `[model] precision`: the number format of the products (linear layers, attention, the
    /// head's deconvolutions; see this module and `f16/`).
    pub enum Precision { F32 = "f32", Bf16 = "bf16", F16 = "f16" }
}

/// Columns per packed panel (two 16-lane registers).
pub const NR: usize = 32;
/// Rows per register tile.
const MR: usize = 12;
/// K pairs per chunk: a panel chunk (`KC2 x NR` u32 = 16 KB) stays in L1 while the row tiles of
/// a block pass over it.
const KC2: usize = 128;
/// Rows per block: the block's bf16 rows (`MC x 2 KC2` = 96 KB) stay in L2 across the panels.
const MC: usize = 192;

impl Precision {
    /// Whether this CPU computes `self` natively.
    pub fn supported(self) -> bool {
        match self {
            Precision::F32 => true,
            Precision::Bf16 => kernel_level() != Kernel::Portable,
            Precision::F16 => super::f16::kernel_level() != super::f16::Kernel::Portable,
        }
    }

    /// The 16-bit format of the products (`None`: f32).
    pub fn format(self) -> Option<Format> {
        match self {
            Precision::F32 => None,
            Precision::Bf16 => Some(Format::Bf16),
            Precision::F16 => Some(Format::F16),
        }
    }

    /// Why `self` falls back to f32 on this CPU (`None` when it does not).
    pub fn fallback_reason(self) -> Option<String> {
        match self {
            _ if self.supported() => None,
            Precision::Bf16 => Some("this CPU lacks AVX512-BF16 (x86 only: AMD Zen 4+, Intel Cooper Lake+)".into()),
            Precision::F16 => Some(
                "this CPU lacks f16 arithmetic (FEAT_FP16 on ARMv8.2+ such as the Jetson Orin's Cortex-A78AE; \
                 AVX512-FP16 on Intel Sapphire Rapids+)"
                    .into(),
            ),
            Precision::F32 => None,
        }
    }
}

/// The kernels of the packed bf16 product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Intel AMX (`tdpbf16ps` on 16 x 16 tiles, `amx.rs`): 32 x 32 blocks of C.
    Amx,
    /// `vdpbf16ps` on 512-bit registers, a 12 x 32 tile.
    Avx512Bf16,
    /// Plain Rust, the same tile and sums (tests; any CPU).
    Portable,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Amx => "ailurus-amx-bf16",
            Kernel::Avx512Bf16 => "ailurus-avx512bf16",
            Kernel::Portable => "ailurus-bf16-portable",
        }
    }

    pub fn supported(self) -> bool {
        match self {
            Kernel::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 => {
                use std::arch::is_x86_feature_detected as has;
                has!("avx512bf16") && has!("avx512f") && has!("avx512bw") && has!("avx512vl")
            }
            // The rows are rounded with AVX512-BF16 (every AMX CPU has it).
            #[cfg(target_arch = "x86_64")]
            Kernel::Amx => Kernel::Avx512Bf16.supported() && amx::permitted(),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512Bf16 | Kernel::Amx => false,
        }
    }
}

/// The best bf16 kernel of this CPU.
pub fn kernel_level() -> Kernel {
    if Kernel::Amx.supported() {
        Kernel::Amx
    } else if Kernel::Avx512Bf16.supported() {
        Kernel::Avx512Bf16
    } else {
        Kernel::Portable
    }
}

static PRECISION: AtomicU8 = AtomicU8::new(0);

/// The precision the linear layers of CPU plans built from now on get (`[model] precision`; a
/// precision this CPU lacks is logged once and replaced by f32). Returns the one in effect.
pub fn set_precision(want: Precision) -> Precision {
    let used = match want.fallback_reason() {
        None => want,
        Some(why) => {
            log::warn!("[model] precision = \"{want}\": {why}; the products stay f32");
            Precision::F32
        }
    };
    PRECISION.store(used as u8, Ordering::Relaxed);
    used
}

/// The precision in effect for plans built from now on.
pub fn precision() -> Precision {
    match PRECISION.load(Ordering::Relaxed) {
        1 => Precision::Bf16,
        2 => Precision::F16,
        _ => Precision::F32,
    }
}

/// f32 to bf16, rounded to nearest even (NaN stays NaN).
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// bf16 to f32 (exact).
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// The 16-bit number format of a packed weight (and of the rows it is multiplied with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// bfloat16: 8 exponent bits, 8 significant bits; products summed in f32 (this module).
    Bf16,
    /// IEEE binary16: 5 exponent bits, 11 significant bits; products summed in f16 over short
    /// runs of K, then in f32 (`f16/`).
    F16,
}

impl Format {
    /// f32 to this format, rounded to nearest even.
    pub fn round(self, x: f32) -> u16 {
        match self {
            Format::Bf16 => to_bf16(x),
            Format::F16 => super::f16::to_f16(x),
        }
    }

    /// This format to f32 (exact).
    pub fn widen(self, h: u16) -> f32 {
        match self {
            Format::Bf16 => from_bf16(h),
            Format::F16 => super::f16::from_f16(h),
        }
    }
}

/// A `K x N` weight rounded to a 16-bit format and packed in panels of pairs (see the module
/// doc; the f16 kernels read the same layout).
#[derive(Debug, PartialEq, Eq)]
pub struct Packed16 {
    pub k: usize,
    pub n: usize,
    pub format: Format,
    /// `n.div_ceil(NR)` panels of `k.div_ceil(2) x NR` pairs.
    pub(crate) data: Vec<u32>,
}

impl Packed16 {
    /// Round `w` (`k x n`, row-major) to bf16 and pack it.
    pub fn pack(w: &[f32], k: usize, n: usize) -> Packed16 {
        Packed16::pack_as(Format::Bf16, w, k, n)
    }

    /// Round `w` (`k x n`, row-major) to `format` and pack it.
    pub fn pack_as(format: Format, w: &[f32], k: usize, n: usize) -> Packed16 {
        assert_eq!(w.len(), k * n, "Packed16::pack: {} values for [{k}, {n}]", w.len());
        let k2 = k.div_ceil(2);
        let mut data = vec![0u32; n.div_ceil(NR) * k2 * NR];
        for (jp, panel) in data.chunks_exact_mut(k2 * NR).enumerate() {
            for (p, row) in panel.chunks_exact_mut(NR).enumerate() {
                for (jj, pair) in row.iter_mut().enumerate() {
                    let j = jp * NR + jj;
                    if j >= n {
                        break;
                    }
                    let at = |r: usize| if r < k { format.round(w[r * n + j]) as u32 } else { 0 };
                    *pair = at(2 * p) | (at(2 * p + 1) << 16);
                }
            }
        }
        Packed16 { k, n, format, data }
    }

    /// The weight in f32 again (each value rounded to the format), `k x n` row-major (tests).
    pub fn unpack(&self) -> Vec<f32> {
        let k2 = self.k.div_ceil(2);
        let mut w = vec![0f32; self.k * self.n];
        for r in 0..self.k {
            for j in 0..self.n {
                let pair = self.data[(j / NR) * k2 * NR + (r / 2) * NR + j % NR];
                w[r * self.n + j] = self.format.widen((pair >> (16 * (r % 2))) as u16);
            }
        }
        w
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
    }
}

/// Constants an op holds (packed weights), compared and hashed by identity: plans share one copy
/// per weight, so equal content is the same `Arc`.
#[derive(Debug)]
pub struct Shared<T>(pub Arc<T>);

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}
impl<T> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl<T> Eq for Shared<T> {}
impl<T> Hash for Shared<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.0) as usize).hash(state)
    }
}

/// (k, n, hash of the packed data) -> live packed weights.
type Table = HashMap<(usize, usize, u64), Vec<Weak<Packed16>>>;
static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// The shared copy of `p` (interned by content: every plan that packs the same weight gets the
/// same `Arc`).
pub fn intern(p: Packed16) -> Arc<Packed16> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.data.hash(&mut h);
    let key = (p.k, p.n, h.finish());
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let list = table.get_or_insert_with(HashMap::new).entry(key).or_default();
    list.retain(|w| w.strong_count() > 0);
    if let Some(s) = list.iter().filter_map(Weak::upgrade).find(|s| **s == p) {
        return s;
    }
    let p = Arc::new(p);
    list.push(Arc::downgrade(&p));
    p
}

thread_local! {
    /// A block's token rows in pairs (reused: steady calls allocate nothing).
    static ROWS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// `out = residual + bias + x w` in `w`'s format (bf16 here, f16 in `f16/`), on this CPU's best
/// kernel for it.
pub fn linear_16(
    x: &[f32],
    w: &Packed16,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    t: usize,
    out: &mut [f32],
) -> TractResult<()> {
    linear_16_at(Half::best(w.format), x, w, bias, residual, t, out)
}

/// [`linear_16`] on `kernel`, a bf16 or an f16 one matching `w`'s format (tests force each one
/// the CPU has): per row block of tract's threads (as [`super::linear::linear`]), the rows
/// rounded to pairs, then the kernel's product.
pub fn linear_16_at(
    kernel: impl Into<Half>,
    x: &[f32],
    w: &Packed16,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    t: usize,
    out: &mut [f32],
) -> TractResult<()> {
    super::linear::apply(super::linear::Weight::Half(w, kernel.into()), x, bias, residual, t, out)
}

/// `out[i, :] += x[i, :] w` for `rows` rows on this thread (`x` at row stride K, `out` at N): the
/// rows rounded to pairs, then `kernel`'s product.
///
/// # Safety
/// `out.add(i * N + j)` is writable for `i < rows`, `j < N` and aliased by nothing else; the
/// kernel is supported and of `w`'s format.
pub(crate) unsafe fn add_rows_16(kernel: Half, x: &[f32], w: &Packed16, rows: usize, out: *mut f32) {
    let (k, n) = (w.k, w.n);
    let k2 = k.div_ceil(2);
    ROWS.with(|buf| {
        let mut a = buf.borrow_mut();
        if a.len() < rows * k2 {
            a.resize(rows * k2, 0);
        }
        let a = &mut a[..rows * k2];
        kernel.round_rows(&x[..rows * k], k, k, a);
        // SAFETY: as the caller promises.
        unsafe { kernel.product(a, k2, rows, &w.data, k2, n, out, n) };
    })
}

/// `c[i, j] += sum_p a[i, p] b[p, j]`: `a` is `rows` rows of `k2` bf16 pairs at stride `rsa`,
/// `b` `n.div_ceil(NR)` packed panels of `k2 x NR` pairs, `c` `rows x n` at row stride `rsc`.
/// The blocked loop nest around the kernel's 12 x 32 tile.
///
/// # Safety
/// `c.add(i * rsc + j)` is writable for `i < rows`, `j < n`, and aliased by nothing else;
/// `kernel` is supported by this CPU.
#[allow(clippy::too_many_arguments)]
unsafe fn product(
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
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Amx {
        // SAFETY: as the caller promises; the CPU has AMX and this process may use it.
        return unsafe { amx::product(a, rsa, rows, b, k2, n, c, rsc) };
    }
    let each = |t: &Tile, c: &mut [f32]| match kernel {
        // SAFETY: the CPU has AVX512-BF16 (caller); `t.a` holds `t.rows` rows of t.kc2 pairs at
        // stride t.rsa, `t.b` t.kc2 x NR pairs, `c` `t.rows` rows of `t.cols` values at stride
        // rsc (`blocked`).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Bf16 => unsafe { avx512::tile(t.kc2, t.a, t.rsa, t.b, c, rsc, t.rows, t.cols) },
        _ => portable_tile(t.kc2, t.a, t.rsa, t.b, c, rsc, t.rows, t.cols),
    };
    // SAFETY: as the caller promises.
    unsafe { blocked(a, rsa, rows, b, k2, n, c, rsc, (MR, NR), KC2, each) }
}

/// One register tile's operands: `rows` rows of `a` (`kc2` pairs each, at stride `rsa`) times
/// `kc2` rows of `b` (pairs at stride [`NR`], the tile's `cols` columns first), added into
/// `cols` columns of C.
pub(crate) struct Tile<'a> {
    pub kc2: usize,
    pub a: &'a [u32],
    pub rsa: usize,
    pub b: &'a [u32],
    pub rows: usize,
    pub cols: usize,
}

/// The blocked loop nest of the packed products (bf16 here, f16 in `f16/`) around a kernel's
/// `mr x nr` register tile: chunks of `kc2` pairs of K (L1), blocks of [`MC`] rows (L2), then
/// the tiles, each handed to `tile` with its C rows (at stride `rsc`). `nr` divides [`NR`]:
/// a tile reads its columns of a panel at the panel's row stride.
///
/// # Safety
/// As [`product`]'s: `c.add(i * rsc + j)` is writable for `i < rows`, `j < n`, and aliased by
/// nothing else; `a` holds `rows` rows of `k2` pairs at stride `rsa`, `b` the packed panels.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn blocked(
    a: &[u32],
    rsa: usize,
    rows: usize,
    b: &[u32],
    k2: usize,
    n: usize,
    c: *mut f32,
    rsc: usize,
    (mr, nr): (usize, usize),
    kc: usize,
    tile: impl Fn(&Tile, &mut [f32]),
) {
    debug_assert!(NR.is_multiple_of(nr));
    assert!(rows == 0 || a.len() >= (rows - 1) * rsa + k2);
    assert!(b.len() >= n.div_ceil(NR) * k2 * NR);
    for p0 in (0..k2).step_by(kc) {
        let kc2 = kc.min(k2 - p0);
        for m0 in (0..rows).step_by(MC) {
            let mc = MC.min(rows - m0);
            for j0 in (0..n).step_by(nr) {
                let cols = nr.min(n - j0);
                // The panel's rows p0.. from column j0 % NR on (row stride NR).
                let b = &b[((j0 / NR) * k2 + p0) * NR + j0 % NR..];
                for i0 in (m0..m0 + mc).step_by(mr) {
                    let rows = mr.min(m0 + mc - i0);
                    let a = &a[i0 * rsa + p0..];
                    // SAFETY: the tile's rows i0..i0+rows, columns j0..j0+cols are inside C
                    // (caller); the slice spans them at stride rsc.
                    let c = unsafe { std::slice::from_raw_parts_mut(c.add(i0 * rsc + j0), (rows - 1) * rsc + cols) };
                    tile(&Tile { kc2, a, rsa, b, rows, cols }, c);
                }
            }
        }
    }
}

/// `c += a w`: `a` is `rows` rows of `w.k.div_ceil(2)` pairs of `w`'s format at stride `rsa`,
/// `c` `rows x w.n` at row stride `rsc` (the head's sub-pixel deconvolution, `deconv/`).
///
/// # Safety
/// `c.add(i * rsc + j)` is writable for `i < rows`, `j < w.n`, and aliased by nothing else;
/// `kernel` is supported by this CPU.
pub unsafe fn product_packed(kernel: Half, a: &[u32], rsa: usize, rows: usize, w: &Packed16, c: *mut f32, rsc: usize) {
    let k2 = w.k.div_ceil(2);
    assert!(rows == 0 || a.len() >= (rows - 1) * rsa + k2);
    assert_eq!(w.format, kernel.format(), "product_packed: a {:?} weight on {}", w.format, kernel.name());
    // SAFETY: as the caller promises.
    unsafe { kernel.product(a, rsa, rows, &w.data, k2, w.n, c, rsc) }
}

/// Round `src` to bf16 into `dst` (same length).
fn round_u16(kernel: Kernel, src: &[f32], dst: &mut [u16]) {
    match kernel {
        // SAFETY: the CPU has AVX512-BF16 (checked by the caller).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Bf16 | Kernel::Amx => unsafe { avx512::round_u16(src, dst) },
        _ => src.iter().zip(dst).for_each(|(s, d)| *d = to_bf16(*s)),
    }
}

/// Round rows of `k` values (at row stride `rsx` in `x`) to bf16 pairs, at row stride
/// `k.div_ceil(2)` in `a`, as many rows as `a` holds.
fn round_rows(kernel: Kernel, x: &[f32], rsx: usize, k: usize, a: &mut [u32]) {
    let k2 = k.div_ceil(2);
    for (i, dst) in a.chunks_exact_mut(k2).enumerate() {
        let src = &x[i * rsx..i * rsx + k];
        match kernel {
            // SAFETY: the CPU has AVX512-BF16 (checked by the caller).
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512Bf16 | Kernel::Amx => unsafe { avx512::round_row(src, dst) },
            _ => {
                for (p, d) in dst.iter_mut().enumerate() {
                    let hi = src.get(2 * p + 1).map_or(0, |&v| to_bf16(v) as u32);
                    *d = to_bf16(src[2 * p]) as u32 | (hi << 16);
                }
            }
        }
    }
}

/// The portable tile: the same sums as `vdpbf16ps` (per pair, the high product then the low one
/// added in f32; bf16 products are exact in f32).
#[allow(clippy::too_many_arguments)]
fn portable_tile(kc2: usize, a: &[u32], rsa: usize, b: &[u32], c: &mut [f32], rsc: usize, rows: usize, cols: usize) {
    let mut acc = [[0f32; NR]; MR];
    for (i, acc) in acc.iter_mut().enumerate().take(rows) {
        for p in 0..kc2 {
            let pa = a[i * rsa + p];
            let (alo, ahi) = (from_bf16(pa as u16), from_bf16((pa >> 16) as u16));
            for (x, &pb) in acc.iter_mut().zip(&b[p * NR..(p + 1) * NR]) {
                *x += ahi * from_bf16((pb >> 16) as u16);
                *x += alo * from_bf16(pb as u16);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate().take(rows) {
        for (d, v) in c[i * rsc..i * rsc + cols].iter_mut().zip(acc) {
            *d += v;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod half;
mod heads;
#[cfg(test)]
mod tests;

pub use half::Half;
pub use heads::{attention_logits, attention_values, PackedHeads};

/// The product of the operands rounded to `w`'s format, in f64 (tests).
pub fn reference(x: &[f32], w: &Packed16, bias: Option<&[f32]>, t: usize) -> Vec<f32> {
    let (k, n) = (w.k, w.n);
    let wf = w.unpack();
    let r = |v: f32| w.format.widen(w.format.round(v)) as f64;
    let mut out = vec![0f32; t * n];
    for i in 0..t {
        for j in 0..n {
            let s: f64 = (0..k).map(|p| r(x[i * k + p]) * wf[p * n + j] as f64).sum();
            out[i * n + j] = (s + bias.map_or(0.0, |b| b[j] as f64)) as f32;
        }
    }
    out
}
