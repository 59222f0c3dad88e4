//! What follows a deconvolution in the head, done where its output is written (issue #18: time
//! and memory).
//!
//! After each `ConvTranspose` the saliency head runs a BatchNorm (a per-channel `Mul` and `Add`
//! after declutter) and a ReLU (`Max` with 0): tract runs them as one more pass over each output
//! (an `OptBinChain`, 2.3 ms of the head at 448 px, 2 threads, Intel Xeon). After the last one, the
//! 1x1 convolution to one channel ([`super::super::pointwise::PlaneSum`]) reads the 64-channel
//! output once more. That output, `[64, 256, 256]` (16.8 MB at 448 px), was the largest tensor
//! of a frame, alive beside the layer's input and the bordered copy: the top of `ailurus run`'s
//! resident memory. [`Epilogue`] applies the per-channel steps to each block's accumulator as the
//! block writes its pixels and, with a projection, writes the 1x1 convolution's sums instead of
//! the channels: the 16.8 MB tensor is never made.
//!
//! The arithmetic is tract's, in tract's order (`((v + b) * s + t).max(f)` per channel, then the
//! projection's sum over channels in channel order from 0, as [`plane_sum`]), so the fused head
//! equals the unfused one (`tests/model/deconv_epilogue.rs`).
//!
//! [`plane_sum`]: super::super::pointwise::plane_sum

use std::hash::{Hash, Hasher};

use tract_core::internal::*;

use super::SubpixelDeconv;
use crate::model::attention::only_successor;
use crate::model::pointwise::PlaneSum;

/// Per-channel steps after the deconvolution's bias, in this order where present: `v * scale`,
/// `v + shift`, `max(v, floor)` (one value, or one per output channel); then optionally the
/// projection to `project.len() / C_out` channels (`[C_out', C_out]` weights, no bias).
#[derive(Clone, Default)]
pub struct Epilogue {
    pub scale: Option<Vec<f32>>,
    pub shift: Option<Vec<f32>>,
    pub floor: Option<Vec<f32>>,
    pub project: Option<Vec<f32>>,
}

impl std::fmt::Debug for Epilogue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = |v: &Option<Vec<f32>>| v.as_ref().map_or(0, Vec::len);
        write!(
            f,
            "Epilogue(scale {}, shift {}, max {}, projection {} weights)",
            n(&self.scale),
            n(&self.shift),
            n(&self.floor),
            n(&self.project)
        )
    }
}

impl PartialEq for Epilogue {
    fn eq(&self, other: &Self) -> bool {
        self.fields().zip(other.fields()).all(|(a, b)| match (a, b) {
            (Some(a), Some(b)) => a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            (a, b) => a.is_none() && b.is_none(),
        })
    }
}

impl Eq for Epilogue {}

impl Hash for Epilogue {
    fn hash<H: Hasher>(&self, state: &mut H) {
        for f in self.fields() {
            f.map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()).hash(state);
        }
    }
}

impl Epilogue {
    fn fields(&self) -> impl Iterator<Item = Option<&Vec<f32>>> {
        [&self.scale, &self.shift, &self.floor, &self.project].into_iter().map(Option::as_ref)
    }

    /// Channels written for a deconvolution with `co` output channels.
    pub fn channels_out(&self, co: usize) -> usize {
        self.project.as_ref().map_or(co, |p| p.len() / co.max(1))
    }

    /// Whether the values fit `co` channels (steps: 1 or `co` values; projection: a multiple of
    /// `co`, at least one row).
    pub fn check(&self, co: usize) -> TractResult<()> {
        for (name, s) in [("scale", &self.scale), ("shift", &self.shift), ("floor", &self.floor)] {
            if let Some(s) = s {
                ensure!(
                    s.len() == 1 || s.len() == co,
                    "deconvolution epilogue: {} {name} values for {co} channels",
                    s.len()
                );
            }
        }
        if let Some(p) = &self.project {
            ensure!(
                co > 0 && !p.is_empty() && p.len() % co == 0,
                "deconvolution epilogue: {} projection weights for {co} channels",
                p.len()
            );
        }
        Ok(())
    }

    /// Channel `o`'s steps as `(scale, shift, floor)`; absent steps change nothing.
    fn channel(&self, o: usize) -> (f32, f32, f32) {
        let at = |s: &Option<Vec<f32>>, none: f32| s.as_ref().map_or(none, |v| v[if v.len() == 1 { 0 } else { o }]);
        (at(&self.scale, 1.0), at(&self.shift, 0.0), at(&self.floor, f32::NEG_INFINITY))
    }
}

/// Write one output row of one parity: `get(o, x)` is the accumulator of channel `o` at input
/// column `x` (bias not added), `row(j)` the address of output channel `j`'s row at the parity's
/// first column; pixels are every second value from there. Without an epilogue: `v + bias`.
///
/// # Safety
/// `row(j)` must be valid for writes at offsets `0, 2, .., 2 (w - 1)` for every written channel
/// `j` (the epilogue's [`Epilogue::channels_out`], else `bias.len()`), and no other thread may
/// touch those values meanwhile.
pub(super) unsafe fn write_row(
    e: Option<&Epilogue>,
    bias: &[f32],
    w: usize,
    get: impl Fn(usize, usize) -> f32,
    row: impl Fn(usize) -> *mut f32,
) {
    let co = bias.len();
    let Some(e) = e else {
        for (o, b) in bias.iter().enumerate() {
            let dst = row(o);
            for x in 0..w {
                *dst.add(2 * x) = get(o, x) + b;
            }
        }
        return;
    };
    let Some(p) = &e.project else {
        for (o, b) in bias.iter().enumerate() {
            let (s, t, f) = e.channel(o);
            let dst = row(o);
            for x in 0..w {
                *dst.add(2 * x) = ((get(o, x) + b) * s + t).max(f);
            }
        }
        return;
    };
    for j in 0..p.len() / co {
        let dst = row(j);
        for x in 0..w {
            *dst.add(2 * x) = 0.0;
        }
    }
    for (o, b) in bias.iter().enumerate() {
        let (s, t, f) = e.channel(o);
        for j in 0..p.len() / co {
            let (wj, dst) = (p[j * co + o], row(j));
            for x in 0..w {
                *dst.add(2 * x) += wj * ((get(o, x) + b) * s + t).max(f);
            }
        }
    }
}

/// [`write_row`] with a projection from a position-major accumulator (input column `x`'s `co`
/// channels at `acc + x * co`) on AVX-512, 16 pixels at a time: each channel's 16 values
/// gathered, the same steps and the same channel-ordered sums as [`write_row`], bit for bit.
/// The scalar loop, strided through the accumulator, made the last deconvolution 36.7 ms
/// against 32.3 with this (448 px, Intel Xeon, 1 thread). Returns false (nothing written) for
/// more than [`PROJECTED`] output channels.
///
/// # Safety
/// As [`write_row`]; `acc` holds `w * co` readable values; the CPU has AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn write_row_projected(
    e: &Epilogue,
    bias: &[f32],
    w: usize,
    acc: *const f32,
    row: impl Fn(usize) -> *mut f32,
) -> bool {
    use std::arch::x86_64::*;
    let co = bias.len();
    let Some(p) = &e.project else { return false };
    let outs = p.len() / co;
    if outs > PROJECTED || co == 0 || co * 16 > i32::MAX as usize {
        return false;
    }
    let idx = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(co as i32),
    );
    for x0 in (0..w).step_by(16) {
        let lanes = (w - x0).min(16);
        let m = ((1u32 << lanes) - 1) as __mmask16;
        let mut sums = [_mm512_setzero_ps(); PROJECTED];
        for (o, b) in bias.iter().enumerate() {
            let (s, t, f) = e.channel(o);
            // SAFETY: lanes < `lanes` read acc[(x0 + l) * co + o] < w * co (caller).
            let v = unsafe { _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), m, idx, acc.add(x0 * co + o)) };
            let v = _mm512_add_ps(v, _mm512_set1_ps(*b));
            let v = _mm512_add_ps(_mm512_mul_ps(v, _mm512_set1_ps(s)), _mm512_set1_ps(t));
            let v = _mm512_max_ps(v, _mm512_set1_ps(f));
            for (j, sum) in sums.iter_mut().enumerate().take(outs) {
                *sum = _mm512_add_ps(*sum, _mm512_mul_ps(_mm512_set1_ps(p[j * co + o]), v));
            }
        }
        for (j, sum) in sums.iter().enumerate().take(outs) {
            let mut v = [0f32; 16];
            // SAFETY: 16 values into a local array.
            unsafe { _mm512_storeu_ps(v.as_mut_ptr(), *sum) };
            let dst = row(j);
            for (l, v) in v.iter().enumerate().take(lanes) {
                // SAFETY: offsets 2 (x0 + l) < 2 w of channel j's row (caller).
                unsafe { *dst.add(2 * (x0 + l)) = *v };
            }
        }
    }
    true
}

/// [`write_row_projected`] on AVX2, 8 pixels at a time (the same steps, the same bits): for
/// the `avx2` level.
///
/// # Safety
/// As [`write_row_projected`], with AVX2 in place of AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn write_row_projected_avx2(
    e: &Epilogue,
    bias: &[f32],
    w: usize,
    acc: *const f32,
    row: impl Fn(usize) -> *mut f32,
) -> bool {
    use std::arch::x86_64::*;
    let co = bias.len();
    let Some(p) = &e.project else { return false };
    let outs = p.len() / co;
    if outs > PROJECTED || co == 0 || co * 8 > i32::MAX as usize {
        return false;
    }
    let idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(co as i32));
    for x0 in (0..w).step_by(8) {
        let lanes = (w - x0).min(8);
        let m = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
            _mm256_set1_epi32(lanes as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        ));
        let mut sums = [_mm256_setzero_ps(); PROJECTED];
        for (o, b) in bias.iter().enumerate() {
            let (s, t, f) = e.channel(o);
            // SAFETY: lanes < `lanes` read acc[(x0 + l) * co + o] < w * co (caller).
            let v = unsafe { _mm256_mask_i32gather_ps::<4>(_mm256_setzero_ps(), acc.add(x0 * co + o), idx, m) };
            let v = _mm256_add_ps(v, _mm256_set1_ps(*b));
            let v = _mm256_add_ps(_mm256_mul_ps(v, _mm256_set1_ps(s)), _mm256_set1_ps(t));
            let v = _mm256_max_ps(v, _mm256_set1_ps(f));
            for (j, sum) in sums.iter_mut().enumerate().take(outs) {
                *sum = _mm256_add_ps(*sum, _mm256_mul_ps(_mm256_set1_ps(p[j * co + o]), v));
            }
        }
        for (j, sum) in sums.iter().enumerate().take(outs) {
            let mut v = [0f32; 8];
            // SAFETY: 8 values into a local array.
            unsafe { _mm256_storeu_ps(v.as_mut_ptr(), *sum) };
            let dst = row(j);
            for (l, v) in v.iter().enumerate().take(lanes) {
                // SAFETY: offsets 2 (x0 + l) < 2 w of channel j's row (caller).
                unsafe { *dst.add(2 * (x0 + l)) = *v };
            }
        }
    }
    true
}

/// The most projection outputs [`write_row_projected`] sums at once (the head has one).
#[cfg(target_arch = "x86_64")]
const PROJECTED: usize = 4;

/// Write one output pixel's `co` channels, contiguous at `dst` (`[2H, 2W, C_out]` output):
/// `src` holds its accumulators (bias not added). The arithmetic of [`write_row`], channel by
/// channel, so both layouts hold the same values; no projection here.
///
/// # Safety
/// `dst` is valid for writes of `bias.len()` values no other thread touches meanwhile.
pub(super) unsafe fn write_pixel(e: Option<&Epilogue>, bias: &[f32], src: &[f32], dst: *mut f32) {
    let co = bias.len();
    // SAFETY: as the caller promises.
    let dst = unsafe { std::slice::from_raw_parts_mut(dst, co) };
    let Some(e) = e else {
        dst.iter_mut().zip(src).zip(bias).for_each(|((d, v), b)| *d = v + b);
        return;
    };
    debug_assert!(e.project.is_none());
    fn full(v: &Option<Vec<f32>>, co: usize) -> Option<&[f32]> {
        v.as_deref().filter(|v| v.len() == co)
    }
    if let (Some(s), Some(t), Some(f)) = (full(&e.scale, co), full(&e.shift, co), full(&e.floor, co)) {
        // The usual case (a BatchNorm and a ReLU, expanded to every channel by `fuse`): one
        // loop the compiler vectorises.
        for (((((d, v), b), s), t), f) in dst.iter_mut().zip(src).zip(bias).zip(s).zip(t).zip(f) {
            *d = ((v + b) * s + t).max(*f);
        }
        return;
    }
    for (o, (d, (v, b))) in dst.iter_mut().zip(src.iter().zip(bias)).enumerate() {
        let (s, t, f) = e.channel(o);
        *d = ((v + b) * s + t).max(f);
    }
}

/// The values of a constant that applies per channel to a `[1, co, H, W]` tensor: one value, or
/// `co` of shape `[1, co, 1, 1]`.
fn per_channel(model: &TypedModel, outlet: OutletId, co: usize) -> TractResult<Option<Vec<f32>>> {
    let f = model.outlet_fact(outlet)?;
    let Some(k) = &f.konst else { return Ok(None) };
    let s = k.shape();
    let per_channel = k.len() == 1 || s == [1, co, 1, 1];
    if f.datum_type != f32::datum_type() || !per_channel {
        return Ok(None);
    }
    Ok(Some(k.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()))
}

/// Fold the per-channel `Mul`, `Add` and `Max` after each [`SubpixelDeconv`] of a decluttered
/// graph (in that order, each optional) and a following one-channel 1x1 convolution
/// ([`PlaneSum`]) into the deconvolution; returns (deconvolutions given an epilogue, of which
/// projections). Run after `deconv::swap` and `pointwise::swap`.
pub fn fuse(model: &mut TypedModel) -> TractResult<(usize, usize)> {
    let (mut fused, mut projected) = (0, 0);
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(op) = node.op_as::<SubpixelDeconv>() else { continue };
        if op.epilogue.is_some() {
            continue;
        }
        let fact = model.outlet_fact(OutletId::new(id, 0))?;
        let Ok(co) = fact.shape[1].to_usize() else { continue };
        let shape = fact.shape.clone();
        let (mut e, mut last, mut next_step) = (Epilogue::default(), OutletId::new(id, 0), 0);
        while let Some(succ) = only_successor(model, last) {
            let n = model.node(succ.node);
            let step = match n.op.name().as_ref() {
                "Mul" => 0,
                "Add" => 1,
                "Max" => 2,
                _ => break,
            };
            if step < next_step || n.inputs.len() != 2 || model.outlet_fact(OutletId::new(n.id, 0))?.shape != shape {
                break;
            }
            let Some(values) = per_channel(model, n.inputs[1 - succ.slot], co)? else { break };
            // One value for every channel (the ReLU's 0) becomes one per channel: the NHWC
            // writer's vectorised loop ([`write_pixel`]) reads them side by side.
            let values = if values.len() == 1 { vec![values[0]; co] } else { values };
            *[&mut e.scale, &mut e.shift, &mut e.floor][step] = Some(values);
            (last, next_step) = (OutletId::new(n.id, 0), step + 1);
        }
        if let Some(succ) = only_successor(model, last) {
            let n = model.node(succ.node);
            if n.op_as::<PlaneSum>().is_some() && succ.slot == 0 {
                let k = model.outlet_fact(n.inputs[1])?;
                if let Some(w) = k.konst.as_ref().filter(|k| k.len() == co && k.datum_type() == f32::datum_type()) {
                    e.project = Some(w.try_as_plain_ram()?.as_slice::<f32>()?.to_vec());
                    last = OutletId::new(n.id, 0);
                }
            }
        }
        if e == Epilogue::default() {
            continue;
        }
        e.check(co)?;
        projected += e.project.is_some() as usize;
        let mut patch = TypedModelPatch::default();
        let taps = node.inputs.iter().map(|o| patch.tap_model(model, *o)).collect::<TractResult<TVec<_>>>()?;
        let name = format!("{}.fused", model.node(last.node).name);
        let op = SubpixelDeconv { epilogue: Some(e), ..op.clone() };
        let wire = patch.wire_node(name, op, &taps)?;
        patch.shunt_outside(model, last, wire[0])?;
        patch.apply(model)?;
        fused += 1;
    }
    Ok((fused, projected))
}
