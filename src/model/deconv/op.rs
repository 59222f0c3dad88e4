//! The tract op of the sub-pixel deconvolution ([`SubpixelDeconv`]) and the swap that puts it
//! into a decluttered graph.

use tract_core::internal::*;
use tract_core::ops::cnn::{Deconv, KernelFormat, PaddingSpec};
use tract_core::ops::nn::DataFormat;

use super::{deconv_bf16, deconv_fused, f32_taps, kernel_name, SubpixelDeconv, Taps};
use crate::model::attention::only_successor;

impl Op for SubpixelDeconv {
    fn name(&self) -> StaticName {
        "SubpixelDeconv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let products = if let Some(taps) = &self.half {
            crate::model::bf16::Half::best(taps.0[0].format).name()
        } else {
            kernel_name(crate::model::isa::level())
        };
        let then = match &self.epilogue {
            None => String::new(),
            Some(e) => {
                let steps = [("scale", &e.scale), ("shift", &e.shift), ("max", &e.floor), ("1x1 conv", &e.project)];
                let names: Vec<&str> = steps.iter().filter(|(_, v)| v.is_some()).map(|(n, _)| *n).collect();
                format!(", then {} as it writes", names.join(" + "))
            }
        };
        let layout = match (self.nhwc_in, self.nhwc_out) {
            (false, false) => "",
            (true, false) => ", reads [H, W, C]",
            (false, true) => ", writes [2H, 2W, C]",
            (true, true) => ", reads [H, W, C] and writes [2H, 2W, C]",
        };
        Ok(vec![format!("ConvTranspose 4x4/2 as 4 parities x 2x2 taps, {products}{then}{layout}")])
    }

    op_as_typed_op!();
}

impl EvalOp for SubpixelDeconv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == self.n_inputs(), "SubpixelDeconv: {} inputs", inputs.len());
        let xs = inputs[0].shape();
        ensure!(xs.len() == 4 && xs[0] == 1, "SubpixelDeconv: input {xs:?}, expected [1, C, H, W]");
        let plain = |i: usize| inputs[i].try_as_plain_ram();
        let (x, b) = (plain(0)?, plain(inputs.len() - 1)?);
        let (ci, h, w, co) = if self.nhwc_in { (xs[3], xs[1], xs[2], b.len()) } else { (xs[1], xs[2], xs[3], b.len()) };
        let e = self.epilogue.as_ref();
        let co_out = e.map_or(co, |e| e.channels_out(co));
        let shape = if self.nhwc_out { [1, 2 * h, 2 * w, co_out] } else { [1, co_out, 2 * h, 2 * w] };
        // SAFETY: `deconv` writes every output element (each pixel belongs to one parity).
        let mut out = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        let (x, b) = (x.as_slice::<f32>()?, b.as_slice::<f32>()?);
        let o = &mut out.try_as_plain_ram_mut()?;
        if self.nhwc_in || self.nhwc_out {
            let taps = self.f32_taps.as_ref().context("SubpixelDeconv: [H, W, C] layouts need the packed f32 taps")?;
            #[cfg(target_arch = "x86_64")]
            {
                let io = (self.nhwc_in, self.nhwc_out);
                super::deconv_nhwc(x, &taps.0, b, (ci, h, w, co), e, io, o.as_slice_mut::<f32>()?)?;
                return Ok(tvec!(out.into_tvalue()));
            }
            #[cfg(not(target_arch = "x86_64"))]
            bail!("SubpixelDeconv: packed f32 taps ({taps:?}) on {}", std::env::consts::ARCH);
        }
        if let Some(taps) = &self.half {
            let kernel = crate::model::bf16::Half::best(taps.0[0].format);
            deconv_bf16(kernel, x, taps, b, ci, h, w, co, e, o.as_slice_mut::<f32>()?)?;
            return Ok(tvec!(out.into_tvalue()));
        }
        let k = if self.n_inputs() == 3 { Some(plain(1)?) } else { None };
        let k = match &k {
            Some(k) => {
                let ks = k.shape();
                ensure!(ks.len() == 4 && ks[1] == ci && ks[2] == 4 && ks[3] == 4, "SubpixelDeconv: kernel {ks:?}");
                k.as_slice::<f32>()?
            }
            None => &[],
        };
        let taps = self.f32_taps.as_ref().map(|t| &*t.0);
        deconv_fused(crate::model::isa::level(), x, k, taps, b, ci, h, w, co, e, o.as_slice_mut::<f32>()?)?;
        Ok(tvec!(out.into_tvalue()))
    }
}

impl SubpixelDeconv {
    /// `[x, bias]` when the op holds its kernel (packed taps: the f32 kernel is then not kept
    /// in the plan, 8.9 MB for the focus head), else `[x, kernel, bias]`.
    fn n_inputs(&self) -> usize {
        if self.half.is_some() || self.f32_taps.is_some() {
            2
        } else {
            3
        }
    }
}

impl TypedOp for SubpixelDeconv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == self.n_inputs() && inputs.iter().all(|f| f.datum_type == f32::datum_type()));
        let (x, b) = (&inputs[0].shape, &inputs[inputs.len() - 1].shape);
        ensure!(x.len() == 4 && b.len() == 1, "SubpixelDeconv: input {x:?}, bias {b:?}");
        let co = match &self.epilogue {
            Some(e) if e.project.is_some() => e.channels_out(b[0].to_usize()?).to_dim(),
            _ => b[0].clone(),
        };
        let (h, w) = if self.nhwc_in { (&x[1], &x[2]) } else { (&x[2], &x[3]) };
        let (h2, w2) = (h.clone() * 2, w.clone() * 2);
        Ok(tvec!(f32::fact(if self.nhwc_out { [x[0].clone(), h2, w2, co] } else { [x[0].clone(), co, h2, w2] })))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let (x, b) = (&inputs[0].shape, &inputs[inputs.len() - 1].shape);
        // Each input pixel meets each output channel through 4 of the 16 taps per parity: 16
        // multiply-adds per (input pixel, C_in, C_out), as the scatter; the epilogue's 1x1
        // convolution C_out more per output pixel and channel written.
        let mut fma = x[1].clone() * x[2].clone() * x[3].clone() * b[0].clone() * 16;
        if let Some(p) = self.epilogue.as_ref().and_then(|e| e.project.as_ref()) {
            // (H W is x[2] x[3] here: a projection's deconvolution never reads [H, W, C].)
            fma += x[2].clone() * x[3].clone() * 4 * p.len();
        }
        Ok(tvec!((Cost::FMA(f32::datum_type()), fma)))
    }

    as_op!();
}

/// Whether `node` is a `Deconv` [`SubpixelDeconv`] computes exactly.
fn matches(model: &TypedModel, node: &TypedNode) -> TractResult<bool> {
    let Some(op) = node.op_as::<Deconv>() else { return Ok(false) };
    if node.inputs.len() != 3 {
        return Ok(false);
    }
    let ps = &op.pool_spec;
    let x = model.outlet_fact(node.inputs[0])?;
    let k = model.outlet_fact(node.inputs[1])?;
    let b = model.outlet_fact(node.inputs[2])?;
    let ones = |v: &Option<TVec<usize>>| v.as_ref().is_none_or(|v| v.iter().all(|d| *d == 1));
    let explicit_1 = matches!(&ps.padding, PaddingSpec::Explicit(a, e) if a.iter().chain(e.iter()).all(|p| *p == 1));
    Ok(ps.data_format == DataFormat::NCHW
        && ps.kernel_shape.as_slice() == [4, 4]
        && ps.strides.as_ref().is_some_and(|s| s.as_slice() == [2, 2])
        && ones(&ps.dilations)
        && explicit_1
        && op.group == 1
        && op.kernel_format == KernelFormat::OIHW
        && op.adjustments.iter().all(|a| *a == 0)
        && [x, k, b].iter().all(|f| f.datum_type == f32::datum_type())
        && x.rank() == 4
        && x.shape[0] == 1.to_dim()
        && k.konst.is_some()
        && k.rank() == 4
        && k.shape[1] == x.shape[1]
        && b.rank() == 1
        && b.shape[0] == k.shape[0])
}

/// Replace every matching `Deconv` of a decluttered graph with [`SubpixelDeconv`]; returns how
/// many.
pub fn swap(model: &mut TypedModel) -> TractResult<usize> {
    let mut swapped = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        if !matches(model, node)? {
            continue;
        }
        let half = match crate::model::bf16::precision().format() {
            Some(format) => {
                let k = model.outlet_fact(node.inputs[1])?.konst.clone().context("SubpixelDeconv: kernel")?;
                let (co, ci) = (k.shape()[0], k.shape()[1]);
                Some(Taps::pack_as(format, k.try_as_plain_ram()?.as_slice::<f32>()?, ci, co))
            }
            None => None,
        };
        let f32_taps = if half.is_none() && crate::model::sgemm::packs(crate::model::isa::level()) {
            let k = model.outlet_fact(node.inputs[1])?.konst.clone().context("SubpixelDeconv: kernel")?;
            let (co, ci) = (k.shape()[0], k.shape()[1]);
            Some(f32_taps(k.try_as_plain_ram()?.as_slice::<f32>()?, ci, co))
        } else {
            None
        };
        let op = SubpixelDeconv { half, f32_taps, epilogue: None, nhwc_in: false, nhwc_out: false };
        let inputs: TVec<OutletId> = match op.n_inputs() {
            2 => tvec![node.inputs[0], node.inputs[2]],
            _ => node.inputs.iter().copied().collect(),
        };
        let patch = TypedModelPatch::replace_single_op(model, node, &inputs, op)?;
        patch.apply(model)?;
        swapped += 1;
    }
    Ok(swapped)
}

/// Let each [`SubpixelDeconv`] on packed f32 taps (levels `avx512`, `avx2`) whose output only feeds
/// another such one (no projection between) write `[1, 2H, 2W, C]`, and that one read it
/// ([`super::deconv_nhwc`]): both compute position-major, so the tensor between them skips a
/// transpose on each side (the focus head's three deconvolutions: two such pairs). Run after
/// [`super::fuse`]; returns how many pairs.
pub fn chain(model: &mut TypedModel) -> TractResult<usize> {
    let mut chained = 0;
    for id in model.eval_order()? {
        let Some(a) = model.node(id).op_as::<SubpixelDeconv>() else { continue };
        if a.f32_taps.is_none() || a.nhwc_out || a.epilogue.as_ref().is_some_and(|e| e.project.is_some()) {
            continue;
        }
        let Some(succ) = only_successor(model, OutletId::new(id, 0)) else { continue };
        let Some(b) = model.node(succ.node).op_as::<SubpixelDeconv>() else { continue };
        if succ.slot != 0 || b.f32_taps.is_none() || b.nhwc_in {
            continue;
        }
        let a = SubpixelDeconv { nhwc_out: true, ..a.clone() };
        let b = SubpixelDeconv { nhwc_in: true, ..b.clone() };
        let inputs: TVec<TypedFact> = model.node_input_facts(id)?.into_iter().cloned().collect();
        let fact = a.output_facts(&inputs.iter().collect::<TVec<_>>())?.remove(0);
        model.node_mut(id).op = Box::new(a);
        model.set_outlet_fact(OutletId::new(id, 0), fact)?;
        model.node_mut(succ.node).op = Box::new(b);
        chained += 1;
    }
    Ok(chained)
}
