//! The saliency head's transposed convolutions as sub-pixel convolutions (issue #4).
//!
//! The head upsamples with three `ConvTranspose` (kernel 4, stride 2, padding 1). tract lowers
//! each to one matmul that writes every input pixel's 4x4 x C_out contributions (64 MB for the
//! last layer at 448 px, m = 16384 positions, k = 128, n = 1024) and a `DeconvSum` that adds the
//! overlapping ones back up: 60-100 GFLOP/s and a fifth of the head in the sum alone. But with
//! stride 2, each output parity `(oy % 2, ox % 2)` only ever sees 2 x 2 of the 16 kernel taps:
//!
//! - `oy = 2y`:     input rows `y` (tap `ky = 1`) and `y - 1` (`ky = 3`);
//! - `oy = 2y + 1`: input rows `y + 1` (`ky = 0`) and `y` (`ky = 2`); the same along x.
//!
//! So [`SubpixelDeconv`] computes each parity as four accumulated GEMMs (`C_out x C_in` kernel
//! slice times `C_in x positions`) straight from a zero-bordered copy of the input, reading the
//! kernel in place through strides, and writes the parity's pixels into the output with the
//! bias. Same multiply-adds, no 16x intermediate, no overlap-add. The GEMMs are the `gemm`
//! crate's; blocks of (parity, rows) run on tract's executor.
//!
//! With `[model] precision = "bf16"` (or "f16") the products run in bf16 (f16) ([`deconv_bf16`]): the kernel's
//! taps are rounded and packed once at the swap ([`Taps`]), the input once per call into
//! position-major channel pairs, so each tap's product (`positions x C_in` times `C_in x C_out`)
//! reads it in place; sums in f32.
//!
//! [`swap`] replaces every `Deconv` of exactly that shape in a decluttered graph (NCHW, batch 1,
//! one group, kernel 4, stride 2, padding 1, no output adjustment, constant OIHW kernel); others
//! stay tract's. `[model] cpu_ops = "tract"` turns it off (`cut::set_own_ops`).
//! `tests/model/subpixel_deconv.rs` checks [`deconv`] against the textbook scatter
//! ([`reference`]) on random inputs, and the head against tract's. Where the op holds its kernel
//! as packed taps (`avx512` f32, or bf16) the plan no longer keeps the f32 kernel as an input.
//! [`fuse`] then folds the BatchNorm, ReLU and 1x1 convolution after each deconvolution into its
//! write-out ([`Epilogue`], `epilogue.rs`).

use std::cell::RefCell;

use tract_core::internal::*;

use super::bf16::{Format, Half, Packed16};

mod epilogue;
mod op;

pub use epilogue::{fuse, Epilogue};
pub use op::{chain, swap};

/// Output positions (padded-width grid) per block: the `C_out x POSITIONS` accumulator is 512 KB
/// at 64 channels, half this CPU's L2.
const POSITIONS: usize = 2048;

/// `ConvTranspose` with kernel 4, stride 2, padding 1 on `[1, C_in, H, W]`; kernel `[C_out, C_in,
/// 4, 4]` (tract's OIHW), bias `[C_out]`; output `[1, C_out, 2H, 2W]`.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct SubpixelDeconv {
    /// The kernel's 16 taps rounded to bf16 or f16 and packed (`[model] precision = "bf16"` or
    /// "f16"; the products then run on that format's kernel).
    pub half: Option<Taps>,
    /// The f32 kernel's taps packed, for the position-major path (levels `avx512`, `avx2`; f32).
    pub f32_taps: Option<F32Taps>,
    /// The BatchNorm, ReLU and 1x1 convolution after it, applied as the output is written
    /// ([`fuse`]).
    pub epilogue: Option<Epilogue>,
    /// The input is `[1, H, W, C_in]` (the deconvolution before it wrote it so, [`chain`]).
    pub nhwc_in: bool,
    /// The output is `[1, 2H, 2W, C_out]`, for the deconvolution after it ([`chain`]).
    pub nhwc_out: bool,
}

/// A deconvolution kernel's 16 taps, each a `C_in x C_out` matrix packed once for our AVX-512
/// kernel (`sgemm::PackedF32`): the four taps of an output parity then run as one product
/// ([`sgemm::run_sum`](super::sgemm::run_sum)) with nothing packed per call (gathering the taps
/// from the `[C_out, C_in, 4, 4]` kernel at a stride of 16 floats per call cost 12% of the head's
/// deconvolutions at 1 thread). Built once at the swap and shared by every plan ([`f32_taps`]).
#[derive(PartialEq)]
pub struct TapMajor(pub Vec<super::sgemm::PackedF32>);

impl std::fmt::Debug for TapMajor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TapMajor({} taps)", self.0.len())
    }
}

impl TapMajor {
    /// The 16 taps of `kernel` (`[co, ci, 4, 4]`), packed.
    pub fn pack(kernel: &[f32], ci: usize, co: usize) -> TapMajor {
        assert_eq!(kernel.len(), co * ci * 16, "f32_taps: {} values for [{co}, {ci}, 4, 4]", kernel.len());
        let mut taps: Vec<_> = (0..16).map(|_| super::sgemm::PackedF32::empty()).collect();
        Self::repack(&mut taps, kernel, ci, co);
        TapMajor(taps)
    }

    /// [`TapMajor::pack`] into `taps` (16), reusing their buffers.
    fn repack(taps: &mut [super::sgemm::PackedF32], kernel: &[f32], ci: usize, co: usize) {
        assert!(taps.len() == 16 && kernel.len() == co * ci * 16);
        for (tap, t) in taps.iter_mut().enumerate() {
            // SAFETY: element (c, o) of tap `tap` is kernel[(o * ci + c) * 16 + tap], in bounds
            // (asserted).
            unsafe { t.repack(kernel[tap..].as_ptr(), 16, ci * 16, ci, co) };
        }
    }
}

/// Packed taps shared by identity (see [`TapMajor`]).
pub type F32Taps = super::bf16::Shared<TapMajor>;

/// The packed taps of `kernel` (`[co, ci, 4, 4]`), interned by content: every plan (all input
/// sizes) that swaps the same kernel gets the same copy.
pub fn f32_taps(kernel: &[f32], ci: usize, co: usize) -> F32Taps {
    let t = TapMajor::pack(kernel, ci, co);
    static LIVE: std::sync::Mutex<Vec<std::sync::Weak<TapMajor>>> = std::sync::Mutex::new(Vec::new());
    let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    live.retain(|w| w.strong_count() > 0);
    if let Some(s) = live.iter().filter_map(std::sync::Weak::upgrade).find(|s| **s == t) {
        return super::bf16::Shared(s);
    }
    let s = Arc::new(t);
    live.push(Arc::downgrade(&s));
    super::bf16::Shared(s)
}

/// The 16 taps of a deconvolution kernel in bf16 or f16: tap `ky * 4 + kx` as a packed `C_in x C_out`
/// matrix (each shared by every plan with the same kernel), compared by identity.
pub type Taps = super::bf16::Shared<Vec<Arc<Packed16>>>;

impl super::bf16::Shared<Vec<Arc<Packed16>>> {
    /// Round `kernel` (`[co, ci, 4, 4]`) to bf16 and pack it.
    pub fn pack(kernel: &[f32], ci: usize, co: usize) -> Taps {
        Taps::pack_as(Format::Bf16, kernel, ci, co)
    }

    /// Round `kernel` (`[co, ci, 4, 4]`) to `format` and pack it.
    pub fn pack_as(format: Format, kernel: &[f32], ci: usize, co: usize) -> Taps {
        assert_eq!(kernel.len(), co * ci * 16);
        let taps = (0..16)
            .map(|tap| {
                let w: Vec<f32> = (0..ci * co).map(|i| kernel[((i % co) * ci + i / co) * 16 + tap]).collect();
                super::bf16::intern(Packed16::pack_as(format, &w, ci, co))
            })
            .collect();
        super::bf16::Shared(Arc::new(taps))
    }
}

thread_local! {
    /// A block's accumulator (on the thread that runs the block).
    static ACC: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The bordered input (on the thread that runs the op).
    static XP: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The kernel's taps packed per call, when the op holds none (tests).
    static TAPS: RefCell<Vec<super::sgemm::PackedF32>> = const { RefCell::new(Vec::new()) };
    /// The bordered input in bf16, position-major: `[(h + 2) * (w + 2) + slack, C_in / 2]`
    /// channel pairs (on the thread that runs the op).
    static XPT: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// For output parity `p` (0 or 1) of one axis: the two (input offset, kernel tap) pairs.
const fn taps_of(p: usize) -> [(isize, usize); 2] {
    if p == 0 {
        [(0, 1), (-1, 3)]
    } else {
        [(1, 0), (0, 2)]
    }
}

/// The sub-pixel transposed convolution on plain slices: `x` is `[ci, h, w]`, `kernel`
/// `[co, ci, 4, 4]`, `bias` `[co]`, `out` `[co, 2h, 2w]`, on the process's ISA level.
#[allow(clippy::too_many_arguments)]
pub fn deconv(
    x: &[f32],
    kernel: &[f32],
    bias: &[f32],
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    out: &mut [f32],
) -> TractResult<()> {
    deconv_at(super::isa::level(), x, kernel, bias, ci, h, w, co, out)
}

/// Which GEMM a level's deconvolutions run on: at `avx512` and `avx2` our tile, position-major
/// on packed taps (at `avx512` 1.40-1.47x the `gemm` crate on an Intel Xeon; on AMD Zen 4's
/// 256-bit units still 1.2x: the head 120-127 against 140-148 ms at 448 px, 1 thread), else
/// the `gemm` crate.
pub fn kernel_name(level: super::isa::Level) -> &'static str {
    match level {
        super::isa::Level::Avx512 => "ailurus-avx512",
        super::isa::Level::Avx2 => "ailurus-avx2",
        _ => "gemm-crate",
    }
}

/// [`deconv`] on `level`'s GEMM (tests force each level the CPU has). At `avx512` the products
/// run position-major (`C = X_tap K_tap`, positions x C_out) so that the kernel slice, read at a
/// stride of 16, is the operand our kernel packs and the input rows are read in place.
#[allow(clippy::too_many_arguments)]
pub fn deconv_at(
    level: super::isa::Level,
    x: &[f32],
    kernel: &[f32],
    bias: &[f32],
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    out: &mut [f32],
) -> TractResult<()> {
    deconv_fused(level, x, kernel, None, bias, ci, h, w, co, None, out)
}

/// [`deconv_at`] with the kernel's packed taps ([`f32_taps`]) for the `avx512` path (the
/// products are the same, bit for bit, only the packing reads differ; `kernel` may then be
/// empty), followed by `epilogue` (if any), applied as each block writes its pixels: `out` then
/// holds [`Epilogue::channels_out`] channels of `2h x 2w`.
#[allow(clippy::too_many_arguments)]
pub fn deconv_fused(
    level: super::isa::Level,
    x: &[f32],
    kernel: &[f32],
    taps: Option<&TapMajor>,
    bias: &[f32],
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    epilogue: Option<&Epilogue>,
    out: &mut [f32],
) -> TractResult<()> {
    ensure!(level.supported(), "SubpixelDeconv: this CPU cannot run {level}");
    if let Some(e) = epilogue {
        e.check(co)?;
    }
    // The kernel may be left out (empty) where the packed taps are given and used.
    let taps_only = kernel.is_empty() && taps.is_some() && super::sgemm::packs(level);
    let co_out = epilogue.map_or(co, |e| e.channels_out(co));
    ensure!(
        x.len() == ci * h * w
            && (taps_only || kernel.len() == co * ci * 16)
            && taps.is_none_or(|t| t.0.len() == 16 && t.0.iter().all(|t| t.k == ci && t.n == co))
            && bias.len() == co
            && out.len() == co_out * 4 * h * w,
        "SubpixelDeconv: x {}, kernel {}, taps {:?}, bias {}, out {} values for C_in {ci}, {h}x{w}, C_out {co} ({co_out} written)",
        x.len(),
        kernel.len(),
        taps.map(|t| t.0.first().map(|t| (t.k, t.n))),
        bias.len(),
        out.len()
    );
    if out.is_empty() {
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if super::sgemm::packs(level) {
        return position_major(level, x, kernel, taps, bias, (ci, h, w, co), epilogue, (false, false), out);
    }
    // Zero-bordered input [ci, h + 2, w + 2], plus slack: the two padding columns of the last
    // row of a block read a little past a plane (values that are computed and never written).
    // Kept per thread and reused: the interior and the border are rewritten on every call.
    let (hp, wp) = (h + 2, w + 2);
    let plane = hp * wp;
    XP.with(|xp| {
        let mut xp = xp.borrow_mut();
        let len = ci * plane + 2 * wp + 2;
        if xp.len() < len {
            xp.resize(len, 0.0);
        }
        let xp = &mut xp[..len];
        for c in 0..ci {
            let p = &mut xp[c * plane..][..plane];
            p[..wp].fill(0.0);
            p[(h + 1) * wp..].fill(0.0);
            for y in 0..h {
                let row = &mut p[(y + 1) * wp..][..wp];
                row[0] = 0.0;
                row[1..=w].copy_from_slice(&x[(c * h + y) * w..][..w]);
                row[w + 1] = 0.0;
            }
        }
        xp[ci * plane..].fill(0.0);
        parities(xp, kernel, bias, ci, h, w, co, epilogue, out)
    })
}

/// [`deconv_at`] position-major on our AVX-512 GEMM: the input copied once into a zero-bordered
/// `[(h + 2) (w + 2) + slack, C_in]` grid, then per block and parity `C (positions x C_out) =
/// sum over its 4 taps of X_tap (positions x C_in, rows of the grid in place) K_tap (C_in x
/// C_out, packed)`, one product ([`super::sgemm::run_sum`]).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn position_major(
    level: super::isa::Level,
    x: &[f32],
    kernel: &[f32],
    taps: Option<&TapMajor>,
    bias: &[f32],
    (ci, h, w, co): (usize, usize, usize, usize),
    epilogue: Option<&Epilogue>,
    (nhwc_in, nhwc_out): (bool, bool),
    out: &mut [f32],
) -> TractResult<()> {
    let wp = w + 2;
    let plane = (h + 2) * wp;
    XP.with(|xp| {
        let mut xp = xp.borrow_mut();
        // Slack as in `deconv`: the padding columns of a block's last row read past the plane.
        let len = (plane + 2 * wp + 2) * ci;
        if xp.len() < len {
            xp.resize(len, 0.0);
        }
        let xp = &mut xp[..len];
        // The border rows (and the slack) are zeroed here, each interior row with its two border
        // columns by its own task: the transpose runs on every thread (serial, it cost the 2-thread
        // head 5 ms at 448 px).
        xp[..wp * ci].fill(0.0);
        xp[(h + 1) * wp * ci..].fill(0.0);
        let dst = super::attention::OutPtr(xp.as_mut_ptr());
        super::attention::par_for(h, move |y| {
            let dst = dst;
            // SAFETY: bordered row y + 1 (wp positions of ci values) is this task's only; in
            // bounds (len above).
            let row = unsafe { std::slice::from_raw_parts_mut(dst.0.add((y + 1) * wp * ci), wp * ci) };
            row[..ci].fill(0.0);
            row[(w + 1) * ci..].fill(0.0);
            if nhwc_in {
                row[ci..(w + 1) * ci].copy_from_slice(&x[y * w * ci..(y + 1) * w * ci]);
                return Ok(());
            }
            for c in 0..ci {
                for (xx, v) in x[(c * h + y) * w..][..w].iter().enumerate() {
                    row[(xx + 1) * ci + c] = *v;
                }
            }
            Ok(())
        })?;
        let xp = &xp[..];
        TAPS.with(|own| {
            let mut own = own.borrow_mut();
            let taps: &[super::sgemm::PackedF32] = match taps {
                Some(t) => &t.0,
                None => {
                    own.resize_with(16, super::sgemm::PackedF32::empty);
                    TapMajor::repack(&mut own, kernel, ci, co);
                    &own
                }
            };
            let layout = if nhwc_out { Layout::PositionMajorNhwc } else { Layout::PositionMajor };
            blocks(h, w, co, bias, layout, epilogue, out, |parity, n, acc| {
                debug_assert!(parity.iter().all(|&(start, _)| (start + n) * ci <= xp.len()) && acc.len() >= n * co);
                let runs = parity.map(|(start, tap)| (xp[start * ci..].as_ptr(), &taps[tap]));
                // SAFETY: each run's A is n rows of ci values of xp (in bounds, see the slack);
                // its taps are ci x co (checked by the caller); C is acc, n x co; the caller
                // checked the level.
                unsafe { super::sgemm::run_sum(&runs, n, ci, acc.as_mut_ptr(), co, false, level) };
            })
        })
    })
}

/// [`deconv_fused`] at the process's level (one that [`super::sgemm::packs`]) with its packed taps, reading `x` as `[H, W, C_in]` when
/// `nhwc_in` and writing `out` as `[2H, 2W, C_out]` when `nhwc_out` (no projection then): two
/// deconvolutions in a row pass their tensor position-major, as both compute it ([`chain`]),
/// instead of transposing it to channels on the way out and back on the way in. The same
/// values, bit for bit, in the other layout.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
pub fn deconv_nhwc(
    x: &[f32],
    taps: &TapMajor,
    bias: &[f32],
    (ci, h, w, co): (usize, usize, usize, usize),
    epilogue: Option<&Epilogue>,
    (nhwc_in, nhwc_out): (bool, bool),
    out: &mut [f32],
) -> TractResult<()> {
    let level = super::isa::level();
    ensure!(super::sgemm::packs(level), "SubpixelDeconv: packed taps at {level}");
    if let Some(e) = epilogue {
        e.check(co)?;
    }
    let co_out = epilogue.map_or(co, |e| e.channels_out(co));
    ensure!(!nhwc_out || co_out == co, "SubpixelDeconv: a projection's output is one plane, not [2H, 2W, C]");
    ensure!(
        x.len() == ci * h * w
            && taps.0.len() == 16
            && taps.0.iter().all(|t| t.k == ci && t.n == co)
            && bias.len() == co
            && out.len() == co_out * 4 * h * w,
        "SubpixelDeconv: x {}, bias {}, out {} values for C_in {ci}, {h}x{w}, C_out {co} ({co_out} written)",
        x.len(),
        bias.len(),
        out.len()
    );
    if out.is_empty() {
        return Ok(());
    }
    position_major(level, x, &[], Some(taps), bias, (ci, h, w, co), epilogue, (nhwc_in, nhwc_out), out)
}

/// [`deconv`] with the products in bf16 or f16 on `kernel` (`taps`: the kernel packed by
/// [`Taps::pack_as`] in its format): the input rounded once into bordered, position-major channel pairs, so a
/// tap's product for a block of positions reads rows of it in place (`C = X_tap W_tap`, positions
/// x C_out); then `epilogue`, as [`deconv_fused`].
#[allow(clippy::too_many_arguments)]
pub fn deconv_bf16(
    kernel: impl Into<Half>,
    x: &[f32],
    taps: &Taps,
    bias: &[f32],
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    epilogue: Option<&Epilogue>,
    out: &mut [f32],
) -> TractResult<()> {
    let kernel: Half = kernel.into();
    ensure!(kernel.supported(), "SubpixelDeconv: this CPU cannot run {}", kernel.name());
    let format = kernel.format();
    ensure!(taps.0.iter().all(|t| t.format == format), "SubpixelDeconv: taps not in {format:?}");
    if let Some(e) = epilogue {
        e.check(co)?;
    }
    let co_out = epilogue.map_or(co, |e| e.channels_out(co));
    ensure!(
        x.len() == ci * h * w && bias.len() == co && out.len() == co_out * 4 * h * w && taps.0.len() == 16,
        "SubpixelDeconv: x {}, bias {}, out {} values for C_in {ci}, {h}x{w}, C_out {co} ({co_out} written)",
        x.len(),
        bias.len(),
        out.len()
    );
    ensure!(taps.0.iter().all(|t| t.k == ci && t.n == co), "SubpixelDeconv: packed taps are not [{ci}, {co}]");
    if out.is_empty() {
        return Ok(());
    }
    let (wp, ci2) = (w + 2, ci.div_ceil(2));
    let plane = (h + 2) * wp;
    XPT.with(|xpt| {
        let mut xpt = xpt.borrow_mut();
        // Slack as in `deconv`: the padding columns of a block's last row read past the plane.
        let len = (plane + 2 * wp + 2) * ci2;
        xpt.clear();
        xpt.resize(len, 0);
        for c2 in 0..ci2 {
            for y in 0..h {
                let lo = &x[(2 * c2 * h + y) * w..][..w];
                let hi = (2 * c2 + 1 < ci).then(|| &x[((2 * c2 + 1) * h + y) * w..][..w]);
                for xx in 0..w {
                    let hv = hi.map_or(0, |r| format.round(r[xx]) as u32);
                    xpt[((y + 1) * wp + xx + 1) * ci2 + c2] = format.round(lo[xx]) as u32 | (hv << 16);
                }
            }
        }
        let xpt = &xpt[..];
        // C (positions x C_out) += X_tap (positions x C_in, rows of xpt) W_tap, per tap.
        blocks(h, w, co, bias, Layout::PositionMajor, epilogue, out, |parity, n, acc| {
            acc.fill(0.0);
            for &(start, tap) in parity {
                let a = &xpt[start * ci2..(start + n) * ci2];
                // SAFETY: acc holds n x co values at stride co; `a` n rows of ci2 pairs; the
                // kernel is supported (checked above).
                unsafe { super::bf16::product_packed(kernel, a, ci2, n, &taps.0[tap], acc.as_mut_ptr(), co) };
            }
        })
    })
}

/// How a block's accumulator is laid out: `[C_out, positions]` or `[positions, C_out]`; and
/// the output: `[C_out, 2H, 2W]`, or with `PositionMajorNhwc` `[2H, 2W, C_out]`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    ChannelMajor,
    PositionMajor,
    PositionMajorNhwc,
}

/// The four parities of a deconvolution in blocks of rows, run on tract's executor: per block,
/// `product(taps, n, acc)` writes the sum of the parity's four taps into the block's accumulator
/// (`taps[i] = (start, tap)`: `n` positions of the padded-width grid starting at bordered
/// position `start`, times kernel tap `ky * 4 + kx`), then the parity's pixels are written with
/// the bias and the epilogue ([`epilogue::write_row`]).
#[allow(clippy::too_many_arguments)]
fn blocks(
    h: usize,
    w: usize,
    co: usize,
    bias: &[f32],
    layout: Layout,
    epilogue: Option<&Epilogue>,
    out: &mut [f32],
    product: impl Fn(&[(usize, usize); 4], usize, &mut [f32]) + Sync + Send,
) -> TractResult<()> {
    let wp = w + 2;
    let rows = (POSITIONS / wp).clamp(1, h);
    let blocks = h.div_ceil(rows);
    let outp = super::attention::OutPtr(out.as_mut_ptr());
    super::attention::par_for(4 * blocks, move |i| {
        let outp = outp;
        let (parity, b) = (i % 4, i / 4);
        let (py, px) = (parity / 2, parity % 2);
        let y0 = b * rows;
        let ny = rows.min(h - y0);
        let n = ny * wp;
        ACC.with(|acc| {
            let mut acc = acc.borrow_mut();
            if acc.len() < co * n {
                acc.resize(co * n, 0.0);
            }
            let acc = &mut acc[..co * n];
            let mut taps = [(0, 0); 4];
            for (i, (dy, ky)) in taps_of(py).into_iter().enumerate() {
                for (j, (dx, kx)) in taps_of(px).into_iter().enumerate() {
                    // Input element (c, y + dy, x + dx) of output pixel (y, x), y0 <= y < y0 + ny,
                    // sits at bordered position (y + 1 + dy) * wp + (x + 1 + dx): for the block's
                    // positions p = (y - y0) * wp + x it is start + p.
                    let start = ((y0 as isize + 1 + dy) * wp as isize + 1 + dx) as usize;
                    taps[2 * i + j] = (start, ky * 4 + kx);
                }
            }
            product(&taps, n, acc);
            let (oh, ow) = (2 * h, 2 * w);
            let acc = &acc[..];
            for y in 0..ny {
                let oy = 2 * (y0 + y) + py;
                if layout == Layout::PositionMajorNhwc {
                    for x in 0..w {
                        let src = &acc[(y * wp + x) * co..][..co];
                        // SAFETY: output pixel (oy, 2x + px), its co channels: this parity's,
                        // written by this block only; in bounds (checked by the callers).
                        unsafe { epilogue::write_pixel(epilogue, bias, src, outp.0.add((oy * ow + 2 * x + px) * co)) };
                    }
                    continue;
                }
                #[cfg(target_arch = "x86_64")]
                if let Some(e) = epilogue.filter(|e| {
                    e.project.is_some() && layout == Layout::PositionMajor && super::sgemm::packs(super::isa::level())
                }) {
                    let at = acc[y * wp * co..][..w * co].as_ptr();
                    // SAFETY (of the offsets): channel j's output row oy, column px (as below).
                    let dst = |j: usize| unsafe { outp.0.add((j * oh + oy) * ow + px) };
                    // SAFETY: this row's w x co accumulators; the output rows as below; the CPU
                    // has the level (supported; `avx512` or `avx2`).
                    let done = unsafe {
                        if super::isa::level() == super::isa::Level::Avx512 {
                            epilogue::write_row_projected(e, bias, w, at, dst)
                        } else {
                            epilogue::write_row_projected_avx2(e, bias, w, at, dst)
                        }
                    };
                    if done {
                        continue;
                    }
                }
                // Channel o of input column x in this row of the block.
                let get = |o: usize, x: usize| match layout {
                    Layout::ChannelMajor => acc[o * n + y * wp + x],
                    _ => acc[(y * wp + x) * co + o],
                };
                // SAFETY: row oy of each written channel, columns 2x + px (x < w): this
                // parity's pixels, written by this block only; the output holds every written
                // channel (checked by the callers).
                unsafe { epilogue::write_row(epilogue, bias, w, get, |j| outp.0.add((j * oh + oy) * ow + px)) };
            }
            Ok(())
        })
    })
}

/// The four parities of [`deconv`] from the bordered input `xp`, in blocks of rows.
#[allow(clippy::too_many_arguments)]
fn parities(
    xp: &[f32],
    kernel: &[f32],
    bias: &[f32],
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    epilogue: Option<&Epilogue>,
    out: &mut [f32],
) -> TractResult<()> {
    let plane = (h + 2) * (w + 2);
    // C (C_out x positions) += K_tap (C_out x C_in, read in place) X_tap (C_in x positions).
    blocks(h, w, co, bias, Layout::ChannelMajor, epilogue, out, |taps, n, acc| {
        for (i, &(start, tap)) in taps.iter().enumerate() {
            let first = i == 0;
            debug_assert!((ci - 1) * plane + start + n <= xp.len());
            // SAFETY: acc is [co, n]; the kernel slice [co, ci] at tap (ky, kx) is
            // kernel[(o * ci + c) * 16 + ky * 4 + kx], in bounds; input element c of position
            // start + p is xp[c * plane + start + p], in xp (see the slack in `deconv`).
            unsafe {
                gemm::gemm(
                    co,
                    n,
                    ci,
                    acc.as_mut_ptr(),
                    1,
                    n as isize,
                    !first,
                    kernel.as_ptr().add(tap),
                    16,
                    (ci * 16) as isize,
                    xp.as_ptr().add(start),
                    1,
                    plane as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
    })
}

/// The textbook transposed convolution: every input pixel scatters its 4 x 4 x C_out
/// contributions into the output (f64). What [`deconv`] is tested against.
pub fn reference(x: &[f32], kernel: &[f32], bias: &[f32], ci: usize, h: usize, w: usize, co: usize) -> Vec<f32> {
    let (oh, ow) = (2 * h, 2 * w);
    let mut out: Vec<f64> = (0..co * oh * ow).map(|i| bias[i / (oh * ow)] as f64).collect();
    for c in 0..ci {
        for y in 0..h {
            for xx in 0..w {
                let v = x[(c * h + y) * w + xx] as f64;
                for o in 0..co {
                    for ky in 0..4 {
                        for kx in 0..4 {
                            let (oy, ox) = (2 * y as isize - 1 + ky as isize, 2 * xx as isize - 1 + kx as isize);
                            if oy < 0 || ox < 0 || oy >= oh as isize || ox >= ow as isize {
                                continue;
                            }
                            out[(o * oh + oy as usize) * ow + ox as usize] +=
                                v * kernel[((o * ci + c) * 4 + ky) * 4 + kx] as f64;
                        }
                    }
                }
            }
        }
    }
    out.into_iter().map(|v| v as f32).collect()
}
