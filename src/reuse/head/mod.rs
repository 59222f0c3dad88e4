//! The head on the reuse path, recomputing only the output regions whose tokens changed
//! (issue #19).
//!
//! The saliency head (MODEL-NOTES.md) is: patch tokens -> grid `[C, h, w]` -> per up-layer
//! `ConvTranspose` 4x4/2 pad 1 (+ BatchNorm) (+ ReLU) -> 1x1 conv -> linear Resize (half-pixel) to
//! the input size -> sigmoid. On a static camera few tokens change per frame, and a token only
//! reaches a small part of the output: through one up-layer, input pixel `y` reaches output rows
//! `2y - 1 ..= 2y + 2` (the same along x), so one token at 448 px (32 x 32 grid) reaches about 18 x
//! 18 of the 256 x 256 logits. So [`HeadExec`] keeps every layer's input map per lane (and per
//! stream: [`HeadCache`] is parked with the stream's other caches), and per frame:
//!
//! 1. writes the tokens into the grid map, marking the tokens whose value changed (exact f32
//!    comparison with the cached grid: exact, and cheap next to the head);
//! 2. per up-layer: the input is split into `TILE x TILE` tiles; a tile is recomputed when a
//!    changed input pixel lies in it or its 1-pixel halo (exactly the tiles with a changed output
//!    pixel); each run of such tiles along a tile row is cropped with a 1-pixel halo of real
//!    neighbours (zeros outside the image, as the deconvolution's padding), run through the
//!    sub-pixel deconvolution (`model::deconv`, f32 or bf16 as `[model] precision`), and its
//!    interior written into the next map (ReLU applied); the changed pixels of the output are
//!    the input's, dilated by the receptive field above. Above `full_above` of the tiles, the
//!    layer runs on the whole map instead (one call, no halos);
//! 3. the last up-layer's recomputed pixels go straight through the 1x1 conv into the cached
//!    logits, and the output pixels whose 2 x 2 interpolation taps touch a changed logit are
//!    resized and passed through the sigmoid, in place in the stream's previous output.
//!
//! A cache, not an approximation: every recomputed pixel sees exactly the inputs the full head
//! would, so the partial head equals the full one up to the products' summation order. BatchNorm
//! (inference) is folded into the deconvolution's kernel and bias at load time. A full run on a
//! reset, a refresh, or a new input size.
//!
//! Must not: decide when a frame refreshes (`mod.rs`) or read frames.

mod weights;

use std::sync::Arc;

use tract_core::internal::*;

use crate::engine::EngineError;
use crate::model::bf16::Half;
use crate::model::deconv::{deconv_bf16, deconv_fused};
use crate::model::f32s;
use crate::model::isa::level;
use tract_onnx::prelude::{tvec, Tensor};
pub use weights::HeadWeights;
use weights::UpLayer;

/// Input pixels per tile side (every layer), the default of [`HeadExec::tile`].
pub const TILE: usize = 8;

/// One stream's cached head state: every up-layer's input map, the logits, the size they belong
/// to (0: empty). The output itself is the lane's (the stream's previous output, updated in place).
#[derive(Default)]
pub struct HeadCache {
    size: u32,
    grid: (usize, usize),
    /// `maps[l]`: layer `l`'s input `[ci, h << l, w << l]` (`maps[0]`: the token grid).
    maps: Vec<Vec<f32>>,
    /// `[k, h << L, w << L]`.
    logits: Vec<f32>,
}

impl HeadCache {
    /// Forget the cached maps: the next run is a full one (buffers kept).
    pub fn clear(&mut self) {
        self.size = 0;
    }

    pub fn bytes(&self) -> usize {
        (self.maps.iter().map(|m| m.capacity()).sum::<usize>() + self.logits.capacity()) * std::mem::size_of::<f32>()
    }
}

/// What one head run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeadStats {
    /// Every layer ran on the whole map (reset, refresh, new size).
    pub full: bool,
    /// Patch tokens whose value changed since the cached grid (all of them on a full run).
    pub changed_tokens: usize,
    /// Up-layer multiply-adds computed (halos included) over a full run's.
    pub macs_fraction: f64,
    /// Output pixels recomputed (resize + sigmoid) over all.
    pub out_fraction: f64,
}

impl HeadStats {
    /// Something was recomputed.
    pub fn ran(&self) -> bool {
        self.full || self.changed_tokens > 0
    }
}

/// A lane's head executor: the shared weights and the scratch (see the module doc).
pub struct HeadExec {
    w: Arc<HeadWeights>,
    /// Changed pixels per map, the last one the logits' (`[h << l, w << l]`).
    dirty: Vec<Vec<bool>>,
    tiles: Vec<bool>,
    /// Runs of tiles to recompute: input rows [ya, yb), columns [xa, xb).
    runs: Vec<(usize, usize, usize, usize)>,
    crop: Vec<f32>,
    crop_out: Vec<f32>,
    /// The resize plan for (logits `lh x lw`, output side): per axis (i0, i1, w0, w1).
    axis: ((usize, usize), usize, Vec<Taps2>, Vec<Taps2>),
    /// Logit rows with a changed pixel.
    rows: Vec<bool>,
    /// A layer runs on the whole map when the tiles to recompute, with their halos, cover
    /// more than this fraction of it.
    pub full_above: f32,
    /// Input pixels per tile side.
    pub tile: usize,
    /// A token is recomputed when it moved by at least this relative L2 change since the cached
    /// grid took it (`[reuse] head_threshold`); below, the head keeps using the cached value. 0:
    /// every change (the head then equals the full head on the current tokens).
    pub gate: f32,
}

impl HeadExec {
    pub fn new(w: Arc<HeadWeights>) -> HeadExec {
        HeadExec {
            w,
            dirty: Vec::new(),
            tiles: Vec::new(),
            runs: Vec::new(),
            crop: Vec::new(),
            crop_out: Vec::new(),
            axis: ((0, 0), 0, Vec::new(), Vec::new()),
            rows: Vec::new(),
            full_above: 0.75,
            tile: TILE,
            gate: 0.0,
        }
    }

    pub fn weights(&self) -> &Arc<HeadWeights> {
        &self.w
    }

    /// The head on `tokens` (`[prefix + h * w, C]`, grid `(h, w)`) at input size `size` into
    /// `out` (`[k, size, size]`): only the regions whose tokens changed since `cache` was
    /// written, or all of it with `full` (also when `cache` or `out` do not fit).
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &mut self,
        cache: &mut HeadCache,
        tokens: &[f32],
        prefix: usize,
        grid: (usize, usize),
        size: u32,
        full: bool,
        out: &mut Vec<f32>,
    ) -> TractResult<HeadStats> {
        let w = self.w.clone();
        let (c, (h, wd), nl, k, s) = (w.width, grid, w.layers.len(), w.classes(), size as usize);
        ensure!(tokens.len() == (prefix + h * wd) * c, "head: {} token values for {h}x{wd} + {prefix}", tokens.len());
        let full = full || cache.size != size || cache.grid != grid || out.len() != k * s * s;
        if full {
            cache.size = 0;
            cache.grid = grid;
            cache.maps.resize_with(nl, Vec::new);
            for (l, m) in cache.maps.iter_mut().enumerate() {
                m.resize(w.layers[l].ci * (h << l) * (wd << l), 0.0);
            }
            cache.logits.resize(k * (h << nl) * (wd << nl), 0.0);
            out.resize(k * s * s, 0.0);
        }
        self.dirty.resize_with(nl + 1, Vec::new);
        for (l, d) in self.dirty.iter_mut().enumerate() {
            d.clear();
            d.resize((h << l) * (wd << l), full);
        }
        // 1. The token grid, and which tokens changed.
        let (hw, g0) = (h * wd, &mut cache.maps[0]);
        let mut changed = 0;
        let gate2 = (self.gate as f64).powi(2);
        for p in 0..hw {
            let t = &tokens[(prefix + p) * c..][..c];
            let diff = full || {
                let (mut d2, mut r2, mut any) = (0f64, 0f64, false);
                for (ch, v) in t.iter().enumerate() {
                    let r = g0[ch * hw + p];
                    any |= r != *v;
                    d2 += ((v - r) as f64).powi(2);
                    r2 += (r as f64).powi(2);
                }
                any && (self.gate <= 0.0 || d2 >= gate2 * r2)
            };
            if diff {
                for (ch, v) in t.iter().enumerate() {
                    g0[ch * hw + p] = *v;
                }
            }
            self.dirty[0][p] = diff;
            changed += diff as usize;
        }
        let mut st = HeadStats { full, changed_tokens: changed, ..HeadStats::default() };
        if changed == 0 {
            cache.size = size;
            return Ok(st);
        }
        // 2. The up-layers; 3. the last one's pixels through the 1x1 conv into the logits.
        let (mut macs, mut all) = (0.0, 0.0);
        for l in 0..nl {
            let (hl, wl) = (h << l, wd << l);
            all += w.layer_macs(l, h, wd);
            macs += self.layer(cache, l, hl, wl, full)? * w.layer_macs(l, h, wd);
        }
        st.macs_fraction = macs / all.max(1.0);
        st.out_fraction = self.resize(&cache.logits, (h << nl, wd << nl), s, out, full);
        cache.size = size;
        Ok(st)
    }

    /// Up-layer `l` on an `hl x wl` input: the tiles that changed (or all); returns the fraction
    /// of the full layer's work done.
    fn layer(&mut self, cache: &mut HeadCache, l: usize, hl: usize, wl: usize, full: bool) -> TractResult<f64> {
        let tile = self.tile.max(1);
        let (th, tw) = (hl.div_ceil(tile), wl.div_ceil(tile));
        self.tiles.clear();
        self.tiles.resize(th * tw, full);
        let (din, dout) = self.dirty.split_at_mut(l + 1);
        let (din, dout) = (&din[l], &mut dout[0]);
        let (oh, ow) = (2 * hl, 2 * wl);
        if !full {
            for y in 0..hl {
                for x in (0..wl).filter(|&x| din[y * wl + x]) {
                    for ty in (y.saturating_sub(1)..=(y + 1).min(hl - 1)).map(|v| v / tile) {
                        for tx in (x.saturating_sub(1)..=(x + 1).min(wl - 1)).map(|v| v / tile) {
                            self.tiles[ty * tw + tx] = true;
                        }
                    }
                    // Input pixel (y, x) reaches output rows 2y-1..=2y+2, columns likewise.
                    for oy in (2 * y).saturating_sub(1)..(2 * y + 3).min(oh) {
                        dout[oy * ow..][(2 * x).saturating_sub(1)..(2 * x + 3).min(ow)].fill(true);
                    }
                }
            }
        }
        // The runs of tiles along each tile row, and the work with their halos.
        self.runs.clear();
        let mut work = 0usize;
        for ty in (0..th).filter(|_| !full) {
            let mut tx = 0;
            while tx < tw {
                if !self.tiles[ty * tw + tx] {
                    tx += 1;
                    continue;
                }
                let tx0 = tx;
                while tx < tw && self.tiles[ty * tw + tx] {
                    tx += 1;
                }
                let (ya, yb, xa, xb) = (ty * tile, ((ty + 1) * tile).min(hl), tx0 * tile, (tx * tile).min(wl));
                work += ((yb + 1).min(hl) - ya.saturating_sub(1)) * ((xb + 1).min(wl) - xa.saturating_sub(1));
                self.runs.push((ya, yb, xa, xb));
            }
        }
        let whole = full || work as f64 > self.full_above as f64 * (hl * wl) as f64;
        let (maps, logits) = (&mut cache.maps, &mut cache.logits);
        let (lo, hi) = maps.split_at_mut(l + 1);
        let x = &lo[l];
        let ly = &self.w.layers[l];
        let mut dst = match hi.first_mut() {
            Some(m) => Dst::Map(m, ly.relu),
            None => Dst::Logits(logits, &self.w.final_w, &self.w.final_b, ly.relu),
        };
        if whole {
            if let Dst::Map(m, relu) = &mut dst {
                up(ly, x, hl, wl, m)?;
                if *relu {
                    m.iter_mut().for_each(|v| *v = v.max(0.0));
                }
            } else {
                self.crop_out.resize(ly.co * oh * ow, 0.0);
                up(ly, x, hl, wl, &mut self.crop_out)?;
                dst.write(&self.crop_out, ly.co, (oh, ow), (0, 0), (0..oh, 0..ow), ow);
            }
            return Ok(1.0);
        }
        for &(ya, yb, xa, xb) in &self.runs {
            // Inputs [ya, yb) x [xa, xb), cropped with the halo.
            let (y0, y1, x0, x1) = (ya.saturating_sub(1), (yb + 1).min(hl), xa.saturating_sub(1), (xb + 1).min(wl));
            let (ch, cw) = (y1 - y0, x1 - x0);
            self.crop.resize(ly.ci * ch * cw, 0.0);
            for c in 0..ly.ci {
                for y in 0..ch {
                    self.crop[(c * ch + y) * cw..][..cw].copy_from_slice(&x[(c * hl + y0 + y) * wl + x0..][..cw]);
                }
            }
            self.crop_out.resize(ly.co * 4 * ch * cw, 0.0);
            up(ly, &self.crop, ch, cw, &mut self.crop_out)?;
            let (sy, sx) = (2 * (ya - y0), 2 * (xa - x0));
            dst.write(&self.crop_out, ly.co, (2 * ch, 2 * cw), (sy, sx), (2 * ya..2 * yb, 2 * xa..2 * xb), ow);
        }
        Ok(work as f64 / (hl * wl) as f64)
    }

    /// Resize the logits (`lh x lw`) to `s x s` and apply the sigmoid where a tap changed (or
    /// everywhere with `full`); returns the fraction of output pixels written.
    fn resize(&mut self, logits: &[f32], (lh, lw): (usize, usize), s: usize, out: &mut [f32], full: bool) -> f64 {
        if (self.axis.0, self.axis.1) != ((lh, lw), s) {
            self.axis = ((lh, lw), s, axis_plan(lh, s), axis_plan(lw, s));
        }
        let (ay, ax) = (&self.axis.2, &self.axis.3);
        let d = &self.dirty[self.w.layers.len()];
        self.rows.clear();
        self.rows.extend((0..lh).map(|y| full || d[y * lw..][..lw].iter().any(|&b| b)));
        let row_dirty = &self.rows;
        let (k, plane, sig) = (self.w.classes(), lh * lw, self.w.sigmoid);
        let mut written = 0usize;
        for (oy, &(y0, y1, wy0, wy1)) in ay.iter().enumerate() {
            if !row_dirty[y0] && !row_dirty[y1] {
                continue;
            }
            for (ox, &(x0, x1, wx0, wx1)) in ax.iter().enumerate() {
                if !(full || d[y0 * lw + x0] || d[y0 * lw + x1] || d[y1 * lw + x0] || d[y1 * lw + x1]) {
                    continue;
                }
                written += 1;
                for kk in 0..k {
                    let g = &logits[kk * plane..];
                    let v = wy0 * (wx0 * g[y0 * lw + x0] + wx1 * g[y0 * lw + x1])
                        + wy1 * (wx0 * g[y1 * lw + x0] + wx1 * g[y1 * lw + x1]);
                    out[(kk * s + oy) * s + ox] = if sig { 1.0 / (1.0 + (-v).exp()) } else { v };
                }
            }
        }
        written as f64 / (s * s) as f64
    }
}

/// Two interpolation taps: (i0, i1, w0, w1).
type Taps2 = (usize, usize, f32, f32);

/// Linear half-pixel taps of each output index (as tract's `Resize`).
fn axis_plan(len_in: usize, len_out: usize) -> Vec<Taps2> {
    let scale = len_out as f32 / len_in as f32;
    (0..len_out)
        .map(|o| {
            let x = (o as f32 + 0.5) / scale - 0.5;
            let cell = x.ceil() - 1.0;
            let r = x - cell;
            let idx = |v: f32| (v as isize).clamp(0, len_in as isize - 1) as usize;
            (idx(cell), idx(cell + 1.0), (1.0 - r).clamp(0.0, 1.0), r.clamp(0.0, 1.0))
        })
        .collect()
}

/// One up-layer on `[ci, h, w]` into `out` (`[co, 2h, 2w]`), bias included, no ReLU.
fn up(ly: &UpLayer, x: &[f32], h: usize, w: usize, out: &mut [f32]) -> TractResult<()> {
    match &ly.taps {
        Some(t) => deconv_bf16(Half::best(t.0[0].format), x, t, &ly.bias, ly.ci, h, w, ly.co, None, out),
        None => {
            let taps = ly.f32_taps.as_ref().map(|t| &*t.0);
            deconv_fused(level(), x, &ly.kernel, taps, &ly.bias, ly.ci, h, w, ly.co, None, out)
        }
    }
}

/// Where an up-layer's recomputed pixels go.
enum Dst<'a> {
    /// The next layer's input map (ReLU or not).
    Map(&'a mut Vec<f32>, bool),
    /// Through the 1x1 conv into the logits (ReLU before it or not).
    Logits(&'a mut Vec<f32>, &'a [f32], &'a [f32], bool),
}

impl Dst<'_> {
    /// Write `src` (`[co, sh, sw]`) from (sy, sx) on into the destination rectangle `rows x
    /// cols` of a map `ow` wide.
    fn write(
        &mut self,
        src: &[f32],
        co: usize,
        (sh, sw): (usize, usize),
        (sy, sx): (usize, usize),
        (rows, cols): (std::ops::Range<usize>, std::ops::Range<usize>),
        ow: usize,
    ) {
        let n = cols.len();
        let oh_map = match self {
            Dst::Map(m, _) => m.len() / co / ow,
            Dst::Logits(g, _, b, _) => g.len() / b.len() / ow,
        };
        for (i, oy) in rows.clone().enumerate() {
            let s_row = |c: usize| &src[(c * sh + sy + i) * sw + sx..][..n];
            match self {
                Dst::Map(m, relu) => {
                    for c in 0..co {
                        let d = &mut m[(c * oh_map + oy) * ow + cols.start..][..n];
                        if *relu {
                            d.iter_mut().zip(s_row(c)).for_each(|(d, v)| *d = v.max(0.0));
                        } else {
                            d.copy_from_slice(s_row(c));
                        }
                    }
                }
                Dst::Logits(g, fw, fb, relu) => {
                    for (kk, &b) in fb.iter().enumerate() {
                        let d = &mut g[(kk * oh_map + oy) * ow + cols.start..][..n];
                        d.fill(b);
                        for c in 0..co {
                            let wv = fw[kk * co + c];
                            if *relu {
                                d.iter_mut().zip(s_row(c)).for_each(|(d, v)| *d += wv * v.max(0.0));
                            } else {
                                d.iter_mut().zip(s_row(c)).for_each(|(d, v)| *d += wv * v);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The own head from the lane's side: what tests compare it with.
impl super::ReuseModel {
    /// The own head executor's weights (None: the tract head plan runs).
    pub fn head_weights(&self) -> Option<&Arc<HeadWeights>> {
        self.head.as_ref()
    }

    /// The segmenter's tract head plan on `tokens` (`[1 + h * w, C]`) at `size`: the reference
    /// the own head is tested against.
    pub fn tract_head(&self, size: u32, tokens: &[f32]) -> Result<Vec<f32>, EngineError> {
        let err = |source| EngineError::Infer { input_size: size, m: 0, source };
        let (_, p) = self.seg.plans(size).ok_or(EngineError::NoPlan(size))?;
        let c = self.weights.width;
        let x = Tensor::from_shape(&[1, tokens.len() / c, c], tokens).map_err(err)?;
        let y = p.head.spawn().map_err(err)?.run(tvec!(x.into())).map_err(err)?;
        Ok(f32s(&y[0]).map_err(err)?.to_vec())
    }

    /// The token grid (h, w) at `size`.
    pub fn grid(&self, size: u32) -> Option<(usize, usize)> {
        self.seg.plans(size).map(|(_, p)| p.grid)
    }
}

impl super::ReuseLane {
    /// Run the head as the segmenter's tract plan (`false`) or the own executor (`true`, the
    /// default where the model's head parsed); the head's caches start afresh.
    pub fn set_own_head(&mut self, on: bool) {
        if on && self.head.is_none() {
            self.head = self.model.head.clone().map(HeadExec::new);
        } else if !on {
            self.head = None;
        }
        self.head_cache.clear();
        self.head_out.clear();
    }
}
