//! The saliency head's last convolution (1x1, 64 channels to 1) as a weighted sum of channel
//! planes (issue #18: time and memory).
//!
//! tract runs a 1x1 convolution as a matmul with `n` = output channels = 1: at 448 px it first
//! packs the whole `[64, 256 x 256]` input (a 16.8 MB copy, 4.7 ms on the Intel Xeon, 2
//! threads), then multiplies at 6 GFLOP/s (1.4 ms). The copy is also the largest tensor of the
//! frame: with the deconvolution's output and the ReLU's it made the head's transient peak. With
//! one or a few output channels the convolution is `out[o] = b[o] + sum_c w[o, c] x[c]` over
//! whole planes: [`PlaneSum`] streams each input plane once, in blocks of
//! pixels that stay in L1, on tract's executor; no copy.
//!
//! [`swap`] replaces every einsum of exactly that shape in a decluttered graph (tract's declutter
//! turns a 1x1 convolution to one channel into `NIHW,I->NOHW` with a constant `[C]` kernel, and
//! the bias into an `Add`; batch 1, f32); others stay tract's. `[model] cpu_ops = "tract"` turns it off.
//! `tests/model/pointwise.rs` checks it against the f64 [`reference`] and the head against
//! tract's. Where it follows one of our deconvolutions (the focus head), `deconv::fuse` then
//! folds it into the deconvolution's write-out (`deconv/epilogue.rs`), so the plan runs it there.

use tract_core::internal::*;
use tract_core::ops::einsum::EinSum;

/// Pixels per task: one output block (16 KB) stays in L1 while the input planes stream past.
const PIXELS: usize = 4096;

/// 1x1 convolution to one channel without its bias: `[1, C, H, W]` -> `[1, 1, H, W]`, kernel
/// `[C]` (the einsum `NIHW,I->NOHW` tract's declutter makes of it; the bias stays tract's `Add`).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct PlaneSum;

/// `out[o * hw + p] = bias[o] + sum_c kernel[o * ci + c] x[c * hw + p]`, summed over `c` in
/// order; blocks of pixels on tract's executor.
pub fn plane_sum(x: &[f32], kernel: &[f32], bias: &[f32], ci: usize, hw: usize, out: &mut [f32]) -> TractResult<()> {
    let co = out.len() / hw.max(1);
    ensure!(
        x.len() == ci * hw && kernel.len() == co * ci && out.len() == co * hw && (bias.len() == co || bias.len() == 1),
        "PlaneSum: x {}, kernel {}, bias {}, out {} values for C_in {ci}, {hw} pixels",
        x.len(),
        kernel.len(),
        bias.len(),
        out.len()
    );
    if out.is_empty() {
        return Ok(());
    }
    let dst = super::attention::OutPtr(out.as_mut_ptr());
    super::attention::par_for(hw.div_ceil(PIXELS), move |t| {
        let dst = dst;
        let p0 = t * PIXELS;
        let n = PIXELS.min(hw - p0);
        for o in 0..co {
            // SAFETY: pixels p0..p0 + n of output channel o are this task's only; in bounds
            // (lengths checked above).
            let acc = unsafe { std::slice::from_raw_parts_mut(dst.0.add(o * hw + p0), n) };
            acc.fill(bias[if bias.len() == 1 { 0 } else { o }]);
            for c in 0..ci {
                let wv = kernel[o * ci + c];
                for (a, v) in acc.iter_mut().zip(&x[c * hw + p0..][..n]) {
                    *a += wv * v;
                }
            }
        }
        Ok(())
    })
}

/// The textbook formula in f64, one output at a time: what [`plane_sum`] is tested against.
pub fn reference(x: &[f32], kernel: &[f32], bias: &[f32], ci: usize, hw: usize, co: usize) -> Vec<f32> {
    let mut out = vec![0f32; co * hw];
    for o in 0..co {
        for p in 0..hw {
            let b = bias[if bias.len() == 1 { 0 } else { o }] as f64;
            out[o * hw + p] =
                (b + (0..ci).map(|c| kernel[o * ci + c] as f64 * x[c * hw + p] as f64).sum::<f64>()) as f32;
        }
    }
    out
}

impl Op for PlaneSum {
    fn name(&self) -> StaticName {
        "PlaneSum".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec!["Conv 1x1 as a weighted sum of channel planes, ailurus".into()])
    }

    op_as_typed_op!();
}

impl EvalOp for PlaneSum {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 2, "PlaneSum: {} inputs", inputs.len());
        let (xs, ks) = (inputs[0].shape(), inputs[1].shape());
        ensure!(xs.len() == 4 && xs[0] == 1, "PlaneSum: input {xs:?}, expected [1, C, H, W]");
        ensure!(ks.len() == 1 && ks[0] == xs[1], "PlaneSum: kernel {ks:?}, expected [{}]", xs[1]);
        let (ci, h, w) = (xs[1], xs[2], xs[3]);
        // SAFETY: `plane_sum` writes every output element (each pixel block).
        let mut out = unsafe { Tensor::uninitialized::<f32>(&[1, 1, h, w])? };
        let (x, k) = (inputs[0].try_as_plain_ram()?, inputs[1].try_as_plain_ram()?);
        plane_sum(
            x.as_slice::<f32>()?,
            k.as_slice::<f32>()?,
            &[0.0],
            ci,
            h * w,
            out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
        )?;
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for PlaneSum {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 2 && inputs.iter().all(|f| f.datum_type == f32::datum_type()));
        let (x, k) = (&inputs[0].shape, &inputs[1].shape);
        ensure!(x.len() == 4 && k.len() == 1, "PlaneSum: input {x:?}, kernel {k:?}");
        Ok(tvec!(f32::fact([x[0].clone(), 1.to_dim(), x[2].clone(), x[3].clone()])))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let x = &inputs[0].shape;
        let fma = x[1].clone() * x[2].clone() * x[3].clone();
        Ok(tvec!((Cost::FMA(f32::datum_type()), fma)))
    }

    as_op!();
}

/// The einsum tract's declutter makes of a 1x1 convolution to one channel: input `NIHW`, the
/// kernel squeezed to `[C]`, output `NOHW` (O = 1); the bias follows as an `Add` of its own.
const ONE_CHANNEL_1X1: &str = "NIHW,I->NOHW";

/// Whether `node` is an einsum [`PlaneSum`] computes exactly.
fn matches(model: &TypedModel, node: &TypedNode) -> TractResult<bool> {
    let Some(op) = node.op_as::<EinSum>() else { return Ok(false) };
    if node.inputs.len() != 2 || op.q_params.is_some() || op.axes.to_string() != ONE_CHANNEL_1X1 {
        return Ok(false);
    }
    let x = model.outlet_fact(node.inputs[0])?;
    let k = model.outlet_fact(node.inputs[1])?;
    Ok(op.operating_dt == f32::datum_type()
        && [x, k].iter().all(|f| f.datum_type == f32::datum_type())
        && x.rank() == 4
        && x.shape[0] == 1.to_dim()
        && k.konst.is_some()
        && k.rank() == 1
        && k.shape[0] == x.shape[1]
        && model.outlet_fact(node.id.into())?.shape.to_tvec()
            == tvec![1.to_dim(), 1.to_dim(), x.shape[2].clone(), x.shape[3].clone()])
}

/// Replace every matching einsum (a 1x1 convolution to one channel) of a decluttered graph with
/// [`PlaneSum`]; returns how many.
pub fn swap(model: &mut TypedModel) -> TractResult<usize> {
    let mut swapped = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        if !matches(model, node)? {
            continue;
        }
        let patch = TypedModelPatch::replace_single_op(model, node, &node.inputs, PlaneSum)?;
        patch.apply(model)?;
        swapped += 1;
    }
    Ok(swapped)
}
