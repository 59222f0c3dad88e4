//! LayerNorm as one op (issue #4).
//!
//! The ONNX export spells each LayerNorm out (ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div,
//! Mul, Add); tract declutters that into six nodes: a sum over the last axis, a multiply by 1/C,
//! a subtraction, its `RmsNorm`, then the scale and the shift. Each is a pass over the whole
//! `[T, C]` tensor, and tract runs them on one thread: about 0.85 ms per LayerNorm at T = 769 on
//! this machine (`ailurus profile`), 25 of them per frame. [`LayerNorm`] does the same arithmetic
//! one row at a time while the row sits in L1 (mean, then variance of the centred row, then
//! scale and shift), rows in parallel on tract's executor.
//!
//! [`swap`] replaces exactly that six-node pattern when the scale and shift are constants of
//! shape `[.., C]` and the intermediate results have no other reader. `[model] cpu_ops =
//! "tract"` turns it off. `tests/layernorm_op.rs` checks [`layer_norm`] against an f64 reference
//! and the swapped parts against tract's nodes.

use tract_core::internal::*;
use tract_core::ops::nn::{Reduce, Reducer, RmsNorm};

use super::attention::{par_for, OutPtr};

/// Rows per parallel block.
const ROWS: usize = 64;

/// `y = (x - mean) / sqrt(var + eps) * gamma + beta` over the last axis: inputs `x`, `gamma`
/// (`C` values), `beta` (`C` values).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNorm {
    pub eps: f32,
}

impl std::hash::Hash for LayerNorm {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.eps.to_bits().hash(state);
    }
}

impl Eq for LayerNorm {}

/// [`LayerNorm`] on plain slices: `x` and `out` are `[rows, c]` row-major.
pub fn layer_norm(x: &[f32], gamma: &[f32], beta: &[f32], c: usize, eps: f32, out: &mut [f32]) -> TractResult<()> {
    ensure!(
        c > 0 && x.len().is_multiple_of(c) && out.len() == x.len() && gamma.len() == c && beta.len() == c,
        "LayerNorm: x {} values, out {}, gamma {}, beta {} for rows of {c}",
        x.len(),
        out.len(),
        gamma.len(),
        beta.len()
    );
    let rows = x.len() / c;
    let dst = OutPtr(out.as_mut_ptr());
    par_for(rows.div_ceil(ROWS), move |b| {
        let dst = dst;
        let r0 = b * ROWS;
        let n = ROWS.min(rows - r0);
        // SAFETY: rows r0..r0+n of `out` belong to this block only.
        let out = unsafe { std::slice::from_raw_parts_mut(dst.0.add(r0 * c), n * c) };
        let x = &x[r0 * c..(r0 + n) * c];
        #[cfg(target_arch = "x86_64")]
        if super::isa::level() == super::isa::Level::Avx512 {
            // SAFETY: the level is supported (isa::level checks it).
            unsafe { norm_rows_avx512(x, gamma, beta, eps, out, c) };
            return Ok(());
        }
        norm_rows(x, gamma, beta, eps, out, c);
        Ok(())
    })
}

#[inline(always)]
fn norm_rows(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32], c: usize) {
    for (xr, yr) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
        norm_row(xr, gamma, beta, eps, yr);
    }
}

/// [`norm_rows`] compiled for AVX-512: the same operations in the same order (the compiler may
/// not reorder float adds), so the same bits, in 16-lane registers instead of the baseline's
/// 4-lane SSE (the LayerNorms of a frame 4.2 -> 3.5 ms, 448 px a=4 M=736, Intel Xeon, 1 thread).
///
/// # Safety
/// The CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn norm_rows_avx512(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, out: &mut [f32], c: usize) {
    norm_rows(x, gamma, beta, eps, out, c)
}

/// Lanes of the row sums: the compiler keeps them in vector registers. The order of the adds is
/// fixed, so a row gives the same bits on any thread.
const LANES: usize = 16;

#[inline(always)]
fn norm_row(x: &[f32], gamma: &[f32], beta: &[f32], eps: f32, y: &mut [f32]) {
    let c = x.len() as f32;
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for ch in chunks {
        for (a, v) in acc.iter_mut().zip(ch) {
            *a += v;
        }
    }
    let mean = (acc.iter().sum::<f32>() + tail) / c;
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
    for ch in chunks {
        for (a, v) in acc.iter_mut().zip(ch) {
            *a += (v - mean) * (v - mean);
        }
    }
    let var = (acc.iter().sum::<f32>() + tail) / c;
    let inv = 1.0 / (var + eps).sqrt();
    for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
        *y = (x - mean) * inv * g + b;
    }
}

/// The textbook formula in f64: the reference [`layer_norm`] is tested against.
pub fn reference(x: &[f32], gamma: &[f32], beta: &[f32], c: usize, eps: f32) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for (xr, yr) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
        let mean = xr.iter().map(|&v| v as f64).sum::<f64>() / c as f64;
        let var = xr.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / c as f64;
        let inv = 1.0 / (var + eps as f64).sqrt();
        for (i, y) in yr.iter_mut().enumerate() {
            *y = ((xr[i] as f64 - mean) * inv * gamma[i] as f64 + beta[i] as f64) as f32;
        }
    }
    out
}

impl Op for LayerNorm {
    fn name(&self) -> StaticName {
        "LayerNorm".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("eps {:e}, one pass per row, {ROWS}-row blocks", self.eps)])
    }

    op_as_typed_op!();
}

impl EvalOp for LayerNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 3, "LayerNorm: {} inputs", inputs.len());
        let shape = inputs[0].shape();
        let c = *shape.last().context("LayerNorm: scalar input")?;
        // SAFETY: `layer_norm` writes every element of the output.
        let mut out = unsafe { Tensor::uninitialized::<f32>(shape)? };
        let plain = |i: usize| inputs[i].try_as_plain_ram();
        let (x, g, b) = (plain(0)?, plain(1)?, plain(2)?);
        layer_norm(
            x.as_slice::<f32>()?,
            g.as_slice::<f32>()?,
            b.as_slice::<f32>()?,
            c,
            self.eps,
            out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
        )?;
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for LayerNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 3, "LayerNorm: {} inputs", inputs.len());
        ensure!(inputs.iter().all(|f| f.datum_type == f32::datum_type()), "LayerNorm: f32 only");
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// The single reader of `outlet`, if it has exactly one and is not a model output.
fn only_reader(model: &TypedModel, outlet: OutletId) -> TractResult<Option<&TypedNode>> {
    Ok(super::attention::only_successor(model, outlet).map(|i| model.node(i.node)))
}

/// The other input of a two-input node, if `node` reads `from` on one side.
fn other_input(node: &TypedNode, from: OutletId) -> Option<OutletId> {
    match node.inputs.as_slice() {
        [a, b] if *a == from => Some(*b),
        [a, b] if *b == from => Some(*a),
        _ => None,
    }
}

/// A constant f32 of shape `[1, .., 1, c]` at `outlet`.
fn const_row(model: &TypedModel, outlet: OutletId, c: usize) -> TractResult<Option<Arc<Tensor>>> {
    let f = model.outlet_fact(outlet)?;
    let Some(k) = f.konst.clone() else { return Ok(None) };
    let ok = f.datum_type == f32::datum_type()
        && k.shape().last() == Some(&c)
        && k.shape()[..k.rank() - 1].iter().all(|&d| d == 1);
    Ok(ok.then_some(k))
}

/// One LayerNorm of the graph: its input, scale and shift, eps, and the final `Add` it replaces.
struct Found {
    x: OutletId,
    gamma: OutletId,
    beta: OutletId,
    eps: f32,
    add: usize,
}

/// The LayerNorm around `rms`, if `rms` is the `RmsNorm` of the six-node pattern.
fn find(model: &TypedModel, rms: &TypedNode) -> TractResult<Option<Found>> {
    let Some(op) = rms.op_as::<RmsNorm>() else { return Ok(None) };
    let Some(sub) = rms.inputs.first().map(|o| model.node(o.node)) else { return Ok(None) };
    if sub.op.name() != "Sub"
        || sub.inputs.len() != 2
        || only_reader(model, OutletId::new(sub.id, 0))?.map(|n| n.id) != Some(rms.id)
    {
        return Ok(None);
    }
    let (x, mean) = (sub.inputs[0], sub.inputs[1]);
    let xf = model.outlet_fact(x)?;
    if xf.datum_type != f32::datum_type() || xf.rank() == 0 || op.axis != xf.rank() - 1 {
        return Ok(None);
    }
    let Ok(c) = xf.shape[xf.rank() - 1].to_usize() else { return Ok(None) };
    // mean = Reduce<Sum>(x over the last axis) * (1 / c)
    let scale = model.node(mean.node);
    if scale.op.name() != "Mul" || only_reader(model, mean)?.map(|n| n.id) != Some(sub.id) {
        return Ok(None);
    }
    let Some((sum, recip)) = scale.inputs.iter().find_map(|&i| {
        let n = model.node(i.node);
        n.op_as::<Reduce>().map(|_| (n, other_input(scale, i)))
    }) else {
        return Ok(None);
    };
    let Some(recip) = recip else { return Ok(None) };
    let red = sum.op_as::<Reduce>().expect("matched above");
    let last = xf.rank() - 1;
    if !matches!(red.reducer, Reducer::Sum) || red.axes.as_slice() != [last] || sum.inputs.as_slice() != [x] {
        return Ok(None);
    }
    if only_reader(model, OutletId::new(sum.id, 0))?.map(|n| n.id) != Some(scale.id) {
        return Ok(None);
    }
    let rf = model.outlet_fact(recip)?;
    let recip_ok = rf
        .konst
        .as_ref()
        .and_then(|k| k.cast_to_scalar::<f32>().ok())
        .is_some_and(|v| rf.shape.volume() == 1.to_dim() && (v - 1.0 / c as f32).abs() <= 1e-6 / c as f32);
    if !recip_ok {
        return Ok(None);
    }
    let eps = op.eps.cast_to_scalar::<f32>()?;
    // y = rms * gamma + beta
    let Some(mul) = only_reader(model, OutletId::new(rms.id, 0))? else { return Ok(None) };
    if mul.op.name() != "Mul" {
        return Ok(None);
    }
    let Some(gamma) = other_input(mul, OutletId::new(rms.id, 0)) else { return Ok(None) };
    let Some(add) = only_reader(model, OutletId::new(mul.id, 0))? else { return Ok(None) };
    if add.op.name() != "Add" {
        return Ok(None);
    }
    let Some(beta) = other_input(add, OutletId::new(mul.id, 0)) else { return Ok(None) };
    if const_row(model, gamma, c)?.is_none() || const_row(model, beta, c)?.is_none() {
        return Ok(None);
    }
    if model.outlet_fact(OutletId::new(add.id, 0))?.shape != xf.shape {
        return Ok(None);
    }
    Ok(Some(Found { x, gamma, beta, eps, add: add.id }))
}

/// Replace every LayerNorm pattern of a decluttered graph with [`LayerNorm`]; returns how many.
pub fn swap(model: &mut TypedModel) -> TractResult<usize> {
    let mut swapped = 0;
    for id in model.eval_order()? {
        let Some(Found { x, gamma, beta, eps, add }) = find(model, model.node(id))? else { continue };
        let mut patch = TypedModelPatch::default();
        let taps = [x, gamma, beta].iter().map(|o| patch.tap_model(model, *o)).collect::<TractResult<TVec<_>>>()?;
        let name = format!("{}.layer_norm", model.node(add).name);
        let wire = patch.wire_node(name, LayerNorm { eps }, &taps)?;
        patch.shunt_outside(model, OutletId::new(add, 0), wire[0])?;
        patch.apply(model)?;
        swapped += 1;
    }
    Ok(swapped)
}

// x86 only: the one test compares the AVX-512 row loop with the baseline build.
#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The AVX-512 build of the row loop gives the baseline build's bits (rows of 384, the
    /// model's, and of 37, a remainder past the 16 lanes).
    #[test]
    fn avx512_rows_equal_the_baseline_bit_for_bit() {
        if !super::super::isa::Level::Avx512.supported() {
            eprintln!("no AVX-512: skipped");
            return;
        }
        for c in [384, 37] {
            let x = crate::model::sgemm::tests::lcg(9 * c, c as u64);
            let x: Vec<f32> = x.iter().enumerate().map(|(i, v)| v * 10.0 + (i % 7) as f32).collect();
            let (g, b) = (crate::model::sgemm::tests::lcg(c, 1), crate::model::sgemm::tests::lcg(c, 2));
            let (mut want, mut got) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            norm_rows(&x, &g, &b, 1e-6, &mut want, c);
            // SAFETY: the CPU has AVX-512F (checked above).
            unsafe { norm_rows_avx512(&x, &g, &b, 1e-6, &mut got, c) };
            assert!(want.iter().zip(&got).all(|(w, g)| w.to_bits() == g.to_bits()), "C = {c}: bits differ");
        }
    }
}
