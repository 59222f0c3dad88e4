//! The reuse executor: the encoder's blocks run block by block on the tokens that changed
//! (Eventful Transformers' token gates), with per-block caches for the others.
//!
//! Per block, per frame:
//! - gate: token i is active when its block input moved by `score_i = |x_i - ref_i| / |ref_i|`
//!   at or above the threshold since it was last computed there (`ref_i`: that input); at most `cap`
//!   tokens (the highest scores) are active; the prefix (cls) tokens join whenever any token does
//!   (they attend globally). A refresh makes every token active.
//! - active rows only: LayerNorm, q/k/v, the output projection, the MLP (compacted rows on
//!   [`linear::linear`], [`layernorm::layer_norm`]); their keys and values replace the cached
//!   ones; attention runs the active queries against all keys (cached for the others);
//! - every token's output is `(x + r1) + r2` with its attention and MLP branches `r1`, `r2`:
//!   recomputed for active tokens, cached for the others, so an inactive token still carries its
//!   (sub-threshold) input change down the residual stream.
//!
//! With every token active this is exactly the model's computation on our own ops (checked
//! against the tract plans in tests/model/reuse.rs). Costs are counted in multiply-adds, so tests
//! can check them without timing anything.
//!
//! The same executor runs the reduced middle of reuse + reduction with carried clusters
//! ([`ReuseEncoder::run_range`] over blocks cut..L-1, on prefix + M merged tokens): a key bias
//! (log cluster sizes, proportional attention) is added to every logit row, and the clusters whose
//! membership changed are forced active in the first block of the range.
//!
//! Must not: decide refreshes (that is the lane's policy) or run the head.

use std::ops::Range;

use tract_core::internal::*;

use super::weights::EncoderWeights;
use crate::model::attention::{attend_rows_with, Products, ROWS};
use crate::model::{bf16, layernorm, linear};

/// One block's cache, `[T, C]` each.
#[derive(Default)]
struct BlockCache {
    reference: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    r1: Vec<f32>,
    r2: Vec<f32>,
}

/// Reused per-frame buffers (sized for the largest T seen; no allocation once warm).
#[derive(Default)]
struct Scratch {
    x: Vec<f32>,
    next: Vec<f32>,
    scores: Vec<f32>,
    order: Vec<usize>,
    active: Vec<usize>,
    xa: Vec<f32>,
    ln: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    att: Vec<f32>,
    o: Vec<f32>,
    y: Vec<f32>,
    h1: Vec<f32>,
    g: Vec<f32>,
}

/// What one frame computed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncoderStats {
    /// Active tokens per block.
    pub active: Vec<usize>,
    /// Tokens per block (prefix + patches).
    pub tokens: usize,
    /// Multiply-adds run / those of a full pass.
    pub macs: f64,
    pub full_macs: f64,
    /// The rows the first block of the run recomputed (block 0, or the range's first; sorted).
    pub first_rows: Vec<usize>,
    /// Time spent in the gates (scores, selection) of all blocks.
    pub gate_time: std::time::Duration,
}

impl EncoderStats {
    /// Active (token, block) pairs over all of them.
    pub fn active_fraction(&self) -> f64 {
        let all = (self.tokens * self.active.len()).max(1);
        self.active.iter().sum::<usize>() as f64 / all as f64
    }
}

/// How the gates run this frame.
#[derive(Debug, Clone, Copy)]
pub struct Gate {
    /// Relative change at or above which a token is recomputed (0: all of them).
    pub threshold: f32,
    /// At most this many active tokens per block (the prefix included).
    pub cap: usize,
    /// At least this many (the largest changes, if they changed at all), so that changes below
    /// the threshold are worked off over the frames instead of piling up.
    pub floor: usize,
    /// Recompute every token (and reset every reference).
    pub refresh: bool,
}

/// The executor with its caches (one per lane).
pub struct ReuseEncoder {
    w: std::sync::Arc<EncoderWeights>,
    prefix: usize,
    /// Token count the caches hold (0: empty; the next frame must refresh).
    t: usize,
    /// Blocks the last frame ran (another range refreshes).
    blocks: Range<usize>,
    caches: Vec<BlockCache>,
    s: Scratch,
    erf: Box<dyn tract_linalg::element_wise::ElementWise<f32>>,
}

/// One stream's caches while another stream's frames run on the lane (`super::streams`);
/// the default holds nothing (that stream's next frame refreshes).
#[derive(Default)]
pub struct ParkedCaches {
    t: usize,
    blocks: Range<usize>,
    caches: Vec<BlockCache>,
}

impl ParkedCaches {
    /// Bytes the cache buffers hold (their capacity).
    pub fn bytes(&self) -> usize {
        cache_bytes(&self.caches)
    }
}

fn cache_bytes(caches: &[BlockCache]) -> usize {
    let f = |v: &Vec<f32>| v.capacity() * std::mem::size_of::<f32>();
    caches.iter().map(|c| f(&c.reference) + f(&c.k) + f(&c.v) + f(&c.r1) + f(&c.r2)).sum()
}

/// Multiply-adds of one token row through one block, outside attention, and per key in attention.
fn row_macs(c: usize, f: usize) -> (f64, f64) {
    ((4 * c * c + 2 * c * f) as f64, (2 * c) as f64)
}

impl ReuseEncoder {
    pub fn new(w: std::sync::Arc<EncoderWeights>, prefix: usize) -> TractResult<ReuseEncoder> {
        use tract_linalg::routines::Func;
        let caches = w.blocks.iter().map(|_| BlockCache::default()).collect();
        Ok(ReuseEncoder { w, prefix, t: 0, blocks: 0..0, caches, s: Scratch::default(), erf: Func::Erf.ew_f32()? })
    }

    /// Exchange the caches with `parked` (another stream's; the scratch stays). An empty
    /// `parked` leaves caches that hold nothing: the next frame refreshes, allocating them.
    pub fn swap_caches(&mut self, parked: &mut ParkedCaches) {
        std::mem::swap(&mut self.t, &mut parked.t);
        std::mem::swap(&mut self.blocks, &mut parked.blocks);
        std::mem::swap(&mut self.caches, &mut parked.caches);
        if self.caches.len() != self.w.blocks.len() {
            self.caches = self.w.blocks.iter().map(|_| BlockCache::default()).collect();
            self.t = 0;
        }
    }

    /// Bytes the caches hold (keys, values, branch outputs and references of every block).
    pub fn cache_bytes(&self) -> usize {
        cache_bytes(&self.caches)
    }

    /// Drop the caches: the next frame must be a refresh.
    pub fn reset(&mut self) {
        self.t = 0;
    }

    /// Whether the caches hold `t` tokens (else the next frame must refresh).
    pub fn ready(&self, t: usize) -> bool {
        self.t == t && t > 0
    }

    /// Relative change of each of block 0's input rows (the embedding) against its reference:
    /// the scene-level signal the lane's refresh rules read. Empty when not [`Self::ready`].
    pub fn embedding_scores(&mut self, x: &[f32]) -> &[f32] {
        let c = self.w.width;
        let t = x.len() / c;
        self.s.scores.clear();
        if self.ready(t) {
            scores(x, &self.caches[0].reference, c, &mut self.s.scores);
        }
        &self.s.scores
    }

    /// Blocks 0..L-1 and the final norm on `x` (`[T, C]`, block 0's input) into `out`.
    pub fn run(&mut self, x: &[f32], gate: Gate, out: &mut Vec<f32>, stats: &mut EncoderStats) -> TractResult<()> {
        self.run_blocks(x, gate, self.w.blocks.len(), out, stats)
    }

    /// The number of blocks L.
    pub fn depth(&self) -> usize {
        self.w.blocks.len()
    }

    /// Blocks 0..`blocks`-1 on `x` into `out`; the final norm only when `blocks` is L (else
    /// `out` is block `blocks`-1's output: the stem of the reduced path). A frame with another
    /// `blocks` than the last one refreshes (the later blocks' caches are stale).
    pub fn run_blocks(
        &mut self,
        x: &[f32],
        gate: Gate,
        blocks: usize,
        out: &mut Vec<f32>,
        stats: &mut EncoderStats,
    ) -> TractResult<()> {
        self.run_range(x, gate, 0..blocks, None, &[], out, stats)
    }

    /// Blocks `blocks` on `x` (`[T, C]`, the first block's input) into `out`; the final norm
    /// only when the range ends at L. `bias` (`T` values, or none) is added to every attention
    /// logit row (the reduced middle's log cluster sizes); the rows in `force` are recomputed in
    /// the first block of the range whatever their change (clusters whose members changed). A
    /// frame with another range than the last one refreshes.
    #[allow(clippy::too_many_arguments)]
    pub fn run_range(
        &mut self,
        x: &[f32],
        gate: Gate,
        blocks: Range<usize>,
        bias: Option<&[f32]>,
        force: &[usize],
        out: &mut Vec<f32>,
        stats: &mut EncoderStats,
    ) -> TractResult<()> {
        let c = self.w.width;
        ensure!(
            blocks.start < blocks.end && blocks.end <= self.w.blocks.len(),
            "reuse encoder: blocks {blocks:?} of {}",
            self.w.blocks.len()
        );
        ensure!(
            x.len().is_multiple_of(c) && x.len() / c > self.prefix,
            "reuse encoder: {} values for width {c}",
            x.len()
        );
        let t = x.len() / c;
        if let Some(b) = bias {
            ensure!(b.len() == t, "reuse encoder: key bias has {} values for {t} tokens", b.len());
        }
        let refresh = gate.refresh || !self.ready(t) || blocks != self.blocks;
        self.blocks = blocks.clone();
        if refresh {
            for cache in &mut self.caches[blocks.clone()] {
                for buf in [&mut cache.reference, &mut cache.k, &mut cache.v, &mut cache.r1, &mut cache.r2] {
                    buf.clear();
                    buf.resize(t * c, 0.0);
                }
            }
        }
        let (row, key) = row_macs(c, self.w.mlp);
        stats.active.clear();
        stats.tokens = t;
        stats.macs = 0.0;
        stats.full_macs = blocks.len() as f64 * t as f64 * (row + key * t as f64);
        let mut x_cur = std::mem::take(&mut self.s.x);
        x_cur.clear();
        x_cur.extend_from_slice(x);
        stats.gate_time = std::time::Duration::ZERO;
        let gated = !refresh && gate.threshold > 0.0;
        for b in blocks.clone() {
            let g0 = std::time::Instant::now();
            let first = b == blocks.start;
            if first && gated {
                scores(&x_cur, &self.caches[b].reference, self.w.width, &mut self.s.scores);
            }
            let a = self.select(t, gate, refresh, if first { force } else { &[] });
            stats.gate_time += g0.elapsed();
            stats.active.push(a);
            if first {
                stats.first_rows.clear();
                stats.first_rows.extend_from_slice(&self.s.active);
            }
            stats.macs += a as f64 * (row + key * t as f64);
            self.block(b, &x_cur, t, a, bias)?;
            std::mem::swap(&mut x_cur, &mut self.s.next);
            // The next block's change scores now, while its input (just written) is in cache:
            // later it came from memory (0.5-0.9 ms a block at 448 px, Intel Xeon).
            if gated && b + 1 < blocks.end {
                let g1 = std::time::Instant::now();
                scores(&x_cur, &self.caches[b + 1].reference, self.w.width, &mut self.s.scores);
                stats.gate_time += g1.elapsed();
            }
        }
        out.clear();
        if blocks.end == self.w.blocks.len() {
            let (g, be, eps) = &self.w.final_norm;
            out.resize(t * c, 0.0);
            layernorm::layer_norm(&x_cur, g, be, c, *eps, out)?;
        } else {
            out.extend_from_slice(&x_cur[..t * c]);
        }
        self.s.x = x_cur;
        self.t = t;
        Ok(())
    }

    /// The active rows of block `b` into `s.active` (sorted; the rows in `force` always among
    /// them) from the block input's change scores in `s.scores` (computed by the caller unless
    /// every row runs); returns their count.
    fn select(&mut self, t: usize, gate: Gate, refresh: bool, force: &[usize]) -> usize {
        let s = &mut self.s;
        s.active.clear();
        if refresh || gate.threshold <= 0.0 {
            s.active.extend(0..t);
            return t;
        }
        let p = self.prefix;
        s.order.clear();
        s.order.extend((p..t).filter(|&i| s.scores[i] >= gate.threshold));
        let floor = gate.floor.saturating_sub(p).min(t - p);
        if s.order.len() < floor {
            s.order.clear();
            s.order.extend((p..t).filter(|&i| s.scores[i] > 0.0));
            if s.order.len() > floor {
                let sc = &s.scores;
                s.order.select_nth_unstable_by(floor - 1, |&i, &j| sc[j].total_cmp(&sc[i]));
                s.order.truncate(floor);
            }
        }
        let cap = gate.cap.saturating_sub(p).max(1);
        if s.order.len() > cap {
            let sc = &s.scores;
            s.order.select_nth_unstable_by(cap - 1, |&i, &j| sc[j].total_cmp(&sc[i]));
            s.order.truncate(cap);
        }
        s.order.extend(force.iter().copied().filter(|&i| i >= p && i < t));
        if s.order.is_empty() && (0..p).all(|i| s.scores[i] < gate.threshold) {
            return 0;
        }
        s.order.sort_unstable();
        s.order.dedup();
        s.active.extend(0..p);
        s.active.extend_from_slice(&s.order);
        s.active.len()
    }

    /// Block `b` on the `a` active rows of `x`; every row's output into `s.next`.
    fn block(&mut self, b: usize, x: &[f32], t: usize, a: usize, bias: Option<&[f32]>) -> TractResult<()> {
        let (c, f, h) = (self.w.width, self.w.mlp, self.w.heads);
        let w = &self.w.blocks[b];
        let cache = &mut self.caches[b];
        let s = &mut self.s;
        if a > 0 {
            let all = a == t;
            for buf in [&mut s.xa, &mut s.ln, &mut s.q, &mut s.k, &mut s.v, &mut s.att, &mut s.o, &mut s.y] {
                buf.resize(a * c, 0.0);
            }
            for (r, &i) in s.active.iter().enumerate() {
                s.xa[r * c..(r + 1) * c].copy_from_slice(&x[i * c..(i + 1) * c]);
            }
            let p = w.packed.as_deref();
            // Layer `i` of the block (q, k, v, projection, fc1, fc2) on `a` rows: f32, or bf16 / f16 when packed.
            // The attention's products in the weights' format (f32: this CPU's ISA level).
            let products = match p.map(|p| p[0].format) {
                None => Products::F32(crate::model::isa::level()),
                Some(bf16::Format::Bf16) => Products::Bf16(bf16::kernel_level()),
                Some(bf16::Format::F16) => Products::F16(crate::model::f16::kernel_level()),
            };
            let pf = w.packed_f32.as_deref();
            let lin = |i: usize, x: &[f32], wf: &[f32], b: &[f32], k: usize, n: usize, out: &mut [f32]| match (p, pf) {
                (Some(p), _) => bf16::linear_16(x, &p[i], Some(b), None, a, out),
                #[cfg(target_arch = "x86_64")]
                (None, Some(pf)) => linear::linear_packed(crate::model::isa::level(), x, &pf[i], Some(b), None, a, out),
                _ => linear::linear(x, wf, Some(b), a, k, n, out),
            };
            layernorm::layer_norm(&s.xa, &w.ln1.0, &w.ln1.1, c, w.ln1.2, &mut s.ln)?;
            lin(0, &s.ln, &w.wq, &w.bq, c, c, &mut s.q)?;
            if all {
                lin(1, &s.ln, &w.wk, &w.bk, c, c, &mut cache.k)?;
                lin(2, &s.ln, &w.wv, &w.bv, c, c, &mut cache.v)?;
                attend_rows_with(products, ROWS, &s.q, &cache.k, &cache.v, bias, t, t, h, c / h, &mut s.att)?;
            } else {
                lin(1, &s.ln, &w.wk, &w.bk, c, c, &mut s.k)?;
                lin(2, &s.ln, &w.wv, &w.bv, c, c, &mut s.v)?;
                for (r, &i) in s.active.iter().enumerate() {
                    cache.k[i * c..(i + 1) * c].copy_from_slice(&s.k[r * c..(r + 1) * c]);
                    cache.v[i * c..(i + 1) * c].copy_from_slice(&s.v[r * c..(r + 1) * c]);
                }
                attend_rows_with(products, ROWS, &s.q, &cache.k, &cache.v, bias, a, t, h, c / h, &mut s.att)?;
            }
            lin(3, &s.att, &w.wo, &w.bo, c, c, &mut s.o)?;
            scale_rows(&mut s.o, &w.ls1);
            for ((y, xa), o) in s.y.iter_mut().zip(&s.xa).zip(&s.o) {
                *y = xa + o;
            }
            layernorm::layer_norm(&s.y, &w.ln2.0, &w.ln2.1, c, w.ln2.2, &mut s.ln)?;
            s.h1.resize(a * f, 0.0);
            s.g.resize(a * f, 0.0);
            lin(4, &s.ln, &w.w1, &w.b1, c, f, &mut s.h1)?;
            gelu(&mut s.h1, &mut s.g, &*self.erf)?;
            lin(5, &s.h1, &w.w2, &w.b2, f, c, &mut s.q)?;
            scale_rows(&mut s.q, &w.ls2);
            for (r, &i) in s.active.iter().enumerate() {
                let (rs, cs) = (r * c..(r + 1) * c, i * c..(i + 1) * c);
                cache.reference[cs.clone()].copy_from_slice(&s.xa[rs.clone()]);
                cache.r1[cs.clone()].copy_from_slice(&s.o[rs.clone()]);
                cache.r2[cs].copy_from_slice(&s.q[rs]);
            }
        }
        s.next.resize(t * c, 0.0);
        for (((n, xv), r1), r2) in s.next.iter_mut().zip(&x[..t * c]).zip(&cache.r1).zip(&cache.r2) {
            *n = (xv + r1) + r2;
        }
        Ok(())
    }
}

/// `scores[i] = |x_i - r_i| / |r_i|` per row of `c` (the gates' change score; also the carried
/// clusters' per-patch change in `carry.rs`).
///
/// Rows in blocks of [`SCORE_ROWS`] on tract's threads, each row's squares summed in
/// [`SCORE_LANES`] running sums that the compiler keeps in vector registers (one running sum per
/// row is a chain of `c` dependent adds: 2.2x slower on a real block's rows in cache). Scored
/// after the block before, while its output is in cache (`run_blocks`): the decision 7.1-8.1 ->
/// 6.5-6.7 ms per frame at 448 px (Intel Xeon, 2 threads; 1.7% of a full frame), most of it
/// reading the references from memory.
pub(super) fn scores(x: &[f32], reference: &[f32], c: usize, out: &mut Vec<f32>) {
    let rows = (x.len() / c.max(1)).min(reference.len() / c.max(1));
    out.clear();
    out.resize(rows, 0.0);
    let dst = crate::model::attention::OutPtr(out.as_mut_ptr());
    let _ = crate::model::attention::par_for(rows.div_ceil(SCORE_ROWS), move |b| {
        let dst = dst;
        let r0 = b * SCORE_ROWS;
        let n = SCORE_ROWS.min(rows - r0);
        // SAFETY: rows r0..r0 + n of `out` (resized above) are this task's only.
        let o = unsafe { std::slice::from_raw_parts_mut(dst.0.add(r0), n) };
        score_rows(&x[r0 * c..(r0 + n) * c], &reference[r0 * c..(r0 + n) * c], c, o);
        Ok(())
    });
}

/// Rows per task in [`scores`].
const SCORE_ROWS: usize = 128;

/// Running sums per row in [`scores`].
const SCORE_LANES: usize = 16;

fn score_rows(x: &[f32], r: &[f32], c: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        /// SAFETY (of calling it): the CPU has AVX2 (checked above).
        #[target_feature(enable = "avx2")]
        unsafe fn avx2(x: &[f32], r: &[f32], c: usize, out: &mut [f32]) {
            score_rows_body(x, r, c, out)
        }
        // SAFETY: AVX2 is present.
        return unsafe { avx2(x, r, c, out) };
    }
    score_rows_body(x, r, c, out)
}

#[inline(always)]
fn score_rows_body(x: &[f32], r: &[f32], c: usize, out: &mut [f32]) {
    for ((xr, rr), o) in x.chunks_exact(c).zip(r.chunks_exact(c)).zip(out) {
        let (mut d2, mut r2) = ([0f32; SCORE_LANES], [0f32; SCORE_LANES]);
        let (xc, rc) = (xr.chunks_exact(SCORE_LANES), rr.chunks_exact(SCORE_LANES));
        let (xt, rt) = (xc.remainder(), rc.remainder());
        for (xs, rs) in xc.zip(rc) {
            for i in 0..SCORE_LANES {
                let d = xs[i] - rs[i];
                d2[i] += d * d;
                r2[i] += rs[i] * rs[i];
            }
        }
        for (i, (a, b)) in xt.iter().zip(rt).enumerate() {
            d2[i] += (a - b) * (a - b);
            r2[i] += b * b;
        }
        *o = (d2.iter().sum::<f32>() / r2.iter().sum::<f32>().max(1e-12)).sqrt();
    }
}

fn scale_rows(x: &mut [f32], s: &[f32]) {
    for row in x.chunks_exact_mut(s.len()) {
        row.iter_mut().zip(s).for_each(|(v, k)| *v *= k);
    }
}

/// Exact GELU, `x * 0.5 * (1 + erf(x / sqrt 2))`, in the export's op order, with tract's
/// vectorised erf kernel (the one the plans use).
fn gelu(x: &mut [f32], tmp: &mut [f32], erf: &dyn tract_linalg::element_wise::ElementWise<f32>) -> TractResult<()> {
    let tmp = &mut tmp[..x.len()];
    for (t, v) in tmp.iter_mut().zip(x.iter()) {
        *t = v / std::f32::consts::SQRT_2;
    }
    erf.run(tmp)?;
    for (v, e) in x.iter_mut().zip(tmp.iter()) {
        *v = (*v * (e + 1.0)) * 0.5;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::Manifest;

    /// `[model] precision = "bf16"`: the packed weights replace the f32 matrices, and every token
    /// recomputed (threshold 0) stays within bf16 rounding of the f32 executor, not equal to it
    /// (it did round). The bf16 kernel is this CPU's (the portable one without AVX512-BF16: the
    /// same sums).
    #[test]
    fn bf16_weights_stay_close_to_f32_and_drop_the_f32_matrices() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tiny_vit.toml");
        let m = Manifest::load(&path).unwrap();
        let f32w = EncoderWeights::from_manifest_f32(&m).unwrap();
        let mut b16 = f32w.clone();
        b16.pack_bf16();
        assert!(b16.blocks.iter().all(|b| b.packed.is_some() && b.wq.is_empty() && b.w1.is_empty() && b.w2.is_empty()));
        let (c, prefix) = (f32w.width, m.tokens.prefix);
        let t = prefix + 16;
        let x: Vec<f32> = (0..t * c).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.8).collect();
        let gate = Gate { threshold: 0.0, cap: t, floor: 0, refresh: true };
        let mut outs = Vec::new();
        for w in [f32w, b16] {
            let mut enc = ReuseEncoder::new(Arc::new(w), prefix).unwrap();
            let mut out = Vec::new();
            enc.run(&x, gate, &mut out, &mut EncoderStats::default()).unwrap();
            outs.push(out);
        }
        let scale = outs[0].iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = outs[0].iter().zip(&outs[1]).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(d < 0.05 && d > 1e-6, "bf16 vs f32 reuse encoder: relative max diff {d}");
    }
}
