//! Temporal reuse across video frames (issue #19): compute only the tokens that changed.
//!
//! A fixed camera sees mostly the same patches frame after frame. [`ReuseLane`] runs the model as
//! embedding (a tract plan: patch embed + position) -> [`encoder::ReuseEncoder`] (every block,
//! Eventful-Transformer token gates: active rows only, cached keys/values/branches for the rest)
//! -> head ([`head::HeadExec`], own executor: recomputes only the output regions whose tokens
//! changed, through each up-layer's receptive field, into the stream's cached maps and output;
//! nothing when no token changed; in full on a refresh. The segmenter's tract head plan instead
//! where the model's head is not the conv decoder it knows, and on the reduced path below).
//!
//! With reduction (a frame's `Setting::m` below the patch count): the encoder runs blocks
//! 0..`[reduce] cut`-1 only, with reuse, and then
//! - with `carry_clusters` ([`carry`]): the partition is carried from the previous frame, the
//!   changed tokens re-assigned to the nearest carried centre, and the middle runs on the M
//!   merged tokens through the same Eventful executor (only the clusters that changed), unfold,
//!   the own head on the unfolded tokens (skipped when no middle row ran; else only the regions
//!   of the tokens whose unfolded value changed); a full re-cluster on every refresh below and
//!   when more than `recluster_above` of the patch tokens changed;
//! - else its output goes through the per-frame reduced path's own states
//!   ([`LaneState::run_after_stem`]: the reducer clusters all patch tokens afresh, the middle runs
//!   in full on M merged tokens, unfold, head); reducer, middle and head are skipped only when no
//!   stem token changed (M unchanged).
//!
//! Refresh rules (a full recompute that also resets every cache reference), checked per frame
//! before the encoder runs, from block 0's gate scores:
//! - `refresh_every` frames since the last refresh;
//! - a scene cut: the mean relative embedding change is at or above `scene_cut`;
//! - too much changed for reuse to pay: the active fraction at block 0 is above `refresh_above`;
//! - a reset: the first frame, a new input size, or [`ReuseLane::reset`] (the pipeline's hook for
//!   a source reconnect).
//!
//! Several streams on one lane: each keeps its own caches, carried clusters included (`streams.rs`,
//! at most `max_streams` per lane), swapped in when its frames arrive ([`ReuseLane::switch_stream`]).
//!
//! Must not: pre/postprocess frames, or build the segmenter's plans (it shares them).

pub mod carry;
pub mod encoder;
pub mod head;
pub mod streams;
pub mod weights;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tract_onnx::prelude::*;

use crate::engine::{Engine, EngineError, Setting, SizeInfo, StageTimes};
use crate::model::device::{Part, Plan};
use crate::model::lane::LaneState;
use crate::model::{cut, f32s, ModelError, Segmenter};
use crate::problems::Problems;
use carry::{CarryFrame, CarryMiddle, CarryStats};
use encoder::{EncoderStats, Gate, ReuseEncoder};
use head::{HeadCache, HeadExec, HeadStats, HeadWeights};
use weights::EncoderWeights;

/// `[reuse] head_threshold`'s default (see docs/reuse.md run 9).
const HEAD_THRESHOLD: f32 = 0.1;

/// `[reuse]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReuseConfig {
    /// Reuse what did not change between consecutive frames of a stream.
    pub enabled: bool,
    /// A token is recomputed in a block when its input there moved by at least this relative L2
    /// change since it was last computed (0: every token, i.e. per-frame computation).
    pub threshold: f32,
    /// At most this fraction of the tokens is recomputed per block (the highest changes first).
    pub max_active: f32,
    /// At least this fraction of the tokens is recomputed per block (the highest changes first,
    /// if they changed at all): slow drift below the threshold is worked off over the frames.
    pub min_active: f32,
    /// A full recompute at least every this many frames (0: never on a schedule).
    pub refresh_every: u32,
    /// Adaptive schedule: after each scheduled refresh, the fresh mask is compared with the
    /// reused mask of the frame before; below this agreement (mask IoU, or the share of equal
    /// class ids) the period halves (down to 2 frames), at or above it doubles (up to
    /// `refresh_every`). The period starts at 4. 0 turns it off (a fixed `refresh_every`).
    pub refresh_iou: f32,
    /// A full recompute when more than this fraction of the patches changed at block 0.
    pub refresh_above: f32,
    /// A full recompute (scene cut) when the mean relative embedding change reaches this.
    pub scene_cut: f32,
    /// Streams whose caches a lane keeps (the least recently used dropped beyond it); below 2:
    /// one cache per lane, computed afresh at every switch of stream.
    pub max_streams: u32,
    /// With reduction: carry the clusters across frames and reuse the merged tokens' middle
    /// rows (module doc), instead of clustering afresh and running the middle in full.
    pub carry_clusters: bool,
    /// With `carry_clusters`: a full re-cluster when more than this fraction of the patch tokens
    /// changed (at the threshold) at the cut. 0.8: at 0.5, carphone at t=0.2 (448 px, 40 frames)
    /// re-clustered on 9 frames instead of the 4 scheduled refreshes, each a full middle, for
    /// +0.002 mean IoU (0.986 vs 0.984; measured with an earlier forcing rule; EPYC Zen 4).
    pub recluster_above: f32,
    /// The head (`head/`) recomputes the output regions of the tokens whose final value moved by
    /// at least this relative L2 change since the head last took them (the others keep their
    /// cached value, as the blocks' gates do); never above `threshold` (so threshold 0 stays
    /// per-frame computation). 0: every changed token (exact).
    pub head_threshold: f32,
}

impl Default for ReuseConfig {
    fn default() -> Self {
        ReuseConfig {
            enabled: false,
            threshold: 0.1,
            max_active: 1.0,
            min_active: 0.0,
            refresh_every: 30,
            refresh_iou: 0.9,
            refresh_above: 0.5,
            scene_cut: 0.5,
            max_streams: 4,
            carry_clusters: true,
            recluster_above: 0.8,
            head_threshold: HEAD_THRESHOLD,
        }
    }
}

impl ReuseConfig {
    pub fn validate(&self, p: &mut Problems) {
        let unit = |v: f32| (0.0..=1.0).contains(&v);
        p.check(self.threshold >= 0.0 && self.threshold.is_finite(), "reuse", "threshold", || {
            format!("{} is not a change >= 0", self.threshold)
        });
        p.check(unit(self.max_active) && self.max_active > 0.0, "reuse", "max_active", || {
            format!("{} is not in (0, 1]", self.max_active)
        });
        p.check(unit(self.min_active) && self.min_active <= self.max_active, "reuse", "min_active", || {
            format!("{} is not in 0..=max_active", self.min_active)
        });
        p.check(unit(self.refresh_iou), "reuse", "refresh_iou", || format!("{} is not in 0..=1", self.refresh_iou));
        p.check(unit(self.refresh_above), "reuse", "refresh_above", || {
            format!("{} is not in 0..=1", self.refresh_above)
        });
        p.check(self.scene_cut > 0.0 && self.scene_cut.is_finite(), "reuse", "scene_cut", || {
            format!("{} is not a change > 0", self.scene_cut)
        });
        p.check(self.max_streams <= 64, "reuse", "max_streams", || {
            format!("{} is above 64 (about 110 MB each at 448 px)", self.max_streams)
        });
        p.check(unit(self.recluster_above), "reuse", "recluster_above", || {
            format!("{} is not in 0..=1", self.recluster_above)
        });
        p.check(self.head_threshold >= 0.0 && self.head_threshold.is_finite(), "reuse", "head_threshold", || {
            format!("{} is not a change >= 0", self.head_threshold)
        });
    }
}

/// Why a frame was computed in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// Empty caches: the first frame, a new input size, or a reset (reconnect).
    Reset,
    Periodic,
    SceneCut,
    TooActive,
}

/// What one frame did.
#[derive(Debug, Clone, Default)]
pub struct FrameReport {
    pub refresh: Option<Refresh>,
    pub encoder: EncoderStats,
    /// The head ran (else its cached output was reused: no token changed).
    pub head_ran: bool,
    /// The own head's run (`head.rs`; default when the tract head plan ran or nothing did).
    pub head: HeadStats,
    /// On a scheduled refresh: agreement of the fresh mask with the previous (reused) one.
    pub agreement: Option<f32>,
    /// Time of the per-frame decision: block 0's scores and the refresh rules, plus every
    /// block's gate (`encoder.gate_time`).
    pub decision: Duration,
    /// With reduction: the merged tokens the middle ran on this frame (None: unreduced, or the
    /// middle was skipped because no stem token changed).
    pub m: Option<usize>,
    /// (token, block) pairs computed over all of them, the reduced middle's M rows included.
    pub active_fraction: f64,
    /// With reduction and `carry_clusters`: the cluster step and the middle (else default).
    pub carry: CarryStats,
}

/// What every lane shares: the segmenter (head plans), the encoder weights and the embedding
/// plans, one per input size.
pub struct ReuseModel {
    seg: Arc<Segmenter>,
    weights: Arc<EncoderWeights>,
    /// The head's weights for the own head executor (None: a head it cannot run, the tract
    /// head plan runs instead).
    head: Option<Arc<HeadWeights>>,
    embed: Vec<(u32, Plan)>,
}

impl ReuseModel {
    /// Read the weights and build the embedding plans for every size `seg` has.
    pub fn new(seg: Arc<Segmenter>) -> Result<ReuseModel, ModelError> {
        let m = seg.manifest();
        let proto = weights::load_proto(m)?;
        let weights = Arc::new(EncoderWeights::from_manifest_proto(m, &proto)?);
        let onnx = m.onnx_path();
        let shown = onnx.display().to_string();
        let head = match HeadWeights::from_proto(&proto, weights.width) {
            Ok(h) => Some(Arc::new(h)),
            Err(e) => {
                log::warn!("[reuse] {shown}: the head runs as the tract plan, on every changed frame in full ({e})");
                None
            }
        };
        drop(proto);
        let base = cut::load_base_with(&onnx, m.load_delta()?.as_ref())?;
        let mut embed = Vec::new();
        for info in seg.sizes() {
            let s = info.input_size as usize;
            let plan = (|| -> TractResult<Plan> {
                let g = base
                    .clone()
                    .with_input_fact(0, f32::fact([1, 3, s, s]).into())?
                    .with_outputs_by_name([weights.embedding.as_str()])?;
                let g = cut::optimize(g.into_typed()?.into_decluttered()?)?;
                Ok(Plan::Plain(g.into_runnable()?))
            })()
            .map_err(|source| ModelError::Build { path: shown.clone(), source })?;
            embed.push((info.input_size, plan));
        }
        Ok(ReuseModel { seg, weights, head, embed })
    }

    pub fn segmenter(&self) -> &Arc<Segmenter> {
        &self.seg
    }

    /// A lane: its own states, caches and scratch.
    pub fn lane(self: &Arc<Self>, cfg: ReuseConfig) -> Result<ReuseLane, ModelError> {
        let shown = self.seg.manifest().onnx_path().display().to_string();
        let build = |source: anyhow::Error| ModelError::Build { path: shown.clone(), source };
        let mut sizes = Vec::new();
        for (s, plan) in &self.embed {
            let (_, p) = self.seg.plans(*s).expect("embedding plans follow the segmenter's sizes");
            sizes.push((*s, plan.spawn().map_err(build)?, p.head.spawn().map_err(build)?));
        }
        let prefix = self.seg.manifest().tokens.prefix;
        let enc = ReuseEncoder::new(self.weights.clone(), prefix).map_err(build)?;
        let middle = ReuseEncoder::new(self.weights.clone(), prefix).map_err(build)?;
        let carry = CarryMiddle::new(middle, &self.seg.reduce)
            .map_err(|source| ModelError::Reducer { path: shown.clone(), source })?;
        Ok(ReuseLane {
            model: self.clone(),
            cfg,
            sizes,
            enc,
            last_size: 0,
            since_refresh: 0,
            period: 0,
            threshold_out: self.seg.manifest().output.threshold,
            tokens: Vec::new(),
            head_out: Vec::new(),
            fresh: Vec::new(),
            reduced: LaneState::spawn(&self.seg)?,
            carry,
            key_bias: self.seg.reduce.proportional_attention,
            carried: false,
            last_m: usize::MAX,
            last: FrameReport::default(),
            parked: streams::Parked::default(),
            head: self.head.clone().map(HeadExec::new),
            head_cache: HeadCache::default(),
        })
    }
}

/// One lane of the reuse path (owned by its thread; see the module doc).
pub struct ReuseLane {
    model: Arc<ReuseModel>,
    cfg: ReuseConfig,
    /// (input size, embedding state, head state).
    sizes: Vec<(u32, Part, Part)>,
    enc: ReuseEncoder,
    last_size: u32,
    since_refresh: u32,
    /// The current scheduled-refresh period (adaptive, see `refresh_iou`; 0: not started).
    period: u32,
    /// The saliency threshold of the model's output (for the agreement check).
    threshold_out: f32,
    tokens: Vec<f32>,
    head_out: Vec<f32>,
    fresh: Vec<f32>,
    /// The per-frame reduced path's states (reducer, middle, head) for reuse + reduction.
    reduced: LaneState,
    /// Carried clusters and the middle with reuse (reuse + reduction with `carry_clusters`).
    carry: CarryMiddle,
    /// `[reduce] proportional_attention` for the carried middle.
    key_bias: bool,
    /// The last frame ran the carried middle (for `Engine::partition`).
    carried: bool,
    /// The M the last frame asked for (usize::MAX: unreduced); another M recomputes the middle.
    last_m: usize,
    /// The last frame's report (for the bench and metrics).
    last: FrameReport,
    /// Other streams' caches (`streams.rs`).
    parked: streams::Parked,
    /// The own head executor (`head.rs`) and the current stream's head cache.
    head: Option<HeadExec>,
    head_cache: HeadCache,
}

impl ReuseLane {
    /// Drop every cache: the next frame is computed in full. The pipeline calls it when a
    /// stream's source reconnects (or anything else breaks the frame sequence).
    pub fn reset(&mut self) {
        self.enc.reset();
        self.carry.reset();
        self.head_out.clear();
        self.head_cache.clear();
        self.period = 0;
    }

    /// The current scheduled-refresh period in frames.
    pub fn refresh_period(&self) -> u32 {
        self.period
    }

    /// The period after a reset: 4 with the adaptive schedule, else `refresh_every`.
    fn start_period(&self) -> u32 {
        if self.cfg.refresh_iou > 0.0 {
            self.cfg.refresh_every.min(4)
        } else {
            self.cfg.refresh_every
        }
    }

    /// New knobs from the next frame on (the caches stay valid).
    pub fn set_config(&mut self, cfg: ReuseConfig) {
        if cfg.carry_clusters != self.cfg.carry_clusters {
            // The other reduced path: its caches are stale (or empty).
            self.reset();
        }
        self.cfg = cfg;
    }

    pub fn config(&self) -> &ReuseConfig {
        &self.cfg
    }

    pub fn model(&self) -> &Arc<ReuseModel> {
        &self.model
    }

    /// What the last frame did.
    pub fn last_report(&self) -> &FrameReport {
        &self.last
    }

    /// One frame, unreduced: model input (`[1,3,s,s]` normalised) -> raw output into `out`.
    pub fn infer(
        &mut self,
        input: &[f32],
        size: u32,
        times: &mut StageTimes,
        out: &mut Vec<f32>,
    ) -> Result<&FrameReport, EngineError> {
        self.infer_setting(input, Setting { input_size: size, m: usize::MAX }, times, out)
    }

    /// One frame at `setting`: with `setting.m` below the patch count, reuse + reduction (the
    /// blocks before `[reduce] cut` with reuse, then with `carry_clusters` the carried clusters
    /// and the middle with reuse, else the per-frame reduced path's reducer, middle on M tokens;
    /// unfold and head, skipped when nothing before them changed), else reuse through every
    /// block.
    pub fn infer_setting(
        &mut self,
        input: &[f32],
        setting: Setting,
        times: &mut StageTimes,
        out: &mut Vec<f32>,
    ) -> Result<&FrameReport, EngineError> {
        let size = setting.input_size;
        let i = self.sizes.iter().position(|(s, ..)| *s == size).ok_or(EngineError::NoPlan(size))?;
        let err = |source| EngineError::Infer { input_size: size, m: 0, source };
        let seg = self.model.seg.clone();
        let n = seg.sizes().iter().find(|s| s.input_size == size).map_or(0, |s| s.n_tokens);
        let depth = self.enc.depth();
        let reduce = setting.m < n && seg.cut() < depth;
        let m = if reduce { setting.m } else { usize::MAX };
        if size != self.last_size || reduce != (self.last_m != usize::MAX) {
            // A new size, or the other path: its caches do not fit.
            self.reset();
            self.last_size = size;
        }
        let t0 = Instant::now();
        let s = size as usize;
        let x = Tensor::from_shape(&[1, 3, s, s], input).map_err(err)?;
        let emb = self.sizes[i].1.run(tvec!(x.into())).map_err(err)?;
        let emb = f32s(&emb[0]).map_err(err)?;
        let t1 = Instant::now();
        let refresh = self.decide(emb);
        let t2 = Instant::now();
        let n_max = emb.len() / self.model.weights.width;
        let gate = Gate {
            threshold: self.cfg.threshold,
            cap: ((self.cfg.max_active as f64 * n_max as f64).ceil() as usize).max(1),
            floor: (self.cfg.min_active as f64 * n_max as f64).ceil() as usize,
            refresh: refresh.is_some(),
        };
        let mut report = std::mem::take(&mut self.last);
        report.refresh = refresh;
        report.decision = t2 - t1;
        report.head_ran = false;
        report.head = HeadStats::default();
        report.agreement = None;
        report.m = None;
        report.carry = CarryStats::default();
        let mut tokens = std::mem::take(&mut self.tokens);
        let blocks = if reduce { seg.cut() } else { depth };
        let ran = self.enc.run_blocks(emb, gate, blocks, &mut tokens, &mut report.encoder);
        self.tokens = tokens;
        self.last = report;
        ran.map_err(err)?;
        let report = &mut self.last;
        report.decision += report.encoder.gate_time;
        let t3 = Instant::now();
        let t = report.encoder.tokens;
        let mut computed = report.encoder.active.iter().sum::<usize>() as f64;
        let carry = reduce && self.cfg.carry_clusters;
        let mut part_times = StageTimes::default();
        let unchanged = if carry {
            let prefix = seg.manifest().tokens.prefix;
            let c = self.model.weights.width;
            let grid = seg.plans(size).map(|(_, p)| p.grid).ok_or(EngineError::NoPlan(size))?;
            let rows = (prefix + setting.m.min(n)) as f64;
            let f = CarryFrame {
                grid,
                m: setting.m,
                gate: Gate {
                    cap: ((self.cfg.max_active as f64 * rows).ceil() as usize).max(1),
                    floor: (self.cfg.min_active as f64 * rows).ceil() as usize,
                    ..gate
                },
                recluster_above: self.cfg.recluster_above,
                key_bias: self.key_bias,
            };
            let ran = self.carry.run(&self.tokens, prefix, c, blocks..depth, f, &mut report.carry).map_err(err)?;
            let st = &report.carry;
            computed += st.middle.active.iter().sum::<usize>() as f64;
            report.m = ran.then_some(self.carry.clusters.reduction().m);
            part_times.reduce = st.cluster_time;
            part_times.middle = st.middle_time;
            self.carried = true;
            !ran && !self.head_out.is_empty() && m == self.last_m
        } else {
            self.carried = false;
            report.encoder.active.iter().all(|&a| a == 0) && !self.head_out.is_empty() && m == self.last_m
        };
        if !unchanged {
            let t4 = Instant::now();
            let c = self.model.weights.width;
            let check = refresh == Some(Refresh::Periodic) && self.cfg.refresh_iou > 0.0;
            let own = (carry || !reduce) && self.head.is_some();
            if own {
                // The own head updates the stream's output in place: keep the previous one for
                // the agreement check.
                self.fresh.clear();
                if check {
                    self.fresh.extend_from_slice(&self.head_out);
                }
                let prefix = seg.manifest().tokens.prefix;
                let grid = seg.plans(size).map(|(_, p)| p.grid).ok_or(EngineError::NoPlan(size))?;
                let toks = if carry { self.carry.tokens() } else { &self.tokens };
                let head = self.head.as_mut().expect("own head");
                head.gate = self.cfg.head_threshold.min(self.cfg.threshold);
                let full = refresh.is_some();
                report.head =
                    head.run(&mut self.head_cache, toks, prefix, grid, size, full, &mut self.head_out).map_err(err)?;
                part_times.head = t4.elapsed();
                std::mem::swap(&mut self.head_out, &mut self.fresh);
            } else if carry || !reduce {
                let toks = if carry { self.carry.tokens() } else { &self.tokens };
                let x = Tensor::from_shape(&[1, toks.len() / c, c], toks).map_err(err)?;
                let y = self.sizes[i].2.run(tvec!(x.into())).map_err(err)?;
                self.fresh.clear();
                self.fresh.extend_from_slice(f32s(&y[0]).map_err(err)?);
                part_times.head = t4.elapsed();
            } else {
                // The per-frame reduced path's own head: the own head's cache goes stale.
                self.head_cache.clear();
                let used =
                    self.reduced.run_after_stem(&seg, &self.tokens, setting, &mut part_times, &mut self.fresh)?;
                report.m = Some(used);
                let prefix = seg.manifest().tokens.prefix;
                computed += ((depth - blocks) * (prefix + used)) as f64;
            }
            // `fresh`: this frame's output; `head_out`: the previous one (own head: empty unless
            // checked).
            let fresh = &self.fresh;
            if check && fresh.len() == self.head_out.len() {
                // How far the reused frames had drifted: adapt the schedule.
                let agree = agreement(fresh, &self.head_out, s * s, self.threshold_out);
                report.agreement = Some(agree);
                let max = self.cfg.refresh_every.max(2);
                self.period =
                    if agree < self.cfg.refresh_iou { (self.period / 2).max(2) } else { (self.period * 2).min(max) };
            }
            std::mem::swap(&mut self.head_out, &mut self.fresh);
            report.head_ran = !own || report.head.ran();
        }
        report.active_fraction = computed / (depth * t).max(1) as f64;
        self.last_m = m;
        out.clear();
        out.extend_from_slice(&self.head_out);
        self.since_refresh = if refresh.is_some() { 1 } else { self.since_refresh + 1 };
        if reduce {
            times.stem = t3 - t0;
            times.reduce = part_times.reduce;
            times.middle = part_times.middle;
            times.head = part_times.head;
        } else {
            times.stem = (t1 - t0) + (t2 - t1);
            times.reduce = Duration::ZERO;
            times.middle = t3 - t2;
            times.head = t3.elapsed();
        }
        Ok(&self.last)
    }

    /// The refresh rules (module doc), from block 0's scores.
    fn decide(&mut self, emb: &[f32]) -> Option<Refresh> {
        let prefix = self.model.seg.manifest().tokens.prefix;
        let cfg = self.cfg.clone();
        let start = self.start_period();
        let scores = self.enc.embedding_scores(emb);
        if scores.is_empty() {
            return Some(Refresh::Reset);
        }
        if self.period == 0 {
            self.period = start;
        }
        if cfg.refresh_every > 0 && self.since_refresh >= self.period.min(cfg.refresh_every) {
            return Some(Refresh::Periodic);
        }
        let patches = &scores[prefix..];
        let n = patches.len().max(1) as f32;
        let mean = patches.iter().sum::<f32>() / n;
        if mean >= cfg.scene_cut {
            return Some(Refresh::SceneCut);
        }
        let active = patches.iter().filter(|&&s| s >= cfg.threshold).count() as f32 / n;
        if active > cfg.refresh_above {
            return Some(Refresh::TooActive);
        }
        None
    }
}

/// Agreement of two raw output maps of `plane` pixels each: mask IoU at `threshold` for one
/// channel (saliency), else the share of pixels with the same arg-max class.
fn agreement(a: &[f32], b: &[f32], plane: usize, threshold: f32) -> f32 {
    let k = a.len() / plane.max(1);
    if k <= 1 {
        let (mut inter, mut union) = (0usize, 0usize);
        for (x, y) in a.iter().zip(b) {
            let (x, y) = (*x >= threshold, *y >= threshold);
            inter += (x && y) as usize;
            union += (x || y) as usize;
        }
        return if union == 0 { 1.0 } else { inter as f32 / union as f32 };
    }
    let argmax =
        |m: &[f32], p: usize| (0..k).max_by(|&i, &j| m[i * plane + p].total_cmp(&m[j * plane + p])).unwrap_or(0);
    let same = (0..plane).filter(|&p| argmax(a, p) == argmax(b, p)).count();
    same as f32 / plane.max(1) as f32
}

/// The reuse lane as the pipeline drives an engine: `setting.m` below the patch count runs
/// reuse + reduction; it returns the M used (the patch-token count when unreduced, or when the
/// middle was skipped).
impl Engine for ReuseLane {
    fn sizes(&self) -> &[SizeInfo] {
        self.model.seg.sizes()
    }

    fn infer(
        &mut self,
        input: &[f32],
        setting: Setting,
        times: &mut StageTimes,
        out: &mut Vec<f32>,
    ) -> Result<usize, EngineError> {
        let r = ReuseLane::infer_setting(self, input, setting, times, out)?;
        Ok(r.m.unwrap_or(r.encoder.tokens - self.model.seg.manifest().tokens.prefix))
    }

    fn stream_break(&mut self) {
        self.reset();
    }

    fn switch_stream(&mut self, stream: usize) -> bool {
        ReuseLane::switch_stream(self, stream)
    }

    fn reuse_info(&self) -> Option<crate::engine::ReuseInfo> {
        let r = &self.last;
        let depth = self.enc.depth().max(1);
        Some(crate::engine::ReuseInfo {
            active: r.encoder.active_fraction(),
            reduced_share: self.model.seg.cut().min(depth) as f64 / depth as f64,
            scheduled_refresh: matches!(r.refresh, Some(Refresh::Periodic | Refresh::Reset)),
            threshold: self.cfg.threshold,
            period: if self.period == 0 { self.start_period() } else { self.period.min(self.cfg.refresh_every) },
            start_period: self.start_period(),
        })
    }

    /// A new reducer for reuse + reduction; the next frame recomputes the middle.
    fn reconfigure(&mut self, reduce: &crate::reduce::ReduceConfig) -> Result<(), EngineError> {
        self.reduced.reconfigure(reduce)?;
        self.carry.clusters.reconfigure(reduce).map_err(EngineError::Reconfigure)?;
        self.key_bias = reduce.proportional_attention;
        self.head_out.clear();
        self.head_cache.clear();
        self.drop_parked();
        Ok(())
    }

    fn partition(&self, out: &mut crate::reduce::Partition) -> bool {
        if self.carried {
            self.carry.partition(self.last_size, out);
            return self.last_m != usize::MAX;
        }
        self.last.m.is_some() && self.reduced.partition(out)
    }
}

#[cfg(test)]
mod tests {
    use super::agreement;

    #[test]
    fn agreement_is_mask_iou_or_equal_argmax_share() {
        // One channel: masks {0,1} and {1,2} at 0.5 -> IoU 1/3.
        assert!((agreement(&[0.9, 0.8, 0.1, 0.0], &[0.1, 0.7, 0.6, 0.2], 4, 0.5) - 1.0 / 3.0).abs() < 1e-6);
        assert_eq!(agreement(&[0.0; 4], &[0.1; 4], 4, 0.5), 1.0, "both empty agree");
        // Two classes over 2 pixels: argmax (1, 0) vs (1, 1) -> 1/2.
        assert_eq!(agreement(&[0.0, 1.0, 1.0, 0.0], &[0.0, 0.0, 1.0, 1.0], 2, 0.5), 0.5);
    }
}
