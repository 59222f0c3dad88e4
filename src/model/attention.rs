//! Fused attention for the CPU plans (issue #4): `softmax(q kᵀ + bias) v` per head, one block
//! of query rows at a time.
//!
//! tract runs the ViT's attention as three nodes: an `EinSum` that writes the whole logit tensor
//! `[1, H, T, T]` (25 MB at T = 1025), a `Softmax` that reads and rewrites it, and a second
//! `EinSum` that packs it again and multiplies by `v`: four passes over a tensor larger than the
//! caches, with tract's matmul kernels at 60-80 GFLOP/s on these shapes (`ailurus profile
//! --nodes`). [`FusedAttention`] computes the same thing for [`ROWS`] query rows of one head at
//! a time, so the logit block (`ROWS x T`, 1 MB at T = 1025) stays in cache between the two
//! products:
//! - the two products run on the `gemm` crate (the GEMM under faer, well kept), which reads `q`,
//!   `k` and `v` in place through strides: no transposes, no copies;
//! - the softmax uses tract's own vectorised kernels (max, exp-and-sum), and the 1/sum scale is
//!   applied to the `ROWS x D` output rather than the `ROWS x T` weights;
//! - blocks of (head, rows) run in parallel on tract's executor (`[model] threads`).
//!
//! [`fuse`] swaps the op into a decluttered graph where it finds the exact pattern this model's
//! export gives (`mbk,nbk->abmn` -> [+ key bias] -> `Softmax` -> `abmk,kbn->mbn`); anything else
//! is left to tract. `[model] cpu_ops = "tract"` turns it off (`cut::set_own_ops`).
//! `tests/fused_attention.rs` checks [`attend`] against the textbook formula ([`reference`]) on
//! random inputs, and the fused model parts against tract's.

use std::cell::RefCell;

use tract_core::internal::*;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::nn::{Softmax, SoftmaxKind};
use tract_linalg::multithread::{current_tract_executor, Executor};

use super::sgemm::{Gemm, PackedF32};

/// Query rows per block, at most (the rows are split into blocks of even size). Measured at
/// T = 1028 (examples/attn_check.rs), 1 and 2 threads: 32 and 64 rows lose 10-30% to the GEMMs'
/// packing; 128 to 1028 are within noise. 256 keeps the logit block at 1 MB (the AMD EPYC's
/// L2) and gives 30 blocks at T = 1025 to share among threads.
pub const ROWS: usize = 256;

/// `out[t, h, :] = sum_n softmax_n(q[t, h, :] . k[n, h, :] + bias[n]) v[n, h, :]`, f32.
///
/// Inputs `q, k, v`: `[T, H, D]` (the heads already split, any scale already applied), and with
/// `bias` a fourth input `[1, 1, 1, T]` added to every logit row (the middle's key bias:
/// proportional attention and padding). Output `[T, H, D]`.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct FusedAttention {
    pub bias: bool,
    /// Both products in a 16-bit format (`[model] precision = "bf16"` or "f16", see `bf16/`
    /// and `f16/`): q, k, v and the softmax weights rounded, sums as the format's kernels do
    /// them; the softmax itself stays f32. `None`: f32.
    pub half: Option<super::bf16::Format>,
}

/// The kernels of the attention's two products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Products {
    /// f32, on the GEMM of an ISA level.
    F32(super::isa::Level),
    /// bf16 operands, f32 sums.
    Bf16(super::bf16::Kernel),
    /// f16 operands, f16 sums over runs of K, f32 between (`f16/`).
    F16(super::f16::Kernel),
}

impl Products {
    /// The 16-bit kernel, if any.
    fn half(self) -> Option<super::bf16::Half> {
        match self {
            Products::F32(_) => None,
            Products::Bf16(k) => Some(k.into()),
            Products::F16(k) => Some(k.into()),
        }
    }
}

thread_local! {
    /// The keys and values of the attention being computed, packed for [`Products::Bf16`] and
    /// [`Products::F16`].
    static HEADS: RefCell<super::bf16::PackedHeads> = RefCell::new(Default::default());
    /// The keys of the attention being computed, transposed per head (`[h, d, t]`) for
    /// [`Products::F32`]: the first product's B then has contiguous rows, which the GEMM packs
    /// with plain copies, and the transpose runs once per call instead of once per row block
    /// (it was a tenth of the product at T = 1025).
    static KT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per head, its keys transposed (`d x t`) and its values (`t x d`) packed once for our
    /// tiles (levels `avx512` and `avx2`, f32; `sgemm::packs`): every row block's two products
    /// read them in place. Packed per block instead, the copies were 12% of the attention at
    /// T = 1028 (`perf`, Intel Xeon, 1 thread).
    static PACKED: RefCell<Vec<(PackedF32, PackedF32)>> = const { RefCell::new(Vec::new()) };
}

pub use super::softmax::row_max;

/// Per-thread scratch: the logit block and the row sums. It grows to the largest block seen and
/// is then reused, so a steady stream of frames allocates nothing here.
#[derive(Default)]
struct Scratch {
    logits: Vec<f32>,
    sums: Vec<f32>,
    /// The exp-and-sum for f32 products at this process's level, and tract's (16-bit products).
    kernels: Option<(super::softmax::ExpSum, super::softmax::ExpSum)>,
}

/// Logit rows start on 64-byte boundaries: tract's softmax kernels handle an unaligned head and
/// tail of a row separately, so the rounding of a row's sum would otherwise depend on where the
/// allocator put the scratch, and two runs of one frame could differ in the last bit.
const ALIGN: usize = 16;

/// A `rows x stride` block of `buf`, 64-byte aligned (`stride` a multiple of [`ALIGN`]).
fn aligned_block(buf: &mut Vec<f32>, rows: usize, stride: usize) -> &mut [f32] {
    let need = rows * stride + ALIGN;
    if buf.len() < need {
        buf.resize(need, 0.0);
    }
    let skip = buf.as_ptr().align_offset(ALIGN * 4).min(ALIGN);
    &mut buf[skip..skip + rows * stride]
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// A raw output pointer shared by parallel blocks that each write a disjoint set of elements.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: blocks write disjoint (rows, head) regions; see `attend`.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Fused attention on plain slices (see [`FusedAttention`]); `q`, `k`, `v` and `out` are
/// `[t, h, d]` row-major, `bias` has `t` values.
#[allow(clippy::too_many_arguments)]
pub fn attend(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    t: usize,
    h: usize,
    d: usize,
    out: &mut [f32],
) -> TractResult<()> {
    attend_at(super::isa::level(), ROWS, q, k, v, bias, t, h, d, out)
}

/// [`attend`] with `block` query rows per block (for tuning [`ROWS`]).
#[allow(clippy::too_many_arguments)]
pub fn attend_in_blocks(
    block: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    t: usize,
    h: usize,
    d: usize,
    out: &mut [f32],
) -> TractResult<()> {
    attend_at(super::isa::level(), block, q, k, v, bias, t, h, d, out)
}

/// [`attend_in_blocks`] with both products on the GEMM kernel of `level` (see `isa.rs`; tests
/// force each level the CPU has).
#[allow(clippy::too_many_arguments)]
pub fn attend_at(
    level: super::isa::Level,
    block: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    t: usize,
    h: usize,
    d: usize,
    out: &mut [f32],
) -> TractResult<()> {
    attend_with(Products::F32(level), block, q, k, v, bias, t, h, d, out)
}

/// [`attend_in_blocks`] with both products on `products`.
#[allow(clippy::too_many_arguments)]
pub fn attend_with(
    products: Products,
    block: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    t: usize,
    h: usize,
    d: usize,
    out: &mut [f32],
) -> TractResult<()> {
    attend_rows_with(products, block, q, k, v, bias, t, t, h, d, out)
}

/// [`attend_with`] for `a` query rows (`q`, `out`: `[a, h, d]`) against `t` keys and values
/// (`[t, h, d]`): the reuse executor's active rows. A row's result does not depend on which
/// other rows are there (each product sums in the same order).
#[allow(clippy::too_many_arguments)]
pub fn attend_rows_with(
    products: Products,
    block: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    a: usize,
    t: usize,
    h: usize,
    d: usize,
    out: &mut [f32],
) -> TractResult<()> {
    let len = t * h * d;
    ensure!(
        q.len() == a * h * d && k.len() == len && v.len() == len && out.len() == a * h * d,
        "FusedAttention: q {}, out {} values for [{a}, {h}, {d}], k {}, v {} for [{t}, {h}, {d}]",
        q.len(),
        out.len(),
        k.len(),
        v.len()
    );
    if let Some(b) = bias {
        ensure!(b.len() == t, "FusedAttention: key bias has {} values for T = {t}", b.len());
    }
    if len == 0 || a == 0 {
        return Ok(());
    }
    ensure!(block > 0, "FusedAttention: empty row block");
    match products {
        Products::F32(level) if super::sgemm::packs(level) => {
            ensure!(level.supported(), "FusedAttention: this CPU cannot run {level}");
            PACKED.with(|p| {
                let mut p = p.borrow_mut();
                p.resize_with(h, || (PackedF32::empty(), PackedF32::empty()));
                for (head, (pk, pv)) in p.iter_mut().enumerate() {
                    // SAFETY: k and v are [t, h, d] (lengths checked): head `head`'s keys as a
                    // d x t matrix are at k[head * d + p + j * h * d], its values as t x d at
                    // v[head * d + p * h * d + j].
                    unsafe {
                        pk.repack(k.as_ptr().add(head * d), 1, h * d, d, t);
                        pv.repack(v.as_ptr().add(head * d), h * d, 1, t, d);
                    }
                }
            });
        }
        Products::F32(level) => {
            ensure!(level.supported(), "FusedAttention: this CPU cannot run {level}");
            KT.with(|kt| {
                let mut kt = kt.borrow_mut();
                if kt.len() < len {
                    kt.resize(len, 0.0);
                }
                for (n, row) in k.chunks_exact(h * d).enumerate() {
                    for (hj, v) in row.iter().enumerate() {
                        kt[hj * t + n] = *v;
                    }
                }
            });
        }
        Products::Bf16(_) | Products::F16(_) => {
            let kernel = products.half().expect("a 16-bit kernel");
            ensure!(kernel.supported(), "FusedAttention: this CPU cannot run {}", kernel.name());
            HEADS.with(|p| p.borrow_mut().pack(kernel, k, v, (t, h, d)));
        }
    }
    HEADS.with(|heads| {
        KT.with(|kt| {
            PACKED.with(|packed| {
                let keys = Keys { half: &heads.borrow(), kt: &kt.borrow(), packed: &packed.borrow() };
                attend_blocks(products, &keys, block, q, v, bias, (a, t, h, d), out)
            })
        })
    })
}

/// The keys (and values) as the products read them: packed for a 16-bit kernel, transposed for
/// the f32 GEMMs of the other levels, packed per head for our tiles (`avx512`, `avx2`).
struct Keys<'a> {
    half: &'a super::bf16::PackedHeads,
    kt: &'a [f32],
    packed: &'a [(PackedF32, PackedF32)],
}

/// The (head, row block) tasks of [`attend_with`] (`heads`: the packed keys and values for
/// [`Products::Bf16`] and [`Products::F16`]).
#[allow(clippy::too_many_arguments)]
fn attend_blocks(
    products: Products,
    keys: &Keys,
    block: usize,
    q: &[f32],
    v: &[f32],
    bias: Option<&[f32]>,
    (a, t, h, d): (usize, usize, usize, usize),
    out: &mut [f32],
) -> TractResult<()> {
    // Blocks of even size (at most `block` rows): 1025 rows as 5 x 205 rather than 4 x 256 + 1,
    // whose tiny last blocks left one thread idle at the end (2 threads, Intel Xeon: 9.7 -> 8.3 ms
    // at T = 1025, 4.0 -> 3.8 at T = 737, 2.1 -> 2.0 at T = 513; 1 thread unchanged; timed
    // interleaved).
    let blocks = a.div_ceil(block);
    let block = a.div_ceil(blocks);
    let tasks = h * blocks;
    let out = OutPtr(out.as_mut_ptr());
    let task = move |i: usize| -> TractResult<()> {
        let out = out;
        let (head, b) = (i % h, i / h);
        let r0 = b * block;
        let rows = block.min(a - r0);
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let s = &mut *s;
            if s.kernels.is_none() {
                let f32_exp = super::softmax::ExpSum::new(super::isa::level(), false)?;
                s.kernels = Some((f32_exp, super::softmax::ExpSum::tract()?));
            }
            if s.sums.len() < rows {
                s.sums.resize(rows, 0.0);
            }
            let stride = t.next_multiple_of(ALIGN);
            let Scratch { logits, sums, kernels } = s;
            let kern =
                kernels.as_ref().map(|(f, t)| if products.half().is_none() { f } else { t }).expect("made above");
            let logits = aligned_block(logits, rows, stride);
            // logits[r, n] = q[r0 + r, head, :] . k[n, head, :]
            match products {
                Products::F32(level) => {
                    // SAFETY (the offsets and the call): q is [a, h, d]: rows r0..r0+rows of
                    // head `head` are at (r0 + r) * h * d + head * d + j, j < d, all in bounds;
                    // kt is [h, d, t] (at least t * h * d values); logits is rows x stride; the
                    // level is supported (checked above).
                    let g = Gemm {
                        m: rows,
                        n: t,
                        k: d,
                        a: unsafe { q.as_ptr().add(r0 * h * d + head * d) },
                        rsa: h * d,
                        b: unsafe { keys.kt.as_ptr().add(head * d * t) },
                        rsb: t,
                        csb: 1,
                        c: logits.as_mut_ptr(),
                        rsc: stride,
                        accumulate: false,
                    };
                    match keys.packed.get(head) {
                        // SAFETY: as above; the packed keys are this call's (d x t).
                        #[cfg(target_arch = "x86_64")]
                        Some((pk, _)) if super::sgemm::packs(level) => unsafe { g.run_packed(pk, level) },
                        _ => unsafe { g.run(level) },
                    }
                }
                Products::Bf16(_) | Products::F16(_) => {
                    let kernel = products.half().expect("a 16-bit kernel");
                    super::bf16::attention_logits(kernel, q, keys.half, (r0, rows, head), (t, h, d), logits, stride)
                }
            }
            for (r, row) in logits.chunks_exact_mut(stride).enumerate() {
                let row = &mut row[..t];
                let max = row_max(row, bias);
                sums[r] = kern.run(row, max)?;
            }
            // out[r0 + r, head, :] = exp-weights[r, :] . v[:, head, :], then / sum[r].
            // SAFETY: the destination rows (r0 + r) * h * d + head * d + j, j < d, belong to
            // this (head, block) only; v is [t, h, d] like k; the level is supported.
            unsafe {
                let dst = out.0.add(r0 * h * d + head * d);
                match products {
                    Products::F32(level) => {
                        let g = Gemm {
                            m: rows,
                            n: d,
                            k: t,
                            a: logits.as_ptr(),
                            rsa: stride,
                            b: v.as_ptr().add(head * d),
                            rsb: h * d,
                            csb: 1,
                            c: dst,
                            rsc: h * d,
                            accumulate: false,
                        };
                        match keys.packed.get(head) {
                            #[cfg(target_arch = "x86_64")]
                            Some((_, pv)) if super::sgemm::packs(level) => g.run_packed(pv, level),
                            _ => g.run(level),
                        }
                    }
                    Products::Bf16(_) | Products::F16(_) => {
                        let kernel = products.half().expect("a 16-bit kernel");
                        super::bf16::attention_values(kernel, logits, stride, rows, keys.half, head, (t, h, d), dst)
                    }
                }
                for (r, sum) in sums[..rows].iter().enumerate() {
                    let inv = 1.0 / sum;
                    let row = std::slice::from_raw_parts_mut(dst.add(r * h * d), d);
                    row.iter_mut().for_each(|x| *x *= inv);
                }
            }
            Ok(())
        })
    };
    par_for(tasks, task)
}

/// Run `task(0..tasks)` on tract's executor (`[model] threads`): in parallel on its pool, or in
/// order on this thread when it has one thread.
pub(crate) fn par_for(tasks: usize, task: impl Fn(usize) -> TractResult<()> + Sync + Send) -> TractResult<()> {
    match current_tract_executor() {
        Executor::MultiThread(pool) if pool.current_num_threads() > 1 && tasks > 1 => {
            use rayon::prelude::*;
            pool.install(|| (0..tasks).into_par_iter().try_for_each(task))
        }
        _ => (0..tasks).try_for_each(task),
    }
}

/// The textbook formula, one element at a time in f64: the reference [`attend`] is tested
/// against.
pub fn reference(q: &[f32], k: &[f32], v: &[f32], bias: Option<&[f32]>, t: usize, h: usize, d: usize) -> Vec<f32> {
    let at = |x: &[f32], n: usize, hh: usize, j: usize| x[(n * h + hh) * d + j] as f64;
    let mut out = vec![0f32; t * h * d];
    for hh in 0..h {
        for r in 0..t {
            let logits: Vec<f64> = (0..t)
                .map(|n| {
                    (0..d).map(|j| at(q, r, hh, j) * at(k, n, hh, j)).sum::<f64>() + bias.map_or(0.0, |b| b[n] as f64)
                })
                .collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let sum: f64 = w.iter().sum();
            for j in 0..d {
                let o: f64 = (0..t).map(|n| w[n] * at(v, n, hh, j)).sum::<f64>() / sum;
                out[(r * h + hh) * d + j] = o as f32;
            }
        }
    }
    out
}

impl Op for FusedAttention {
    fn name(&self) -> StaticName {
        "FusedAttention".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let products = match self.half {
            Some(f) => super::bf16::Half::best(f).name(),
            None => super::isa::level().gemm_kernel(),
        };
        Ok(vec![format!("{ROWS}-row blocks, {products} + tract softmax kernels, key bias: {}", self.bias)])
    }

    op_as_typed_op!();
}

impl EvalOp for FusedAttention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 3 + self.bias as usize, "FusedAttention: {} inputs", inputs.len());
        let shape = inputs[0].shape();
        ensure!(shape.len() == 3, "FusedAttention: q is {shape:?}, expected [T, H, D]");
        ensure!(
            inputs[1].shape() == shape && inputs[2].shape() == shape,
            "FusedAttention: q {shape:?}, k {:?}, v {:?}",
            inputs[1].shape(),
            inputs[2].shape()
        );
        let (t, h, d) = (shape[0], shape[1], shape[2]);
        // SAFETY: `attend` writes every element of the output.
        let mut out = unsafe { Tensor::uninitialized::<f32>(shape)? };
        let plain = |i: usize| inputs[i].try_as_plain_ram();
        let (q, k, v) = (plain(0)?, plain(1)?, plain(2)?);
        let bias = if self.bias { Some(plain(3)?) } else { None };
        let bias = bias.as_ref().map(|b| b.as_slice::<f32>()).transpose()?;
        let products = match self.half {
            Some(super::bf16::Format::Bf16) => Products::Bf16(super::bf16::kernel_level()),
            Some(super::bf16::Format::F16) => Products::F16(super::f16::kernel_level()),
            None => Products::F32(super::isa::level()),
        };
        attend_with(
            products,
            ROWS,
            q.as_slice::<f32>()?,
            k.as_slice::<f32>()?,
            v.as_slice::<f32>()?,
            bias,
            t,
            h,
            d,
            out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
        )?;
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for FusedAttention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 3 + self.bias as usize, "FusedAttention: {} inputs", inputs.len());
        ensure!(inputs.iter().all(|f| f.datum_type == f32::datum_type()), "FusedAttention: f32 only");
        ensure!(inputs[0].rank() == 3, "FusedAttention: q is {:?}, expected [T, H, D]", inputs[0].shape);
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let s = &inputs[0].shape;
        // q kᵀ and (weights) v: 2 T² H D multiply-adds.
        Ok(tvec!((Cost::FMA(f32::datum_type()), s[0].clone() * s[0].clone() * s[1].clone() * s[2].clone() * 2)))
    }

    as_op!();
}

/// The einsum's axes as tract writes them (`mbk,nbk->abmn`), if `node` is an f32 `EinSum`.
fn einsum_axes(node: &TypedNode) -> Option<String> {
    let op = node.op_as::<EinSum>()?;
    (op.q_params.is_none() && op.operating_dt == f32::datum_type()).then(|| op.axes.to_string())
}

/// The single successor of `outlet`, if it has exactly one and is not a model output.
pub(crate) fn only_successor(model: &TypedModel, outlet: OutletId) -> Option<InletId> {
    let succ = model.outlet_successors(outlet);
    (succ.len() == 1 && !model.output_outlets().ok()?.contains(&outlet)).then(|| succ[0])
}

/// One attention found in the graph: the node ids it spans and the inputs of the fused op.
struct Found {
    inputs: TVec<OutletId>,
    /// The `abmk,kbn->mbn` node whose output the fused op replaces.
    out: usize,
}

fn find(model: &TypedModel, softmax: &TypedNode) -> TractResult<Option<Found>> {
    let Some(sm) = softmax.op_as::<Softmax>() else { return Ok(None) };
    let fact = model.outlet_fact(softmax.inputs[0])?;
    // The stem's logits are [H, T, T]; the middle's [1, H, T, T] (an axis from the key bias).
    let (qk_axes, av_axes) = match fact.rank() {
        3 => ("mbk,nbk->bmn", "bmk,kbn->mbn"),
        4 => ("mbk,nbk->abmn", "abmk,kbn->mbn"),
        _ => return Ok(None),
    };
    if sm.kind != SoftmaxKind::Softmax || sm.quant_output_dt.is_some() || sm.axes.as_slice() != [fact.rank() - 1] {
        return Ok(None);
    }
    if only_successor(model, softmax.inputs[0]).is_none() {
        return Ok(None);
    }
    // Logits: the q kᵀ einsum, maybe through the key-bias Add.
    let mut logits = model.node(softmax.inputs[0].node);
    let mut bias = None;
    if logits.op.name() == "Add" && logits.inputs.len() == 2 {
        let (a, b) = (logits.inputs[0], logits.inputs[1]);
        let (qk, bb) = if einsum_axes(model.node(a.node)).is_some() { (a, b) } else { (b, a) };
        let bf = model.outlet_fact(bb)?;
        let one = 1.to_dim();
        if bf.rank() != fact.rank()
            || bf.datum_type != f32::datum_type()
            || bf.shape[..bf.rank() - 1].iter().any(|x| *x != one)
        {
            return Ok(None);
        }
        if only_successor(model, qk).is_none() {
            return Ok(None);
        }
        bias = Some(bb);
        logits = model.node(qk.node);
    }
    if einsum_axes(logits).as_deref() != Some(qk_axes) || logits.inputs.len() != 2 {
        return Ok(None);
    }
    if only_successor(model, OutletId::new(logits.id, 0)).is_none() && bias.is_none() {
        return Ok(None);
    }
    // Weights -> the (weights) v einsum.
    let Some(next) = only_successor(model, OutletId::new(softmax.id, 0)) else { return Ok(None) };
    let av = model.node(next.node);
    if next.slot != 0 || einsum_axes(av).as_deref() != Some(av_axes) || av.inputs.len() != 2 {
        return Ok(None);
    }
    let (q, k, v) = (logits.inputs[0], logits.inputs[1], av.inputs[1]);
    let (qf, kf, vf) = (model.outlet_fact(q)?, model.outlet_fact(k)?, model.outlet_fact(v)?);
    if qf.rank() != 3 || qf.shape != kf.shape || qf.shape != vf.shape || qf.datum_type != f32::datum_type() {
        return Ok(None);
    }
    if let Some(b) = bias {
        if model.outlet_fact(b)?.shape[fact.rank() - 1] != qf.shape[0] {
            return Ok(None);
        }
    }
    let mut inputs = tvec![q, k, v];
    inputs.extend(bias);
    Ok(Some(Found { inputs, out: av.id }))
}

/// Replace every attention of a decluttered graph with [`FusedAttention`]; returns how many.
pub fn fuse(model: &mut TypedModel) -> TractResult<usize> {
    let mut fused = 0;
    for id in model.eval_order()? {
        if model.node(id).op_as::<Softmax>().is_none() {
            continue;
        }
        let Some(found) = find(model, model.node(id))? else { continue };
        let name = format!("{}.fused", model.node(found.out).name);
        let mut patch = TypedModelPatch::default();
        let taps = found.inputs.iter().map(|o| patch.tap_model(model, *o)).collect::<TractResult<TVec<_>>>()?;
        let op = FusedAttention { bias: taps.len() == 4, half: super::bf16::precision().format() };
        let wire = patch.wire_node(name, op, &taps)?;
        patch.shunt_outside(model, OutletId::new(found.out, 0), wire[0])?;
        patch.apply(model)?;
        fused += 1;
    }
    Ok(fused)
}
