//! A transformer block's MLP as one op: `out = r + GELU(x W1 + b1) W2 + b2` (issue #18).
//!
//! After [`super::linear::swap`] the MLP is `Linear` (fc1 + bias) -> tract's `GeluExact` ->
//! `Linear` (fc2 + bias, layer scale folded in, + the residual). Run as three ops, the hidden
//! tensor `[T, 4C]` (6.3 MB at 448 px) is written, read and rewritten through memory, and each
//! op's output is a fresh allocation: above glibc's mmap threshold (4 MB, `memory.rs`) every
//! frame maps and faults it in again. `ailurus profile --nodes` on the Intel Xeon (1 thread,
//! T = 1025): fc1 at 105-115 GFLOP/s, GELU 1.4 ms a block, against 150-160 GFLOP/s for the same
//! product in cache (`examples/gemm_shapes.rs`), and 2% of the frame in the kernel's page-fault
//! handler. [`Mlp`] runs each thread's rows in chunks of [`CHUNK`]: fc1 into a per-thread scratch
//! that stays in cache and is reused frame after frame, GELU on it in place, then fc2 straight
//! into the output. The hidden tensor never exists. With fc1 on our tiles (`avx512`, `avx2`), the GELU is
//! applied in the tile's last store (`sgemm::Tail`) and fc2's bias and residual in its first,
//! where the tile copies the arithmetic of tract's erf kernel on this CPU (`sgemm::Erf`).
//!
//! The same products as the three ops, bit for bit: a linear layer's rows are independent, each
//! output sums its K chunks in the same order whatever the row blocking, and the GELU is tract's
//! `GeluExact` arithmetic with tract's erf kernel, or the tile's copy of it (`tests/model/mlp_op.rs`
//! checks that, and the swapped plans against tract's own ops).

use std::cell::RefCell;

use tract_core::internal::*;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::nn::GeluExact;

use super::attention::{only_successor, par_for, OutPtr};
use super::linear::{rows_per_thread, Linear, Weight};

/// Rows per chunk: the hidden rows (`CHUNK x 4C`, 1.2 MB at C = 384) stay in a 2 MB L2, and a
/// multiple of every kernel's tile rows (12, 8, 6).
pub const CHUNK: usize = 192;

/// `out = r + GELU(x W1 + b1) W2 + b2`: inputs fc1's (`x`, its weight unless packed, its bias),
/// then fc2's after its `x` (its weight unless packed, its bias, the residual).
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct Mlp {
    pub fc1: Linear,
    pub fc2: Linear,
}

thread_local! {
    /// A chunk's hidden rows and the erf kernel's argument (reused: steady frames allocate nothing).
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

#[derive(Default)]
struct Scratch {
    hidden: Vec<f32>,
    erf_arg: Vec<f32>,
    erf: Option<Box<dyn tract_linalg::element_wise::ElementWise<f32>>>,
}

/// tract's erf kernel's chunk in `GeluExact` (any chunking gives the same values).
const ERF_CHUNK: usize = 1024;

/// tract's `GeluExact` on `xs` in place: `(x * 0.5) * (1 + erf(x * (1 / sqrt 2)))`, erf on tract's
/// kernel (the one the plans use).
pub fn gelu_exact(
    xs: &mut [f32],
    arg: &mut [f32],
    erf: &dyn tract_linalg::element_wise::ElementWise<f32>,
) -> TractResult<()> {
    let c = 2f32.sqrt().recip();
    for chunk in xs.chunks_mut(ERF_CHUNK) {
        let s = &mut arg[..chunk.len()];
        s.iter_mut().zip(chunk.iter()).for_each(|(s, x)| *s = *x * c);
        erf.run(s)?;
        chunk.iter_mut().zip(s.iter()).for_each(|(x, e)| *x = (*x * 0.5) * (*e + 1.0));
    }
    Ok(())
}

/// The MLP on plain slices: fc1's and fc2's weight and bias, `x` `[t, K]`, `out` and `r`
/// `[t, N2]`; see [`Mlp`].
pub fn mlp(
    (w1, b1): (Weight, Option<&[f32]>),
    (w2, b2): (Weight, Option<&[f32]>),
    r: Option<&[f32]>,
    x: &[f32],
    t: usize,
    out: &mut [f32],
) -> TractResult<()> {
    w1.check()?;
    w2.check()?;
    let (k, n1, n2) = (w1.k(), w1.n(), w2.n());
    ensure!(w2.k() == n1, "Mlp: fc1 gives {n1} values a row, fc2 reads {}", w2.k());
    ensure!(
        x.len() == t * k && out.len() == t * n2 && r.is_none_or(|r| r.len() == out.len()),
        "Mlp: x {} values for [{t}, {k}], out {} and residual {:?} for [{t}, {n2}]",
        x.len(),
        out.len(),
        r.map(|r| r.len())
    );
    ensure!(b1.is_none_or(|b| b.len() == n1), "Mlp: fc1's bias has {:?} values for {n1}", b1.map(|b| b.len()));
    if t * n2 == 0 {
        return Ok(());
    }
    let block = rows_per_thread(t, w1.tile_rows());
    let dst = OutPtr(out.as_mut_ptr());
    par_for(t.div_ceil(block), move |i| {
        let dst = dst;
        let (r0, rows) = (i * block, block.min(t - i * block));
        SCRATCH.with(|s| {
            let s = &mut *s.borrow_mut();
            let chunk = CHUNK.min(rows);
            if s.hidden.len() < chunk * n1 {
                s.hidden.resize(chunk * n1, 0.0);
            }
            if s.erf_arg.len() < ERF_CHUNK {
                s.erf_arg.resize(ERF_CHUNK, 0.0);
            }
            if s.erf.is_none() {
                s.erf = Some(tract_linalg::routines::Func::Erf.ew_f32()?);
            }
            let Scratch { hidden, erf_arg, erf } = s;
            let erf = erf.as_deref().expect("made above");
            // Our tiles apply the GELU as they write fc1's sums where they copy the arithmetic
            // of the erf kernel tract runs here (its AVX-512 or its generic one): no separate
            // passes over the hidden rows (the 12 MLPs 194 -> 185 ms a frame, 448 px, a=4 M=736,
            // Intel Xeon, 1 thread).
            let fuse = super::sgemm::Erf::of_kernel(erf.name());
            for c0 in (r0..r0 + rows).step_by(CHUNK) {
                let cr = CHUNK.min(r0 + rows - c0);
                let h = &mut hidden[..cr * n1];
                if !w1.rows(&x[c0 * k..(c0 + cr) * k], cr, h, b1, None, fuse)? {
                    gelu_exact(h, erf_arg, erf)?;
                }
                // SAFETY: rows c0..c0+cr of out are in bounds (lengths checked) and belong to
                // this block only.
                let o = unsafe { std::slice::from_raw_parts_mut(dst.0.add(c0 * n2), cr * n2) };
                w2.rows(h, cr, o, b2, r.map(|r| &r[c0 * n2..(c0 + cr) * n2]), None)?;
            }
            Ok(())
        })
    })
}

impl Op for Mlp {
    fn name(&self) -> StaticName {
        "Mlp".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = self.fc1.info()?;
        info.push("GELU (exact), on chunks of rows in cache".into());
        info.extend(self.fc2.info()?);
        Ok(info)
    }

    op_as_typed_op!();
}

impl EvalOp for Mlp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let n1 = self.fc1.n_inputs();
        ensure!(inputs.len() == n1 + self.fc2.n_inputs() - 1, "Mlp: {} inputs", inputs.len());
        let (t, k) = self.fc1.rows(inputs[0].shape())?;
        let views = inputs.iter().map(|i| i.try_as_plain_ram()).collect::<TractResult<TVec<_>>>()?;
        let slices = views.iter().map(|v| v.as_slice::<f32>()).collect::<TractResult<TVec<_>>>()?;
        let (w1, b1, _) = self.fc1.parts(&slices[1..n1], k)?;
        let (w2, b2, r) = self.fc2.parts(&slices[n1..], w1.n())?;
        let shape: TVec<usize> = if self.fc2.layout.lead_one { tvec![1, t, w2.n()] } else { tvec![t, w2.n()] };
        // SAFETY: `mlp` writes every element of the output.
        let mut out = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        mlp((w1, b1), (w2, b2), r, slices[0], t, out.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?)?;
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Mlp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let n1 = self.fc1.n_inputs();
        ensure!(inputs.len() == n1 + self.fc2.n_inputs() - 1, "Mlp: {} inputs", inputs.len());
        let hidden = self.fc1.output_facts(&inputs[..n1])?.remove(0);
        let mut fc2_inputs: TVec<&TypedFact> = tvec![&hidden];
        fc2_inputs.extend(inputs[n1..].iter().copied());
        self.fc2.output_facts(&fc2_inputs)
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let n1 = self.fc1.n_inputs();
        let hidden = self.fc1.output_facts(&inputs[..n1])?.remove(0);
        let mut fc2_inputs: TVec<&TypedFact> = tvec![&hidden];
        fc2_inputs.extend(inputs[n1..].iter().copied());
        let (a, b) = (self.fc1.cost(&inputs[..n1])?, self.fc2.cost(&fc2_inputs)?);
        Ok(tvec!((Cost::FMA(f32::datum_type()), a[0].1.clone() + b[0].1.clone())))
    }

    as_op!();
}

/// Is `node` tract's exact GELU on f32?
fn is_gelu(node: &TypedNode) -> bool {
    node.op_as::<ElementWiseOp>().is_some_and(|e| e.0.is::<GeluExact>() && e.1.is_none()) && node.inputs.len() == 1
}

/// Replace every `Linear -> GeluExact -> Linear` chain of a graph (after
/// [`super::linear::swap`]) whose two inner tensors have no other reader with one [`Mlp`];
/// returns how many.
pub fn fuse(model: &mut TypedModel) -> TractResult<usize> {
    let mut fused = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(fc1) = node.op_as::<Linear>() else { continue };
        if fc1.residual {
            continue;
        }
        let Some(g) = only_successor(model, OutletId::new(id, 0)) else { continue };
        let gelu = model.node(g.node);
        if !is_gelu(gelu) {
            continue;
        }
        let Some(s) = only_successor(model, OutletId::new(gelu.id, 0)) else { continue };
        let fc2_node = model.node(s.node);
        let Some(fc2) = fc2_node.op_as::<Linear>() else { continue };
        let hidden_rank = model.outlet_fact(OutletId::new(id, 0))?.rank();
        if s.slot != 0 || fc2.layout.in_rank != hidden_rank || fc2.layout.m_axis + 2 != hidden_rank {
            continue;
        }
        let op = Mlp { fc1: fc1.clone(), fc2: fc2.clone() };
        let mut patch = TypedModelPatch::default();
        let mut taps = tvec![];
        for i in node.inputs.iter().chain(&fc2_node.inputs[1..]) {
            taps.push(patch.tap_model(model, *i)?);
        }
        let wire = patch.wire_node(format!("{}.mlp", fc2_node.name), op, &taps)?;
        patch.shunt_outside(model, OutletId::new(fc2_node.id, 0), wire[0])?;
        patch.apply(model)?;
        fused += 1;
    }
    Ok(fused)
}
