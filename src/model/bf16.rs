//! The linear layers and the attention's two products in bfloat16 (`[model] precision = "bf16"`,
//! issue #18).
//!
//! A linear layer's weight is rounded to bf16 once, when the plan is built, and packed for the
//! kernel ([`PackedBf16`]); per call the token rows are rounded to bf16 too, and the products are
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

use tract_core::internal::{ensure, TractResult};

use super::attention::{par_for, OutPtr};

crate::choice_enum! {
    /// `[model] precision`: the number format of the linear layers' products.
    ///
    /// (No "f16" yet: ARMv8.2 FP16 without FHM, as on the Jetson Orin's Cortex-A78AE, sums in
    /// f16, and there is no ARM machine here to measure what that costs in fidelity or gains.)
    pub enum Precision { F32 = "f32", Bf16 = "bf16" }
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
            Precision::Bf16 => kernel_level() == Kernel::Avx512Bf16,
        }
    }

    /// Why `self` falls back to f32 on this CPU (`None` when it does not).
    pub fn fallback_reason(self) -> Option<String> {
        match self {
            _ if self.supported() => None,
            Precision::Bf16 => Some("this CPU lacks AVX512-BF16 (x86 only: AMD Zen 4+, Intel Cooper Lake+)".into()),
            Precision::F32 => None,
        }
    }
}

/// The kernels of the packed bf16 product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `vdpbf16ps` on 512-bit registers, a 12 x 32 tile.
    Avx512Bf16,
    /// Plain Rust, the same tile and sums (tests; any CPU).
    Portable,
}

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
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
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512Bf16 => false,
        }
    }
}

/// The best bf16 kernel of this CPU.
pub fn kernel_level() -> Kernel {
    if Kernel::Avx512Bf16.supported() {
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
            log::warn!("[model] precision = \"{want}\": {why}; the linear layers stay f32");
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

/// A `K x N` weight rounded to bf16 and packed in panels (see the module doc).
#[derive(Debug, PartialEq, Eq)]
pub struct PackedBf16 {
    pub k: usize,
    pub n: usize,
    /// `n.div_ceil(NR)` panels of `k.div_ceil(2) x NR` pairs.
    data: Vec<u32>,
}

impl PackedBf16 {
    /// Round and pack `w` (`k x n`, row-major).
    pub fn pack(w: &[f32], k: usize, n: usize) -> PackedBf16 {
        assert_eq!(w.len(), k * n, "PackedBf16::pack: {} values for [{k}, {n}]", w.len());
        let k2 = k.div_ceil(2);
        let mut data = vec![0u32; n.div_ceil(NR) * k2 * NR];
        for (jp, panel) in data.chunks_exact_mut(k2 * NR).enumerate() {
            for (p, row) in panel.chunks_exact_mut(NR).enumerate() {
                for (jj, pair) in row.iter_mut().enumerate() {
                    let j = jp * NR + jj;
                    if j >= n {
                        break;
                    }
                    let at = |r: usize| if r < k { to_bf16(w[r * n + j]) as u32 } else { 0 };
                    *pair = at(2 * p) | (at(2 * p + 1) << 16);
                }
            }
        }
        PackedBf16 { k, n, data }
    }

    /// The weight in f32 again (each value rounded to bf16), `k x n` row-major (tests).
    pub fn unpack(&self) -> Vec<f32> {
        let k2 = self.k.div_ceil(2);
        let mut w = vec![0f32; self.k * self.n];
        for r in 0..self.k {
            for j in 0..self.n {
                let pair = self.data[(j / NR) * k2 * NR + (r / 2) * NR + j % NR];
                w[r * self.n + j] = from_bf16((pair >> (16 * (r % 2))) as u16);
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
type Table = HashMap<(usize, usize, u64), Vec<Weak<PackedBf16>>>;
static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// The shared copy of `p` (interned by content: every plan that packs the same weight gets the
/// same `Arc`).
pub fn intern(p: PackedBf16) -> Arc<PackedBf16> {
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
    /// A block's token rows in bf16 pairs (reused: steady calls allocate nothing).
    static ROWS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// `out[t, n] = bias[n] + sum_k x[t, k] w[k, n]` with `x` and `w` rounded to bf16 and the sums
/// in f32, on this CPU's bf16 kernel; rows split over tract's threads as in
/// [`super::linear::linear`].
pub fn linear_bf16(x: &[f32], w: &PackedBf16, bias: Option<&[f32]>, t: usize, out: &mut [f32]) -> TractResult<()> {
    linear_bf16_at(kernel_level(), x, w, bias, t, out)
}

/// [`linear_bf16`] on `kernel` (tests force each one the CPU has).
pub fn linear_bf16_at(
    kernel: Kernel,
    x: &[f32],
    w: &PackedBf16,
    bias: Option<&[f32]>,
    t: usize,
    out: &mut [f32],
) -> TractResult<()> {
    let (k, n) = (w.k, w.n);
    ensure!(kernel.supported(), "Linear bf16: this CPU cannot run {}", kernel.name());
    ensure!(
        x.len() == t * k && out.len() == t * n,
        "Linear bf16: x {} values for [{t}, {k}], out {} for [{t}, {n}]",
        x.len(),
        out.len()
    );
    if let Some(b) = bias {
        ensure!(b.len() == n, "Linear bf16: bias has {} values for N = {n}", b.len());
    }
    if t * n == 0 {
        return Ok(());
    }
    match bias {
        Some(b) => out.chunks_exact_mut(n).for_each(|row| row.copy_from_slice(b)),
        None => out.fill(0.0),
    }
    if k == 0 {
        return Ok(());
    }
    let block = super::linear::rows_per_thread(t, MR);
    let dst = OutPtr(out.as_mut_ptr());
    par_for(t.div_ceil(block), move |i| {
        let dst = dst;
        let r0 = i * block;
        let rows = block.min(t - r0);
        // SAFETY: rows r0..r0+rows of out are in bounds (lengths checked) and belong to this
        // block only.
        let c = unsafe { std::slice::from_raw_parts_mut(dst.0.add(r0 * n), rows * n) };
        block_product(kernel, &x[r0 * k..(r0 + rows) * k], w, rows, c);
        Ok(())
    })
}

/// `c += x w` for one thread's rows: round the rows to bf16 pairs, then [`product`].
fn block_product(kernel: Kernel, x: &[f32], w: &PackedBf16, rows: usize, c: &mut [f32]) {
    let (k, n) = (w.k, w.n);
    let k2 = k.div_ceil(2);
    ROWS.with(|buf| {
        let mut a = buf.borrow_mut();
        if a.len() < rows * k2 {
            a.resize(rows * k2, 0);
        }
        let a = &mut a[..rows * k2];
        round_rows(kernel, x, k, k, a);
        // SAFETY: `c` holds rows x n values at stride n.
        unsafe { product(kernel, a, k2, rows, &w.data, k2, n, c.as_mut_ptr(), n) };
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
    debug_assert!(rows == 0 || a.len() >= (rows - 1) * rsa + k2);
    debug_assert!(b.len() >= n.div_ceil(NR) * k2 * NR);
    let panels = n.div_ceil(NR);
    for p0 in (0..k2).step_by(KC2) {
        let kc2 = KC2.min(k2 - p0);
        for m0 in (0..rows).step_by(MC) {
            let mc = MC.min(rows - m0);
            for jp in 0..panels {
                let cols = NR.min(n - jp * NR);
                let b = &b[(jp * k2 + p0) * NR..(jp * k2 + p0 + kc2) * NR];
                for i0 in (m0..m0 + mc).step_by(MR) {
                    let tile = MR.min(m0 + mc - i0);
                    let a = &a[i0 * rsa + p0..];
                    // SAFETY: the tile's rows i0..i0+tile, columns jp*NR..+cols are inside C
                    // (caller); the slice spans them at stride rsc.
                    let c =
                        unsafe { std::slice::from_raw_parts_mut(c.add(i0 * rsc + jp * NR), (tile - 1) * rsc + cols) };
                    match kernel {
                        // SAFETY: the CPU has AVX512-BF16 (caller); `a` holds `tile` rows of
                        // kc2 pairs at stride rsa, `b` kc2 x NR pairs, `c` `tile` rows of
                        // `cols` values at stride rsc.
                        #[cfg(target_arch = "x86_64")]
                        Kernel::Avx512Bf16 => unsafe { avx512::tile(kc2, a, rsa, b, c, rsc, tile, cols) },
                        _ => portable_tile(kc2, a, rsa, b, c, rsc, tile, cols),
                    }
                }
            }
        }
    }
}

/// `c += a w`: `a` is `rows` rows of `w.k.div_ceil(2)` bf16 pairs at stride `rsa`, `c`
/// `rows x w.n` at row stride `rsc` (the head's sub-pixel deconvolution, `deconv.rs`).
///
/// # Safety
/// `c.add(i * rsc + j)` is writable for `i < rows`, `j < w.n`, and aliased by nothing else;
/// `kernel` is supported by this CPU.
pub unsafe fn product_packed(
    kernel: Kernel,
    a: &[u32],
    rsa: usize,
    rows: usize,
    w: &PackedBf16,
    c: *mut f32,
    rsc: usize,
) {
    let k2 = w.k.div_ceil(2);
    assert!(rows == 0 || a.len() >= (rows - 1) * rsa + k2);
    // SAFETY: as the caller promises.
    unsafe { product(kernel, a, rsa, rows, &w.data, k2, w.n, c, rsc) }
}

thread_local! {
    /// A row block's A operand of the attention in bf16 pairs.
    static ATT: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// Rows rounded to bf16 while packing.
    static HALF: RefCell<Vec<u16>> = const { RefCell::new(Vec::new()) };
}

/// Every head's keys and values of one attention in bf16, packed as B operands: `k[head]` is
/// kᵀ (`t.div_ceil(NR)` panels of `d/2` pairs: two channels of one key), `v[head]` is v
/// (`d.div_ceil(NR)` panels of `t/2` pairs: one channel of two keys).
#[derive(Default)]
pub struct PackedHeads {
    k: Vec<u32>,
    v: Vec<u32>,
    per_k: usize,
    per_v: usize,
}

impl PackedHeads {
    /// Pack `k` and `v` (`[t, h, d]`); reuses the buffers.
    pub fn pack(&mut self, kernel: Kernel, k: &[f32], v: &[f32], (t, h, d): (usize, usize, usize)) {
        assert!(k.len() == t * h * d && v.len() == t * h * d);
        let (d2, t2) = (d.div_ceil(2), t.div_ceil(2));
        self.per_k = t.div_ceil(NR) * d2 * NR;
        self.per_v = d.div_ceil(NR) * t2 * NR;
        self.k.resize(h * self.per_k, 0);
        self.v.resize(h * self.per_v, 0);
        HALF.with(|buf| {
            let mut half = buf.borrow_mut();
            // Every key row (all heads) rounded once: [t, h * d + 1] u16 (a zero past the end
            // of each row pads an odd d).
            let row = h * d + 1;
            half.resize(2 * t * row, 0);
            let (hk, hv) = half.split_at_mut(t * row);
            for (n, (rk, rv)) in hk.chunks_exact_mut(row).zip(hv.chunks_exact_mut(row)).enumerate() {
                round_u16(kernel, &k[n * h * d..(n + 1) * h * d], &mut rk[..h * d]);
                round_u16(kernel, &v[n * h * d..(n + 1) * h * d], &mut rv[..h * d]);
            }
            for head in 0..h {
                // kᵀ: B[p][n] = channels (2p, 2p + 1) of key n.
                let kb = &mut self.k[head * self.per_k..(head + 1) * self.per_k];
                for (jp, panel) in kb.chunks_exact_mut(d2 * NR).enumerate() {
                    let keys = NR.min(t - jp * NR);
                    for (jj, n) in (jp * NR..jp * NR + keys).enumerate() {
                        let src = &hk[n * row + head * d..n * row + head * d + d + 1];
                        for p in 0..d2 {
                            let hi = if 2 * p + 1 < d { src[2 * p + 1] as u32 } else { 0 };
                            panel[p * NR + jj] = src[2 * p] as u32 | (hi << 16);
                        }
                    }
                    for p in 0..d2 {
                        panel[p * NR + keys..(p + 1) * NR].fill(0);
                    }
                }
                // v: B[p][j] = channel j of keys (2p, 2p + 1).
                let vb = &mut self.v[head * self.per_v..(head + 1) * self.per_v];
                for (jp, panel) in vb.chunks_exact_mut(t2 * NR).enumerate() {
                    let cols = NR.min(d - jp * NR);
                    for (p, pairs) in panel.chunks_exact_mut(NR).enumerate() {
                        let lo = &hv[2 * p * row + head * d + jp * NR..][..cols];
                        let n1 = 2 * p + 1;
                        for (jj, x) in pairs[..cols].iter_mut().enumerate() {
                            let hi = if n1 < t { hv[n1 * row + head * d + jp * NR + jj] as u32 } else { 0 };
                            *x = lo[jj] as u32 | (hi << 16);
                        }
                        pairs[cols..].fill(0);
                    }
                }
            }
        })
    }
}

/// One (head, row block) of the fused attention's first product in bf16:
/// `logits[r, n] = q[r0 + r, head, :] . k[n, head, :]` for `r < rows`, `n < t`, at row stride
/// `stride`; `q` is `[t, h, d]`, the keys packed in `packed`. Overwrites the logits.
pub fn attention_logits(
    kernel: Kernel,
    q: &[f32],
    packed: &PackedHeads,
    (r0, rows, head): (usize, usize, usize),
    (t, h, d): (usize, usize, usize),
    logits: &mut [f32],
    stride: usize,
) {
    assert!(kernel.supported() && q.len() == t * h * d && r0 + rows <= t && head < h);
    assert!(rows == 0 || logits.len() >= (rows - 1) * stride + t);
    let d2 = d.div_ceil(2);
    ATT.with(|buf| {
        let mut a = buf.borrow_mut();
        a.resize(rows * d2, 0);
        round_rows(kernel, &q[r0 * h * d + head * d..], h * d, d, &mut a);
        for row in logits.chunks_mut(stride).take(rows) {
            row[..t].fill(0.0);
        }
        let b = &packed.k[head * packed.per_k..(head + 1) * packed.per_k];
        // SAFETY: logits holds rows x t at stride `stride` (asserted); the kernel is supported.
        unsafe { product(kernel, &a, d2, rows, b, d2, t, logits.as_mut_ptr(), stride) };
    })
}

/// The second product in bf16: `out[r0 + r, head, :] = sum_n w[r, n] v[n, head, :]` for
/// `r < rows` (`w` rows of `t` weights at row stride `stride`; the values packed in `packed`).
/// Overwrites the `rows x d` output values, at row stride `h * d` from `dst`.
///
/// # Safety
/// `dst.add(r * h * d + j)` is writable for `r < rows`, `j < d`, and aliased by nothing else.
#[allow(clippy::too_many_arguments)]
pub unsafe fn attention_values(
    kernel: Kernel,
    w: &[f32],
    stride: usize,
    rows: usize,
    packed: &PackedHeads,
    head: usize,
    (t, h, d): (usize, usize, usize),
    dst: *mut f32,
) {
    assert!(kernel.supported() && head < h);
    assert!(rows == 0 || w.len() >= (rows - 1) * stride + t);
    let t2 = t.div_ceil(2);
    ATT.with(|buf| {
        let mut a = buf.borrow_mut();
        a.resize(rows * t2, 0);
        round_rows(kernel, w, stride, t, &mut a);
        for r in 0..rows {
            // SAFETY: row r's d values are writable (caller).
            unsafe { std::slice::from_raw_parts_mut(dst.add(r * h * d), d).fill(0.0) };
        }
        let b = &packed.v[head * packed.per_v..(head + 1) * packed.per_v];
        // SAFETY: dst rows as the caller promises; the kernel is supported (asserted).
        unsafe { product(kernel, &a, t2, rows, b, t2, d, dst, h * d) };
    })
}

/// Round `src` to bf16 into `dst` (same length).
fn round_u16(kernel: Kernel, src: &[f32], dst: &mut [u16]) {
    match kernel {
        // SAFETY: the CPU has AVX512-BF16 (checked by the caller).
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Bf16 => unsafe { avx512::round_u16(src, dst) },
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
            Kernel::Avx512Bf16 => unsafe { avx512::round_row(src, dst) },
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
mod avx512 {
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
}

/// The product of the bf16-rounded operands in f64 (tests).
pub fn reference(x: &[f32], w: &PackedBf16, bias: Option<&[f32]>, t: usize) -> Vec<f32> {
    let (k, n) = (w.k, w.n);
    let wf = w.unpack();
    let r = |v: f32| from_bf16(to_bf16(v)) as f64;
    let mut out = vec![0f32; t * n];
    for i in 0..t {
        for j in 0..n {
            let s: f64 = (0..k).map(|p| r(x[i * k + p]) * wf[p * n + j] as f64).sum();
            out[i * n + j] = (s + bias.map_or(0.0, |b| b[j] as f64)) as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3F80);
        // 1 + 2^-8 is halfway between two bf16 values: ties to even (1.0).
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3F80);
        // 1 + 3 * 2^-8: halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): up to the even one.
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3F82);
        assert_eq!(to_bf16(1.0 + 1.0 / 128.0 + 1.0 / 1024.0), 0x3F81);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
    }

    #[test]
    fn packing_round_trips_the_rounded_weight() {
        for &(k, n) in &[(1, 1), (7, 33), (64, 32), (5, 70)] {
            let w = lcg(k * n, (k * 31 + n) as u64);
            let p = PackedBf16::pack(&w, k, n);
            let back = p.unpack();
            for (a, b) in w.iter().zip(&back) {
                assert_eq!(from_bf16(to_bf16(*a)), *b, "[{k}, {n}]");
            }
        }
    }

    /// Every bf16 kernel this CPU has against the f64 product of the rounded operands: tile
    /// edges (rows, columns), odd K, K past one chunk, with and without bias, one and several
    /// row blocks.
    #[test]
    fn every_kernel_matches_the_rounded_f64_product() {
        let kernels: Vec<Kernel> =
            [Kernel::Avx512Bf16, Kernel::Portable].into_iter().filter(|k| k.supported()).collect();
        eprintln!("bf16 kernels tested: {kernels:?}");
        for (i, &(t, k, n)) in [(1, 2, 1), (13, 7, 33), (25, 300, 65), (200, 64, 100), (5, 384, 32)].iter().enumerate()
        {
            let x = lcg(t * k, 3 * i as u64 + 1);
            let w = PackedBf16::pack(&lcg(k * n, 3 * i as u64 + 2), k, n);
            let bias = lcg(n, 3 * i as u64 + 3);
            for b in [None, Some(&bias[..])] {
                let want = reference(&x, &w, b, t);
                for &kernel in &kernels {
                    let mut out = vec![f32::NAN; t * n];
                    linear_bf16_at(kernel, &x, &w, b, t, &mut out).unwrap();
                    let err = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    // f32 sums of exact products: rounding only, relative to sqrt(k) terms.
                    assert!(
                        err < 1e-5 * (k as f32).max(16.0),
                        "[{t}x{k}]x[{k}x{n}] {kernel:?} bias {}: {err}",
                        b.is_some()
                    );
                }
            }
        }
    }

    /// Rounding the operands costs ~3 significant digits, not more: the bf16 product stays
    /// within 2^-7 (relative to the magnitude of the sums) of the exact f32 one.
    #[test]
    fn bf16_stays_close_to_the_f32_product() {
        let (t, k, n) = (40, 384, 96);
        let x = lcg(t * k, 7);
        let wf = lcg(k * n, 8);
        let w = PackedBf16::pack(&wf, k, n);
        let exact = super::super::linear::reference(&x, &wf, None, t, k, n);
        let mut out = vec![0f32; t * n];
        linear_bf16(&x, &w, None, t, &mut out).unwrap();
        let scale = exact.iter().map(|v| v.abs()).fold(0.0, f32::max);
        let err = out.iter().zip(&exact).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(err < scale / 128.0, "max error {err} for sums up to {scale}");
        assert!(err > 0.0, "bf16 rounding should change something");
    }

    /// The fused attention with both products in bf16, every kernel this CPU has, against the
    /// f64 formula on the bf16-rounded q, k, v: odd T and D (padding of the pairs and panels),
    /// several row blocks, key bias on and off. The softmax weights are rounded too, so the
    /// tolerance is bf16's (2^-8 of the output's magnitude), not f32's; and the kernels agree
    /// with each other to f32 rounding.
    #[test]
    fn bf16_attention_matches_the_rounded_f64_formula() {
        use crate::model::attention::{attend_with, reference, Products};
        let kernels: Vec<Kernel> =
            [Kernel::Avx512Bf16, Kernel::Portable].into_iter().filter(|k| k.supported()).collect();
        let r = |x: &[f32]| -> Vec<f32> { x.iter().map(|&v| from_bf16(to_bf16(v))).collect() };
        for (i, &(t, h, d, block)) in
            [(1, 1, 2, 4), (37, 3, 7, 16), (70, 2, 64, 32), (33, 1, 33, 256)].iter().enumerate()
        {
            let q = lcg(t * h * d, 10 + i as u64);
            let k = lcg(t * h * d, 20 + i as u64);
            let v = lcg(t * h * d, 30 + i as u64);
            let bias: Vec<f32> = lcg(t, 40 + i as u64).iter().map(|b| b * 4.0).collect();
            for b in [None, Some(&bias[..])] {
                let want = reference(&r(&q), &r(&k), &r(&v), b, t, h, d);
                let scale = want.iter().map(|x| x.abs()).fold(0.0, f32::max).max(1e-3);
                let mut first: Option<Vec<f32>> = None;
                for &kernel in &kernels {
                    let mut out = vec![f32::NAN; t * h * d];
                    attend_with(Products::Bf16(kernel), block, &q, &k, &v, b, t, h, d, &mut out).unwrap();
                    let err = out.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                    assert!(err < scale / 256.0, "[{t}, {h}, {d}] block {block} {kernel:?}: {err} of {scale}");
                    if let Some(f) = &first {
                        let e = out.iter().zip(f).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                        assert!(e < 1e-5, "[{t}, {h}, {d}] kernels disagree by {e}");
                    }
                    first = Some(out);
                }
            }
        }
    }

    #[test]
    fn equal_weights_are_packed_once() {
        let w = lcg(64 * 40, 11);
        let a = intern(PackedBf16::pack(&w, 64, 40));
        let b = intern(PackedBf16::pack(&w, 64, 40));
        assert!(Arc::ptr_eq(&a, &b));
        let c = intern(PackedBf16::pack(&lcg(64 * 40, 12), 64, 40));
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn precision_names() {
        use crate::choice::Named;
        assert_eq!(Precision::from_name("bf16"), Some(Precision::Bf16));
        assert_eq!(Precision::from_name("f16"), None);
        assert!(Precision::F32.supported());
    }
}
