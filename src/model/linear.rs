//! The encoder's linear layers (x W + b with a constant W) on the `gemm` crate (issue #4).
//!
//! Every linear layer of the ViT (q, k, v, the attention output projection, fc1, fc2) reaches
//! the decluttered graph as an `EinSum` of the tokens with a constant weight, followed by an
//! `Add` of a constant bias. tract runs them at 74-78 GFLOP/s on this machine's AVX2 cores
//! (`ailurus profile --nodes`); the `gemm` crate reaches 84-95 GFLOP/s on the same shapes
//! (`cargo run --release --example gemm_shapes`). [`Linear`] computes `out = x W + b` with one
//! `gemm` call per block of token rows: the rows start from the bias and the product is added,
//! so there is no separate bias pass. The weight stays a constant input of the graph and is read
//! in place.
//!
//! [`swap`] replaces the einsums whose axes say "tokens times a constant matrix" in one of the
//! layouts the ONNX export produces (`amk,kn->mn`, `mk,kn->amn`, `mk,kn->mn`, `amk,kn->amn`, and
//! the head-merging `mbk,bkn->amn`), with the bias `Add` folded in when it is a constant of
//! shape `[.., N]` and the einsum's only reader, and after it a constant scale (layer scale, the
//! q/k scaling) and the residual `Add` (see [`swap`]). `[model] cpu_ops = "tract"` turns it off.
//! `tests/linear_op.rs` checks [`linear`] against an f64 reference and the swapped parts
//! against tract's own ops.
//!
//! With `[model] precision = "bf16"` the swap rounds each weight to bf16 and packs it into the
//! op (`bf16.rs`); the graph's f32 weight then has no reader and leaves the plan.

use tract_core::internal::*;
use tract_core::ops::einsum::EinSum;

use super::bf16::{Packed16, Precision};
use super::isa::Level;
pub(crate) use super::weight::rows_per_thread;
pub use super::weight::{apply, Weight};

/// How the einsum laid out its operands: where the token axis is in the input, how many trailing
/// input axes make up K, and whether the output has a leading unit axis.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct Layout {
    /// Rank of the token input.
    pub in_rank: usize,
    /// Index of the token (row) axis in the input; axes before it are 1.
    pub m_axis: usize,
    /// Output is `[1, T, N]` (else `[T, N]`).
    pub lead_one: bool,
}

/// The einsum axis strings [`Linear`] implements, with their layout.
const LAYOUTS: [(&str, Layout); 5] = [
    ("amk,kn->mn", Layout { in_rank: 3, m_axis: 1, lead_one: false }),
    ("amk,kn->amn", Layout { in_rank: 3, m_axis: 1, lead_one: true }),
    ("mk,kn->amn", Layout { in_rank: 2, m_axis: 0, lead_one: true }),
    ("mk,kn->mn", Layout { in_rank: 2, m_axis: 0, lead_one: false }),
    ("mbk,bkn->amn", Layout { in_rank: 3, m_axis: 0, lead_one: true }),
];

/// `out = (r +) x W (+ b)`: inputs `x` (tokens, `T` rows of `K` values, laid out per
/// [`Layout`]), `W` (`K x N` row-major, possibly as `[B, K/B, N]`) unless the weight is `packed`,
/// the bias (`N` values) when `bias`, the residual `r` (`T x N`) when `residual`.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct Linear {
    pub layout: Layout,
    pub bias: bool,
    /// A residual input (the block's stream, `[.., T, N]` like the output) the product is added
    /// to: the rows start from it instead of from zero (a folded `Add`, see [`swap`]).
    pub residual: bool,
    /// The weight rounded to bf16 and packed (`[model] precision = "bf16"`), held by the op
    /// (shared by every plan, see `bf16.rs`); the graph's f32 weight is then no input.
    pub packed: Option<Packed>,
    /// The f32 weight packed once for our tiles (levels `avx512` and `avx2`, f32: see
    /// `sgemm::PackedF32`), held by the op in place of the graph's weight input.
    pub packed_f32: Option<PackedF32>,
}

/// A packed f32 weight (shared by every plan, compared by identity).
pub type PackedF32 = super::bf16::Shared<super::sgemm::PackedF32>;

/// A packed bf16 weight (shared by every plan, compared by identity).
pub type Packed = super::bf16::Shared<Packed16>;

/// `out[t, n] = bias[n] + sum_k x[t, k] w[k, n]` on row-major slices: `x` is `[t, k]`, `w`
/// `[k, n]`, `out` `[t, n]`, on the process's ISA level (`isa.rs`). One GEMM call, or with a multithreaded tract executor one per
/// thread on its share of the rows (the row split measured 1-2% faster at 2 threads than the
/// `gemm` crate's own rayon split; `examples/linear_check.rs`).
pub fn linear(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    t: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) -> TractResult<()> {
    linear_at(super::isa::level(), x, w, bias, t, k, n, out)
}

/// [`linear`] on the GEMM kernel of `level` (see `isa.rs`; tests force each level the CPU has).
#[allow(clippy::too_many_arguments)]
pub fn linear_at(
    level: Level,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    t: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) -> TractResult<()> {
    linear_res_at(level, x, w, bias, None, t, k, n, out)
}

/// [`linear_at`] plus a residual `[t, n]` the product is added to (`out = r + x W + b`).
#[allow(clippy::too_many_arguments)]
pub fn linear_res_at(
    level: Level,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    t: usize,
    k: usize,
    n: usize,
    out: &mut [f32],
) -> TractResult<()> {
    apply(Weight::F32 { w, k, n, level }, x, bias, residual, t, out)
}

/// [`linear_res_at`] at `level` (`avx512` or `avx2`) with the weight packed once
/// (`sgemm::PackedF32`): the same sums as [`linear_res_at`] at `avx512`, bit for bit.
#[cfg(target_arch = "x86_64")]
pub fn linear_packed(
    level: Level,
    x: &[f32],
    w: &super::sgemm::PackedF32,
    bias: Option<&[f32]>,
    residual: Option<&[f32]>,
    t: usize,
    out: &mut [f32],
) -> TractResult<()> {
    apply(Weight::PackedF32(w, level), x, bias, residual, t, out)
}

/// The textbook sum in f64: the reference [`linear`] is tested against.
pub fn reference(x: &[f32], w: &[f32], bias: Option<&[f32]>, t: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; t * n];
    for r in 0..t {
        for j in 0..n {
            let s: f64 = (0..k).map(|i| x[r * k + i] as f64 * w[i * n + j] as f64).sum();
            out[r * n + j] = (s + bias.map_or(0.0, |b| b[j] as f64)) as f32;
        }
    }
    out
}

impl Linear {
    /// x, the weight unless packed, the bias when there is one, the residual when folded in.
    pub(crate) fn n_inputs(&self) -> usize {
        1 + (self.packed.is_none() && self.packed_f32.is_none()) as usize + self.bias as usize + self.residual as usize
    }

    fn out_shape(&self, t: TDim, n: TDim) -> TVec<TDim> {
        if self.layout.lead_one {
            tvec![1.to_dim(), t, n]
        } else {
            tvec![t, n]
        }
    }
}

impl Op for Linear {
    fn name(&self) -> StaticName {
        "Linear".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let kernel = match (&self.packed, &self.packed_f32) {
            (Some(w), _) => super::bf16::Half::best(w.0.format).name(),
            (None, Some(_)) => super::isa::level().gemm_kernel(),
            (None, None) => super::isa::level().gemm_kernel(),
        };
        let r = if self.residual { "r + " } else { "" };
        Ok(vec![format!("{r}x W{} on {kernel}", if self.bias { " + b" } else { "" })])
    }

    op_as_typed_op!();
}

impl EvalOp for Linear {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == self.n_inputs(), "Linear: {} inputs", inputs.len());
        let (t, k) = self.rows(inputs[0].shape())?;
        let views = inputs.iter().map(|i| i.try_as_plain_ram()).collect::<TractResult<TVec<_>>>()?;
        let slices = views.iter().map(|v| v.as_slice::<f32>()).collect::<TractResult<TVec<_>>>()?;
        let (w, b, r) = self.parts(&slices[1..], k)?;
        let shape: TVec<usize> = if self.layout.lead_one { tvec![1, t, w.n()] } else { tvec![t, w.n()] };
        // SAFETY: `apply` writes every element of the output.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        apply(w, slices[0], b, r, t, out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?)?;
        Ok(tvec!(out.into_tvalue()))
    }
}

/// A linear layer's weight, bias and residual, as [`Linear::parts`] finds them.
pub(crate) type Parts<'a> = (Weight<'a>, Option<&'a [f32]>, Option<&'a [f32]>);

impl Linear {
    /// `(T, K)` of an input `x` of shape `xs`.
    pub(crate) fn rows(&self, xs: &[usize]) -> TractResult<(usize, usize)> {
        ensure!(xs.len() == self.layout.in_rank, "Linear: x {xs:?}");
        Ok((xs[self.layout.m_axis], xs[self.layout.m_axis + 1..].iter().product()))
    }

    /// The weight (packed in the op, or the f32 matrix among `rest`), the bias and the residual:
    /// `rest` is the op's inputs after `x`, in their order.
    pub(crate) fn parts<'a>(&'a self, rest: &[&'a [f32]], k: usize) -> TractResult<Parts<'a>> {
        ensure!(rest.len() + 1 == self.n_inputs(), "Linear: {} inputs", rest.len() + 1);
        let (w, rest) = match (&self.packed, &self.packed_f32) {
            (Some(super::bf16::Shared(w)), _) => (Weight::Half(w, super::bf16::Half::best(w.format)), rest),
            #[cfg(target_arch = "x86_64")]
            (None, Some(super::bf16::Shared(w))) => (Weight::PackedF32(w, super::isa::level()), rest),
            #[cfg(not(target_arch = "x86_64"))]
            (None, Some(_)) => bail!("Linear: an AVX-512 weight on {}", std::env::consts::ARCH),
            (None, None) => {
                let w = rest[0];
                ensure!(k > 0 && w.len().is_multiple_of(k), "Linear: w {} values for K = {k}", w.len());
                (Weight::F32 { w, k, n: w.len() / k, level: super::isa::level() }, &rest[1..])
            }
        };
        ensure!(w.k() == k, "Linear: x has K = {k}, the weight {}", w.k());
        let b = self.bias.then(|| rest[0]);
        let r = self.residual.then(|| rest[self.bias as usize]);
        Ok((w, b, r))
    }
}

impl TypedOp for Linear {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == self.n_inputs(), "Linear: {} inputs", inputs.len());
        ensure!(inputs.iter().all(|f| f.datum_type == f32::datum_type()), "Linear: f32 only");
        let x = &inputs[0].shape;
        ensure!(x.rank() == self.layout.in_rank, "Linear: x {x:?}");
        let n = match (&self.packed, &self.packed_f32) {
            (Some(super::bf16::Shared(w)), _) => w.n.to_dim(),
            (None, Some(super::bf16::Shared(w))) => w.n.to_dim(),
            (None, None) => {
                let w = &inputs[1].shape;
                ensure!(w.rank() >= 1, "Linear: w {w:?}");
                w[w.rank() - 1].clone()
            }
        };
        Ok(tvec!(f32::fact(self.out_shape(x[self.layout.m_axis].clone(), n))))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let x = &inputs[0].shape;
        let kn = match (&self.packed, &self.packed_f32) {
            (Some(super::bf16::Shared(w)), _) => (w.k * w.n).to_dim(),
            (None, Some(super::bf16::Shared(w))) => (w.k * w.n).to_dim(),
            (None, None) => inputs[1].shape.iter().product::<TDim>(),
        };
        Ok(tvec!((Cost::FMA(f32::datum_type()), x[self.layout.m_axis].clone() * kn)))
    }

    as_op!();
}

/// The layout of `node` if it is an f32 `EinSum` of tokens with a constant matrix that
/// [`Linear`] computes.
fn layout_of(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Layout>> {
    let Some(op) = node.op_as::<EinSum>() else { return Ok(None) };
    if op.q_params.is_some() || op.operating_dt != f32::datum_type() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let axes = op.axes.to_string();
    let Some(&(_, layout)) = LAYOUTS.iter().find(|(s, _)| *s == axes) else { return Ok(None) };
    let (xf, wf) = (model.outlet_fact(node.inputs[0])?, model.outlet_fact(node.inputs[1])?);
    if xf.datum_type != f32::datum_type() || wf.datum_type != f32::datum_type() || wf.konst.is_none() {
        return Ok(None);
    }
    // Axes before the token axis ("a") must be 1, and K must be concrete (the weight's rows).
    if xf.rank() != layout.in_rank || xf.shape[..layout.m_axis].iter().any(|d| *d != 1.to_dim()) {
        return Ok(None);
    }
    if xf.shape[layout.m_axis + 1..].iter().any(|d| d.to_usize().is_err()) {
        return Ok(None);
    }
    Ok(Some(layout))
}

/// The bias of the `Add` that reads only `einsum`'s output, if it is a constant with `n` values
/// on its last axis (ones elsewhere) and the sum has the einsum's shape.
fn bias_add(model: &TypedModel, einsum: &TypedNode, n: usize) -> TractResult<Option<(usize, OutletId)>> {
    let out = OutletId::new(einsum.id, 0);
    let Some(succ) = super::attention::only_successor(model, out) else { return Ok(None) };
    let add = model.node(succ.node);
    if add.op.name() != "Add" || add.inputs.len() != 2 {
        return Ok(None);
    }
    let other = add.inputs[1 - succ.slot];
    let bf = model.outlet_fact(other)?;
    let ok_shape = bf.rank() >= 1
        && bf.shape[bf.rank() - 1] == n.to_dim()
        && bf.shape[..bf.rank() - 1].iter().all(|d| *d == 1.to_dim());
    if bf.datum_type != f32::datum_type() || bf.konst.is_none() || !ok_shape {
        return Ok(None);
    }
    if model.outlet_fact(OutletId::new(add.id, 0))?.shape != model.outlet_fact(out)?.shape {
        return Ok(None);
    }
    Ok(Some((add.id, other)))
}

/// The per-column factors (`n` of them) of a `Mul` node that scales `value` by a constant: `n`
/// values on the last axis (ones elsewhere), or with `scalar_only`, a single value; and the
/// product keeps `value`'s shape.
fn const_scale(
    model: &TypedModel,
    mul: &TypedNode,
    value: OutletId,
    n: usize,
    scalar_only: bool,
) -> TractResult<Option<Vec<f32>>> {
    if mul.op.name() != "Mul" || mul.inputs.len() != 2 {
        return Ok(None);
    }
    let Some(slot) = mul.inputs.iter().position(|i| *i == value) else { return Ok(None) };
    let f = model.outlet_fact(mul.inputs[1 - slot])?;
    let Some(konst) = f.konst.as_ref() else { return Ok(None) };
    if f.datum_type != f32::datum_type()
        || model.outlet_fact(OutletId::new(mul.id, 0))?.shape != model.outlet_fact(value)?.shape
    {
        return Ok(None);
    }
    let plain = konst.try_as_plain_ram()?;
    let c = plain.as_slice::<f32>()?;
    let per_column = f.rank() >= 1
        && f.shape[f.rank() - 1] == n.to_dim()
        && f.shape[..f.rank() - 1].iter().all(|d| *d == 1.to_dim());
    Ok(match c.len() {
        1 => Some(vec![c[0]; n]),
        _ if per_column && !scalar_only => Some(c.to_vec()),
        _ => None,
    })
}

/// The `Add` that reads only `value` and adds it to another non-constant tensor of the same
/// shape (a residual connection): (the add, the other input).
fn residual_add(model: &TypedModel, value: OutletId) -> TractResult<Option<(usize, OutletId)>> {
    let Some(succ) = super::attention::only_successor(model, value) else { return Ok(None) };
    let add = model.node(succ.node);
    if add.op.name() != "Add" || add.inputs.len() != 2 {
        return Ok(None);
    }
    let other = add.inputs[1 - succ.slot];
    let (of, vf) = (model.outlet_fact(other)?, model.outlet_fact(value)?);
    let same = of.shape == vf.shape && model.outlet_fact(OutletId::new(add.id, 0))?.shape == vf.shape;
    Ok((same && of.konst.is_none() && of.datum_type == f32::datum_type()).then_some((add.id, other)))
}

/// What follows a linear layer (after its bias) that [`swap`] folds into it.
#[derive(Default)]
struct Folds {
    /// Per-column factors of a constant `Mul` (DINOv2's layer scale) right after the layer, or
    /// of a scalar `Mul` after a `Reshape` (the attention's query/key scaling): folded into the
    /// weight and the bias.
    scale: Option<Vec<f32>>,
    /// The node whose output the op replaces (the `Mul` when it reads the layer directly).
    last: Option<usize>,
    /// A scalar `Mul` behind a `Reshape` that then has no work left (removed after the swap).
    behind_reshape: Option<usize>,
    /// The residual `Add` and its other input.
    residual: Option<(usize, OutletId)>,
}

fn folds(model: &TypedModel, value: OutletId, n: usize) -> TractResult<Folds> {
    let mut f = Folds::default();
    let mut value = value;
    if let Some(succ) = super::attention::only_successor(model, value) {
        let next = model.node(succ.node);
        if let Some(c) = const_scale(model, next, value, n, false)? {
            f.scale = Some(c);
            f.last = Some(next.id);
            value = OutletId::new(next.id, 0);
        } else if next.op.name() == "Reshape" {
            let reshaped = OutletId::new(next.id, 0);
            if let Some(succ) = super::attention::only_successor(model, reshaped) {
                let mul = model.node(succ.node);
                if let Some(c) = const_scale(model, mul, reshaped, n, true)? {
                    f.scale = Some(c);
                    f.behind_reshape = Some(mul.id);
                    return Ok(f);
                }
            }
        }
    }
    f.residual = residual_add(model, value)?;
    Ok(f)
}

/// `konst` (`N` values per row on its last axis) with column `j` multiplied by `c[j]`.
fn scaled(konst: &Tensor, c: &[f32]) -> TractResult<Tensor> {
    let plain = konst.try_as_plain_ram()?;
    let v: Vec<f32> = plain.as_slice::<f32>()?.iter().enumerate().map(|(i, x)| x * c[i % c.len()]).collect();
    Tensor::from_shape(konst.shape(), &v)
}

/// Replace every linear layer of a decluttered graph with [`Linear`], in the process's
/// `[model] precision` ([`super::bf16::precision`]); returns how many. Folded into the op where
/// the graph allows (each only when the layer's output has no other reader):
/// - the bias `Add` (rows start from the bias);
/// - a constant scale right after it (DINOv2's layer scale, `x W + b` times `gamma` per column)
///   or a scalar one behind a `Reshape` (the attention scaling q and k by `d^-1/4`): the weight's
///   columns and the bias are scaled once at the swap (weights interned by content afterwards,
///   so all plans still share one copy);
/// - the residual `Add` that follows (rows start from the block's stream plus the bias).
///
/// Measured on the middle (T = 257, symbolic T, 1 thread, AMD EPYC Zen 4): tract ran the 36
/// unfused scale `Mul`s and residual `Add`s of 9 blocks as separate passes, 6 ms of 102.
pub fn swap(model: &mut TypedModel) -> TractResult<usize> {
    swap_at(model, super::bf16::precision())
}

/// [`swap`] in `precision` (bf16: the weights rounded and packed into the ops; tests call this
/// rather than change the process-wide setting).
pub fn swap_at(model: &mut TypedModel, precision: Precision) -> TractResult<usize> {
    swap_with(model, precision, super::sgemm::packs(super::isa::level()))
}

/// [`swap_at`], with f32 weights packed into the ops for our own tiles when `pack_f32` (what
/// [`swap_at`] does at levels `avx512` and `avx2`; such a plan runs at those levels only).
pub fn swap_with(model: &mut TypedModel, precision: Precision, pack_f32: bool) -> TractResult<usize> {
    let mut swapped = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(layout) = layout_of(model, node)? else { continue };
        let w = model.outlet_fact(node.inputs[1])?;
        let Ok(n) = w.shape[w.rank() - 1].to_usize() else { continue };
        let bias = bias_add(model, node, n)?;
        let value = bias.map_or(id, |(add, _)| add);
        let f = folds(model, OutletId::new(value, 0), n)?;
        let konst = w.konst.clone().context("Linear: weight is not a constant")?;
        let weight = match &f.scale {
            Some(c) => Arc::new(scaled(&konst, c)?),
            None => konst,
        };
        let packed = match precision.format() {
            Some(format) => {
                let k = weight.len() / n;
                let wf = weight.try_as_plain_ram()?;
                let p = Packed16::pack_as(format, wf.as_slice::<f32>()?, k, n);
                Some(super::bf16::Shared(super::bf16::intern(p)))
            }
            None => None,
        };
        // f32 on our own tile: the weight packed once, here (see `sgemm::PackedF32`).
        let packed_f32 = if packed.is_none() && pack_f32 {
            let k = weight.len() / n;
            let wf = weight.try_as_plain_ram()?;
            Some(super::bf16::Shared(super::sgemm::intern(super::sgemm::PackedF32::pack(wf.as_slice::<f32>()?, k, n))))
        } else {
            None
        };
        let mut patch = TypedModelPatch::default();
        let name = |model: &TypedModel, id: usize| format!("{}.linear", model.node(id).name);
        let mut taps = tvec![patch.tap_model(model, node.inputs[0])?];
        if packed.is_none() && packed_f32.is_none() {
            taps.push(match &f.scale {
                Some(_) => patch.add_const(format!("{}.w", name(model, id)), weight.clone())?,
                None => patch.tap_model(model, node.inputs[1])?,
            });
        }
        if let Some((_, b)) = bias {
            taps.push(match &f.scale {
                Some(c) => {
                    let bk = model.outlet_fact(b)?.konst.clone().context("Linear: bias is not a constant")?;
                    patch.add_const(format!("{}.b", name(model, id)), scaled(&bk, c)?)?
                }
                None => patch.tap_model(model, b)?,
            });
        }
        if let Some((_, r)) = f.residual {
            taps.push(patch.tap_model(model, r)?);
        }
        let replaced = f.residual.map(|(add, _)| add).or(f.last).unwrap_or(value);
        let op = Linear { layout, bias: bias.is_some(), residual: f.residual.is_some(), packed, packed_f32 };
        let wire = patch.wire_node(name(model, replaced), op, &taps)?;
        patch.shunt_outside(model, OutletId::new(replaced, 0), wire[0])?;
        patch.apply(model)?;
        if let Some(mul) = f.behind_reshape {
            // The Reshape now reads the scaled layer; the Mul after it passes its input on.
            let input =
                model.node(mul).inputs.iter().copied().find(|i| model.outlet_fact(*i).is_ok_and(|f| f.konst.is_none()));
            let input = input.context("Linear: the scaling Mul has no tensor input")?;
            let mut patch = TypedModelPatch::default();
            let tap = patch.tap_model(model, input)?;
            patch.shunt_outside(model, OutletId::new(mul, 0), tap)?;
            patch.apply(model)?;
        }
        swapped += 1;
    }
    Ok(swapped)
}
