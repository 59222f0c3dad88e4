//! The latency-budget controller: picks the input size and cluster count M for each frame.
//!
//! Each frame it takes the highest-fidelity setting (fidelity from the calibration table)
//! whose predicted latency fits `target_ms * (1 - margin)`. Predicted latency = the cost
//! model's prediction of preprocess + inference (`cost.rs`, learned online), padded by the
//! configured percentile of its recent prediction errors, plus that percentile of the measured
//! overhead (queueing, postprocess: end-to-end minus cost).
//!
//! Settings not measured lately are predicted more carefully: their extra parameter
//! uncertainty (from the cost model) pads them by z(percentile) standard deviations (half that
//! when deciding whether to probe upwards).
//!
//! Movement rules: down at once when the current setting no longer fits; up only after the
//! better setting has fitted for `hold` frames in a row, and by at most `MAX_RISE` more
//! predicted latency per move. An up move undone within `PROBE_WINDOW` frames doubles `hold`
//! (up to `MAX_HOLD`), so it cannot oscillate forever; `hold` resets when the load or the
//! config changes. M is always a multiple of `m_step` (or N: no reduction). When even the
//! cheapest setting is predicted to miss, it runs that one and warns once (again only after
//! `REARM` reachable frames). Time never enters:
//! the controller counts frames, so tests drive it with fake costs and no clock.
//! Owns no threads and no engine: the pipeline calls `decide`, `refine` and `observe*`.
//!
//! With temporal reuse (`[reuse]`, issue #19) every prediction is scaled by what reuse is
//! expected to save on this stream's scene (`reuse.rs`: cost = full * (phi + (1 - phi) *
//! activity)): a static scene makes every setting cheaper, so the controller keeps the input
//! size and M a tight budget would otherwise take away; a moving scene makes the factor 1 and
//! the choices today's. Frames computed in full teach the cost model; reused frames teach the
//! factor. The factor is amortised over the lane's refresh period, and a setting that drops the
//! caches (another size, reduced <-> unreduced) is priced at the period a reset starts with
//! (`reuse.rs`): the switching cost that keeps a size change from being taken for the gain of
//! its reused frames alone.

pub mod cost;
pub mod reuse;

use std::path::PathBuf;

use serde::Deserialize;

use crate::engine::{ReuseInfo, Setting, SizeInfo};
use crate::problems::Problems;
use cost::{prior_for, CostModel};
use reuse::ReuseCost;

pub mod calibration;
pub use calibration::{CalibError, CalibRow, CalibrationTable};

/// `[budget]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    pub enabled: bool,
    /// Target capture-to-mask latency per frame.
    pub target_ms: f64,
    /// The percentile of latency that must stay under the target.
    pub percentile: f64,
    /// The input-size ladder (one model plan each).
    pub sizes: Vec<u32>,
    /// The range of M (clusters kept) and its step; M = N (no reduction) is allowed when
    /// `m_max >= N`.
    pub m_min: usize,
    pub m_max: usize,
    pub m_step: usize,
    /// Fraction of the target kept free as a safety margin.
    pub margin: f64,
    /// The device's calibration table (`ailurus calibrate` writes it; shipped defaults when
    /// missing).
    pub calibration: PathBuf,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            enabled: true,
            target_ms: 500.0,
            percentile: 95.0,
            sizes: vec![448, 392, 336, 280],
            m_min: 128,
            m_max: 1024,
            m_step: 32,
            margin: 0.1,
            calibration: "calibration.csv".into(),
        }
    }
}

impl BudgetConfig {
    pub fn validate(&self, p: &mut Problems) {
        let s = "budget";
        p.check(self.target_ms > 0.0 && self.target_ms.is_finite(), s, "target_ms", || {
            format!("{} must be > 0", self.target_ms)
        });
        p.check(self.percentile > 0.0 && self.percentile <= 100.0, s, "percentile", || {
            format!("{} is not in (0, 100]", self.percentile)
        });
        p.check(!self.sizes.is_empty(), s, "sizes", || "must list at least one input size".into());
        for &z in &self.sizes {
            p.check((14..=4096).contains(&z), s, "sizes", || format!("{z} is not in 14..=4096"));
        }
        let mut sorted = self.sizes.clone();
        sorted.sort_unstable();
        sorted.dedup();
        p.check(sorted.len() == self.sizes.len(), s, "sizes", || format!("{:?} lists a size twice", self.sizes));
        p.check(self.m_min >= 1, s, "m_min", || "must be >= 1".into());
        p.check(self.m_max >= self.m_min, s, "m_max", || format!("{} is below m_min {}", self.m_max, self.m_min));
        p.check(self.m_step >= 1, s, "m_step", || "must be >= 1".into());
        p.check((0.0..0.9).contains(&self.margin), s, "margin", || format!("{} is not in [0, 0.9)", self.margin));
        p.check(!self.calibration.as_os_str().is_empty(), s, "calibration", || "must not be empty".into());
    }
}

/// The M values allowed at a size with N tokens: multiples of `m_step` in [m_min, m_max]
/// below N, then N itself when `m_max >= N`. Only N when `reducing` is false.
pub fn m_grid(cfg: &BudgetConfig, n: usize, reducing: bool) -> Vec<usize> {
    if !reducing {
        return vec![n];
    }
    let step = cfg.m_step.max(1);
    let lo = cfg.m_min.div_ceil(step) * step;
    let mut v: Vec<usize> = (lo..=cfg.m_max.min(n)).step_by(step).filter(|&m| m < n).collect();
    if cfg.m_max >= n {
        v.push(n);
    } else if v.is_empty() {
        v.push(lo.min(n));
    }
    v
}

#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("[budget] sizes: {size} has no model plan (loaded: {loaded:?}); adding a size needs a restart")]
    NoPlan { size: u32, loaded: Vec<u32> },
    #[error("[budget] sizes: none of {sizes:?} is in calibration table {table}; run `ailurus calibrate`")]
    NoCandidates { sizes: Vec<u32>, table: String },
}

/// Growth of predicted latency allowed per up move.
pub const MAX_RISE: f64 = 0.15;
/// Frames a better setting must fit before moving up (doubled after each failed move).
pub const BASE_HOLD: u32 = 2;
pub const MAX_HOLD: u32 = 256;
/// A down move this many frames after an up move means the up move failed.
pub const PROBE_WINDOW: u64 = 8;
/// Recent prediction errors / overheads kept for the percentile.
const WINDOW: usize = 32;
/// The first frames' prediction errors are the prior being corrected, not noise: not kept.
const BURN_IN: u64 = 3;
/// Frames the budget must be reachable before "unreachable" may be said again.
pub const REARM: u64 = 50;
/// A load change by this factor since the last backoff resets `hold`.
const LOAD_RESET: f64 = 1.3;

#[derive(Debug, Clone, Copy)]
struct Candidate {
    setting: Setting,
    /// Index of the size in the cost model.
    j: usize,
    u: f64,
    iou: f64,
    mae: f64,
}

/// What `decide` returns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub setting: Setting,
    /// Predicted preprocess + inference, in ms (the mean, unpadded).
    pub predicted_cost_ms: f64,
    /// Predicted end-to-end latency at the configured percentile, in ms.
    pub predicted_latency_ms: f64,
}

/// The controller's state that the metrics show.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Status {
    pub unreachable: bool,
    pub load: f64,
    pub hold: u32,
    pub frames: u64,
    /// How many times "budget unreachable" was said (once per episode).
    pub unreachable_reports: u64,
    /// With temporal reuse: the stream's expected active fraction (None: no reuse seen).
    pub reuse_active: Option<f64>,
    /// With temporal reuse: predicted cost / full cost of the current setting, amortised over
    /// the refresh period (1 without).
    pub reuse_factor: f64,
}

#[derive(Clone)]
struct Ring {
    v: Vec<f64>,
    next: usize,
    scratch: Vec<f64>,
}

impl Ring {
    fn new() -> Ring {
        Ring { v: Vec::with_capacity(WINDOW), next: 0, scratch: Vec::with_capacity(WINDOW) }
    }
    fn push(&mut self, x: f64) {
        if self.v.len() < WINDOW {
            self.v.push(x);
        } else {
            self.v[self.next] = x;
        }
        self.next = (self.next + 1) % WINDOW;
    }
    /// The p-quantile (nearest rank), or `default` when empty.
    fn quantile(&mut self, p: f64, default: f64) -> f64 {
        if self.v.is_empty() {
            return default;
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.v);
        self.scratch.sort_by(f64::total_cmp);
        let rank = ((p * self.scratch.len() as f64).ceil() as usize).clamp(1, self.scratch.len());
        self.scratch[rank - 1]
    }
}

/// Cloned per stream (`[streams.NAME] target_ms`): each clone keeps its own target and
/// movement state over the same candidates and calibration priors.
#[derive(Clone)]
pub struct Controller {
    cfg: BudgetConfig,
    sizes: Vec<SizeInfo>,
    reducing: bool,
    fixed: Setting,
    cands: Vec<Candidate>,
    model: CostModel,
    resid: Ring,
    overhead: Ring,
    current: Option<usize>,
    streak: u32,
    hold: u32,
    last_up: Option<u64>,
    load_at_backoff: f64,
    frames: u64,
    observed: u64,
    unreachable: bool,
    unreachable_reports: u64,
    warned: bool,
    reachable_streak: u64,
    preds: Vec<f64>,
    preds_up: Vec<f64>,
    /// Temporal reuse's share of the cost (`reuse.rs`).
    reuse: ReuseCost,
}

impl Controller {
    /// `sizes`: the engine's plans. `reducing`: whether M < N does anything (false for the
    /// `none` strategy: M stays N). `fixed`: what to run when the budget is disabled.
    pub fn new(
        cfg: &BudgetConfig,
        sizes: &[SizeInfo],
        reducing: bool,
        fixed: Setting,
        table: &CalibrationTable,
    ) -> Result<Controller, BudgetError> {
        let model = CostModel::new(sizes.iter().map(|s| prior_for(table, s)).collect());
        let mut c = Controller {
            cfg: cfg.clone(),
            sizes: sizes.to_vec(),
            reducing,
            fixed,
            cands: vec![],
            model,
            resid: Ring::new(),
            overhead: Ring::new(),
            current: None,
            streak: 0,
            hold: BASE_HOLD,
            last_up: None,
            load_at_backoff: 1.0,
            frames: 0,
            observed: 0,
            unreachable: false,
            unreachable_reports: 0,
            warned: false,
            reachable_streak: 0,
            preds: vec![],
            preds_up: vec![],
            reuse: ReuseCost::default(),
        };
        c.reconfigure(cfg, table)?;
        Ok(c)
    }

    /// Follow a new budget config (run-time reload). Sizes must have plans already; the cost
    /// model is kept, the movement state reset.
    pub fn reconfigure(&mut self, cfg: &BudgetConfig, table: &CalibrationTable) -> Result<(), BudgetError> {
        let loaded: Vec<u32> = self.sizes.iter().map(|s| s.input_size).collect();
        if cfg.enabled {
            if let Some(&size) = cfg.sizes.iter().find(|z| !loaded.contains(z)) {
                return Err(BudgetError::NoPlan { size, loaded });
            }
        }
        let mut cands = Vec::new();
        for (j, s) in self.sizes.iter().enumerate().filter(|(_, s)| cfg.sizes.contains(&s.input_size)) {
            if table.fidelity(s.input_size, s.n_tokens).is_none() {
                log::warn!(
                    "[budget] sizes: {} is not in calibration table {}: left out (run `ailurus calibrate`)",
                    s.input_size,
                    table.origin
                );
                continue;
            }
            for m in m_grid(cfg, s.n_tokens, self.reducing) {
                let (iou, mae) = table.fidelity(s.input_size, m).unwrap_or((0.0, 1.0));
                let setting = Setting { input_size: s.input_size, m };
                cands.push(Candidate { setting, j, u: m as f64 / s.n_tokens as f64, iou, mae });
            }
        }
        if cfg.enabled && cands.is_empty() {
            return Err(BudgetError::NoCandidates { sizes: cfg.sizes.clone(), table: table.origin.clone() });
        }
        // Highest fidelity first; ties: lower MAE, then the cheaper prior.
        let model = &self.model;
        cands.sort_by(|a, b| {
            b.iou
                .total_cmp(&a.iou)
                .then(a.mae.total_cmp(&b.mae))
                .then(model.predict_ms(a.j, a.u).total_cmp(&model.predict_ms(b.j, b.u)))
        });
        let keep = self.current.map(|i| self.cands[i].setting);
        self.current = keep.and_then(|s| cands.iter().position(|c| c.setting == s));
        self.cands = cands;
        self.cfg = cfg.clone();
        self.reset_movement();
        Ok(())
    }

    fn reset_movement(&mut self) {
        self.streak = 0;
        self.hold = BASE_HOLD;
        self.last_up = None;
        self.unreachable = false;
        self.warned = false;
        self.reachable_streak = 0;
    }

    /// Keep another latency target (a stream's own `target_ms`); the movement state is reset
    /// as on a reload, the cost model kept.
    pub fn set_target_ms(&mut self, ms: f64) {
        if ms != self.cfg.target_ms {
            self.cfg.target_ms = ms;
            self.reset_movement();
        }
    }

    pub fn config(&self) -> &BudgetConfig {
        &self.cfg
    }

    pub fn status(&self) -> Status {
        Status {
            unreachable: self.unreachable,
            load: self.model.load(),
            hold: self.hold,
            frames: self.frames,
            unreachable_reports: self.unreachable_reports,
            reuse_active: self.reuse.active(),
            reuse_factor: self.current.map_or(1.0, |i| self.reuse.price(self.cands[i].u, false)),
        }
    }

    /// The reuse part of the cost model (expected activity, fixed share, last report).
    pub fn reuse(&self) -> &ReuseCost {
        &self.reuse
    }

    fn size_index(&self, size: u32) -> Option<(usize, usize)> {
        self.sizes.iter().position(|s| s.input_size == size).map(|j| (j, self.sizes[j].n_tokens))
    }

    /// Whether going from `a` to `b` drops the reuse caches: another input size, or the other
    /// path (reduced, M < N, against unreduced).
    fn switches(&self, a: Setting, b: Setting) -> bool {
        let reduced = |s: Setting| self.size_index(s.input_size).is_some_and(|(_, n)| s.m < n);
        a.input_size != b.input_size || reduced(a) != reduced(b)
    }

    /// Whether `s` drops the caches of the setting running now.
    fn resets(&self, s: Setting) -> bool {
        self.current.is_some_and(|i| self.switches(self.cands[i].setting, s))
    }

    /// Predicted mean cost (ms) of any setting the engine has a plan for; with reuse, amortised
    /// over the refresh period (`reuse.rs`), from the setting running now.
    pub fn predict_cost(&self, s: Setting) -> Option<f64> {
        let (j, n) = self.size_index(s.input_size)?;
        let u = s.m.min(n) as f64 / n as f64;
        Some(self.model.predict_ms(j, u) * self.reuse.price(u, self.resets(s)))
    }

    fn threshold(&self) -> f64 {
        self.cfg.target_ms * (1.0 - self.cfg.margin)
    }

    /// The percentile pads: (ln-domain prediction error, additive overhead ms).
    fn pads(&mut self) -> (f64, f64) {
        let p = self.cfg.percentile / 100.0;
        (self.resid.quantile(p, 0.05).max(0.0), self.overhead.quantile(p, 0.0).max(0.0))
    }

    /// Predicted latency (ms, at the percentile) of every candidate into `self.preds`: the
    /// mean cost, times the recent prediction errors' percentile, times the extra uncertainty
    /// of that setting over the one running now (z * sigma: careful with settings not measured
    /// lately), plus the overhead percentile. `self.preds_up` counts half the extra
    /// uncertainty: an up move is a probe, undone (and made rarer) if it misses.
    fn predict_all(&mut self) {
        let (k, o) = self.pads();
        let z = z_score(self.cfg.percentile / 100.0);
        let var_ref = match self.current {
            Some(i) => self.model.variance(self.cands[i].j, self.cands[i].u),
            None => self.cands.iter().map(|c| self.model.variance(c.j, c.u)).fold(f64::INFINITY, f64::min),
        };
        let (mut preds, mut up) = (std::mem::take(&mut self.preds), std::mem::take(&mut self.preds_up));
        preds.clear();
        up.clear();
        for c in &self.cands {
            let price = self.reuse.price(c.u, self.resets(c.setting));
            let mean = self.model.predict_ln(c.j, c.u) + price.ln() + k;
            let extra = (self.model.variance(c.j, c.u) - var_ref).max(0.0).sqrt();
            preds.push((mean + z * extra).exp() + o);
            up.push((mean + 0.5 * z * extra).exp() + o);
        }
        self.preds = preds;
        self.preds_up = up;
    }

    /// Predicted end-to-end latency at the percentile, ms (as `decide` sees it).
    pub fn predict_latency(&mut self, s: Setting) -> Option<f64> {
        let (k, o) = self.pads();
        Some(self.predict_cost(s)? * k.exp() + o)
    }

    fn decision(&mut self, s: Setting) -> Decision {
        let cost = self.predict_cost(s).unwrap_or(f64::NAN);
        let (k, o) = self.pads();
        Decision { setting: s, predicted_cost_ms: cost, predicted_latency_ms: cost * k.exp() + o }
    }

    /// The setting for the next frame.
    pub fn decide(&mut self) -> Decision {
        self.frames += 1;
        if !self.cfg.enabled || self.cands.is_empty() {
            return self.decision(self.fixed);
        }
        let thr = self.threshold();
        self.predict_all();
        let preds = std::mem::take(&mut self.preds);
        let load = self.model.load();
        if (load / self.load_at_backoff).ln().abs() > LOAD_RESET.ln() {
            self.hold = BASE_HOLD;
            self.load_at_backoff = load;
        }
        let best = preds.iter().position(|&p| p <= thr);
        self.track_reachability(best.is_some(), &preds);
        let next = match (best, self.current) {
            (None, _) => {
                self.streak = 0;
                (0..preds.len()).min_by(|&a, &b| preds[a].total_cmp(&preds[b])).unwrap_or(0)
            }
            (Some(b), None) => b,
            (Some(b), Some(cur)) => {
                if preds[cur] > thr {
                    self.down(b)
                } else if self.preds_up[..cur].iter().any(|&p| p <= thr) {
                    self.up(cur, preds[cur], thr)
                } else {
                    self.streak = 0;
                    cur
                }
            }
        };
        self.current = Some(next);
        self.preds = preds;
        self.decision(self.cands[next].setting)
    }

    /// The unreachable flag follows every frame; the warning is said once, and said again only
    /// after the budget was reachable for `REARM` frames in a row.
    fn track_reachability(&mut self, reachable: bool, preds: &[f64]) {
        self.unreachable = !reachable;
        if reachable {
            self.reachable_streak += 1;
            if self.warned && self.reachable_streak == REARM {
                self.warned = false;
                log::info!("budget {:.0} ms reachable again for {REARM} frames", self.cfg.target_ms);
            }
            return;
        }
        self.reachable_streak = 0;
        if self.warned {
            return;
        }
        self.warned = true;
        self.unreachable_reports += 1;
        let cheapest = (0..preds.len()).min_by(|&a, &b| preds[a].total_cmp(&preds[b])).unwrap_or(0);
        let c = self.cands[cheapest].setting;
        log::warn!(
            "budget {:.0} ms unreachable: even the cheapest setting ({}px, M={}) is predicted at {:.0} ms (p{}); \
             running it anyway (said once)",
            self.cfg.target_ms,
            c.input_size,
            c.m,
            preds[cheapest],
            self.cfg.percentile
        );
    }

    fn down(&mut self, to: usize) -> usize {
        if self.last_up.is_some_and(|f| self.frames - f <= PROBE_WINDOW) {
            self.hold = (self.hold * 2).min(MAX_HOLD);
            self.load_at_backoff = self.model.load();
            self.last_up = None;
        }
        self.streak = 0;
        to
    }

    fn up(&mut self, cur: usize, pred_cur: f64, thr: f64) -> usize {
        self.streak += 1;
        if self.streak < self.hold {
            return cur;
        }
        let preds = &self.preds_up;
        let limit = (pred_cur * (1.0 + MAX_RISE)).min(thr);
        // The best better setting within the rise limit, else the cheapest better one that fits.
        let to = (0..cur)
            .find(|&i| preds[i] <= limit)
            .or_else(|| (0..cur).filter(|&i| preds[i] <= thr).min_by(|&a, &b| preds[a].total_cmp(&preds[b])));
        match to {
            Some(i) => {
                self.streak = 0;
                self.last_up = Some(self.frames);
                i
            }
            None => cur,
        }
    }

    /// Just before inference, with the latest measurements in: keep the size chosen earlier,
    /// but lower M when the setting no longer fits. Never raises M; leaves the movement state.
    /// With reuse, never to an M that drops the caches (M = N to M < N): that frame would be a
    /// full one, dearer than the reused frame it replaces.
    pub fn refine(&mut self, s: Setting) -> Setting {
        if !self.cfg.enabled || !self.reducing || self.cands.is_empty() {
            return s;
        }
        let thr = self.threshold();
        self.predict_all();
        let pos = |s: Setting| self.cands.iter().position(|c| c.setting == s);
        let Some(cur) = pos(s) else { return s };
        if self.preds[cur] <= thr {
            return s;
        }
        // Candidates are in fidelity order: the first smaller M of this size that fits, else
        // the smallest M of this size.
        let n = self.cands.len();
        let reusing = self.reuse.active().is_some();
        let same = |i: &usize| {
            let c = self.cands[*i].setting;
            c.input_size == s.input_size && c.m < s.m && !(reusing && self.switches(s, c))
        };
        (0..n)
            .filter(same)
            .find(|&i| self.preds[i] <= thr)
            .or_else(|| (0..n).filter(same).min_by_key(|&i| self.cands[i].setting.m))
            .map(|i| self.cands[i].setting)
            .unwrap_or(s)
    }

    /// A frame ran `s` and its preprocess + inference took `cost_ms`.
    pub fn observe(&mut self, s: Setting, cost_ms: f64) {
        if let Some((j, n)) = self.size_index(s.input_size) {
            let e = self.model.update(j, s.m.min(n) as f64 / n as f64, cost_ms);
            self.observed += 1;
            if self.observed > BURN_IN {
                self.resid.push(e);
            }
        }
    }

    /// A frame ran `s` with temporal reuse, took `cost_ms` (preprocess + inference), and reuse
    /// reported `info`. `own`: the frame is of this controller's stream (its activity is this
    /// scene's); every stream's controller learns the cost from it.
    ///
    /// A frame computed in full (active 1) teaches the full-cost model as `observe` does; a
    /// reused one the fixed share of `reuse.rs`. The prediction error kept for the percentile
    /// is against what `decide` predicted for the own stream (the expected activity: a scene
    /// that starts to move is a miss), against the frame's own activity for the others;
    /// scheduled refreshes are left out of it (they cost a full frame by design: with
    /// `refresh_every` 30, one frame in 30, within a p95 target's 5%).
    pub fn observe_reuse(&mut self, s: Setting, cost_ms: f64, info: &ReuseInfo, own: bool) {
        let Some((j, n)) = self.size_index(s.input_size) else { return };
        let u = s.m.min(n) as f64 / n as f64;
        let expected = self.reuse.factor(u);
        if own {
            self.reuse.observe_active(info);
        }
        let bound = self.model.clip_bound(j, u);
        let full_ln = self.model.predict_ln(j, u);
        let factor = if info.active >= 1.0 {
            self.model.update(j, u, cost_ms);
            1.0
        } else {
            self.reuse.observe_cost(info, u, cost_ms / full_ln.exp())
        };
        self.observed += 1;
        if self.observed > BURN_IN && !info.scheduled_refresh {
            let predicted = if own { expected } else { factor };
            let e = cost_ms.max(1e-3).ln() - full_ln - predicted.ln();
            self.resid.push(e.clamp(-bound, bound));
        }
    }

    /// A frame was published `latency_ms` after capture; `cost_ms` of it was preprocess +
    /// inference (the rest is overhead the cost model does not see).
    /// Around a scheduled refresh the overhead is left out: the next frame waits for the
    /// refresh's full frame, which the reuse price already counts (`reuse.rs`).
    pub fn observe_latency(&mut self, latency_ms: f64, cost_ms: f64) {
        if self.reuse.near_refresh() {
            return;
        }
        self.overhead.push((latency_ms - cost_ms).max(0.0));
    }
}

/// The standard normal quantile at p (0 for p <= 0.5): Abramowitz & Stegun 26.2.23,
/// absolute error below 5e-4.
pub fn z_score(p: f64) -> f64 {
    if p <= 0.5 {
        return 0.0;
    }
    let q = (1.0 - p).max(1e-12);
    let t = (-2.0 * q.ln()).sqrt();
    t - (2.515517 + 0.802853 * t + 0.010328 * t * t) / (1.0 + 1.432788 * t + 0.189269 * t * t + 0.001308 * t * t * t)
}
