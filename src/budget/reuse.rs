//! Temporal reuse in the budget controller's cost model (issue #19): what a frame costs when
//! only the tokens that changed are recomputed.
//!
//! The knob the controller turns is the price, not the threshold. A frame at setting s (size j,
//! u = M / N) is predicted at
//!
//! ```text
//! cost(s) = full(s) * (phi + (1 - phi) * w(s))
//! w(s)    = alpha                                         unreduced (u = 1)
//!         = (r * alpha + (1 - r) * u) / (r + (1 - r) * u) reduced: blocks before the cut
//!                                                         reuse, the rest run on M tokens
//! ```
//!
//! - `full(s)`: the cost model's prediction of a per-frame (full) computation (`cost.rs`,
//!   learned from the frames computed in full: reuse off, refreshes);
//! - `alpha`: the stream's expected activity, an exponentially weighted mean (gain
//!   [`ALPHA_GAIN`]) of the active (token, block) fraction of its frames; a scene-driven refresh
//!   (a cut, too much changed) counts as 1, a scheduled one (the refresh period, a reset) is left
//!   out: it says nothing about the scene. A static scene drives alpha down, so every setting
//!   is predicted cheaper and the controller keeps (or raises) the input size and M; a moving
//!   scene drives it to 1, and the prediction is today's;
//! - `r`: the share of the encoder's blocks before `[reduce] cut` (the engine reports it);
//! - `phi`: the share of a full frame reuse cannot skip (preprocess, embedding, gates, head),
//!   fitted by least squares to the reused frames' measured cost / `full(s)` against `w`
//!   (forgetting factor [`PHI_DECAY`]), starting at [`PHI0`].
//!
//! The controller judges a setting on that per-frame factor amortised over the refresh
//! schedule, the price:
//!
//! ```text
//! price(s) = (1 + (P - 1) * (phi + (1 - phi) * w(s))) / P
//! P        = the period in force (the lane reports it; adaptive: 4, 8, 16, up to refresh_every)
//!          = the period after a reset (4) when s drops the caches: another input size, or
//!            reduced (M < N) <-> unreduced
//!          (no schedule: the per-frame factor; a reset then is spread over RESET_HORIZON frames)
//! ```
//!
//! so a scheduled refresh is an expected, priced event, and a move that drops the caches pays
//! for its full frame and the short periods after it (a switching cost): a size is not taken
//! for the gain of its reused frames alone, and once taken its price does not jump (no
//! oscillation). The frames right after a scheduled refresh or reset wait for its full frame;
//! that wait is in the price, so the controller keeps it out of its overhead percentile
//! ([`ReuseCost::near_refresh`]). Measured (docs/reuse.md: carphone, 120 frames, default
//! config, `[reuse]` on at threshold 0.3, target 600 ms; AMD EPYC Zen 4, 2 cores, loaded):
//! priced per reused frame only, the controller switched 280 <-> 336 px and reduced <->
//! unreduced, 19-45 of 120 frames computed in full; priced so, it held 392 px for 111 frames
//! and 336 px for 117 (per-frame computation: 280 px). tests/pipeline/budget_reuse.rs replays
//! the lane's schedule with simulated costs.
//!
//! Why the price and not the threshold: the threshold changes what the output is (a higher
//! one lets more change go unseen), and the calibration table has no fidelity for it, so the
//! controller could not weigh it against a smaller size or M; the activity, in contrast, is
//! measured every frame. The user's `[reuse] threshold` stays as set.
//!
//! Must not: decide (that is `budget::Controller`), or know the engine.

use crate::engine::ReuseInfo;

/// Weight of the newest frame in the expected activity.
pub const ALPHA_GAIN: f64 = 0.25;
/// Forgetting factor of the fixed-share fit, per reused frame.
pub const PHI_DECAY: f64 = 0.95;
/// The fixed share before any reused frame was measured, and the weight of that prior (in
/// frames at w = 0).
pub const PHI0: f64 = 0.2;
const PHI0_WEIGHT: f64 = 1.0;
/// Reused frames with a larger work share say little about the fixed share: not fitted.
const FIT_BELOW: f64 = 0.9;
/// Frames a reset's full frame is spread over when there is no refresh schedule.
pub const RESET_HORIZON: u32 = 30;

/// The reuse part of one controller's cost model (per stream: the activity is the scene's).
#[derive(Debug, Clone)]
pub struct ReuseCost {
    alpha: Option<f64>,
    reduced_share: f64,
    sxy: f64,
    sxx: f64,
    last: Option<ReuseInfo>,
    /// The own stream's refresh period in force and after a reset (frames; 0: no schedule).
    period: u32,
    start_period: u32,
    /// The own stream's last two frames: a scheduled refresh or a reset.
    refreshed: [bool; 2],
}

impl Default for ReuseCost {
    fn default() -> Self {
        ReuseCost {
            alpha: None,
            reduced_share: 1.0,
            sxy: PHI0 * PHI0_WEIGHT,
            sxx: PHI0_WEIGHT,
            last: None,
            period: 0,
            start_period: 0,
            refreshed: [false; 2],
        }
    }
}

impl ReuseCost {
    /// The expected activity (None: no reused frame seen, the engine does not reuse).
    pub fn active(&self) -> Option<f64> {
        self.alpha
    }

    /// The last frame's report (of any stream).
    pub fn last(&self) -> Option<ReuseInfo> {
        self.last
    }

    /// The fitted share of a full frame that reuse cannot skip.
    pub fn fixed_share(&self) -> f64 {
        (self.sxy / self.sxx).clamp(0.02, 1.0)
    }

    /// The work share of a frame at `u` with activity `alpha` (formula in the module doc).
    pub fn work_share(alpha: f64, reduced_share: f64, u: f64) -> f64 {
        let a = alpha.clamp(0.0, 1.0);
        if u >= 1.0 {
            return a;
        }
        let r = reduced_share.clamp(0.0, 1.0);
        let full = r + (1.0 - r) * u;
        if full <= 0.0 {
            return 1.0;
        }
        (r * a + (1.0 - r) * u) / full
    }

    /// Predicted cost / full cost at `u` for the expected activity (1 without reuse).
    pub fn factor(&self, u: f64) -> f64 {
        match self.alpha {
            None => 1.0,
            Some(a) => self.factor_at(a, u),
        }
    }

    /// The price of a setting at `u`, over a full frame's: the per-frame factor amortised over
    /// the refresh period (module doc). `reset`: running it drops the caches (another input size,
    /// reduced <-> unreduced), so the schedule starts again at its first period.
    pub fn price(&self, u: f64, reset: bool) -> f64 {
        match self.alpha {
            None => 1.0,
            Some(a) => {
                let f = self.factor_at(a, u);
                match (reset, self.period, self.start_period) {
                    (false, 0, _) => f,
                    (false, p, _) | (true, _, p) => Self::amortised(f, if p == 0 { RESET_HORIZON } else { p }),
                }
            }
        }
    }

    /// One full frame and `period - 1` at the per-frame factor `f`, per frame.
    pub fn amortised(f: f64, period: u32) -> f64 {
        let p = period.max(1) as f64;
        (1.0 + (p - 1.0) * f) / p
    }

    /// The scheduled-refresh period in force on the own stream (0: none, or not seen yet).
    pub fn period(&self) -> u32 {
        self.period
    }

    /// One of the own stream's last two frames was a scheduled refresh or a reset: the next
    /// frame's wait behind it is part of that refresh's (priced) cost, not overhead.
    pub fn near_refresh(&self) -> bool {
        self.refreshed[0] || self.refreshed[1]
    }

    fn factor_at(&self, alpha: f64, u: f64) -> f64 {
        let phi = self.fixed_share();
        phi + (1.0 - phi) * Self::work_share(alpha, self.reduced_share, u)
    }

    /// A frame of this controller's stream ran with reuse: follow its activity.
    pub fn observe_active(&mut self, info: &ReuseInfo) {
        self.reduced_share = info.reduced_share;
        self.last = Some(*info);
        self.period = info.period;
        self.start_period = info.start_period;
        self.refreshed = [info.scheduled_refresh, self.refreshed[0]];
        if info.scheduled_refresh {
            return;
        }
        let a = info.active.clamp(0.0, 1.0);
        self.alpha = Some(match self.alpha {
            None => a,
            Some(old) => old + ALPHA_GAIN * (a - old),
        });
    }

    /// A frame (of any stream) ran with reuse at `u` and cost `ratio` times the predicted full
    /// cost: fit the fixed share. Returns the frame's own factor (phi + (1 - phi) w).
    pub fn observe_cost(&mut self, info: &ReuseInfo, u: f64, ratio: f64) -> f64 {
        self.reduced_share = info.reduced_share;
        let w = Self::work_share(info.active, info.reduced_share, u);
        if w < FIT_BELOW && ratio.is_finite() && ratio > 0.0 {
            // ratio - w = phi * (1 - w): a line through the origin in (1 - w).
            let x = 1.0 - w;
            self.sxy = PHI_DECAY * self.sxy + x * (ratio - w);
            self.sxx = PHI_DECAY * self.sxx + x * x;
        }
        self.factor_at(info.active, u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(active: f64, scheduled: bool) -> ReuseInfo {
        ReuseInfo {
            active,
            reduced_share: 0.25,
            scheduled_refresh: scheduled,
            threshold: 0.2,
            period: 30,
            start_period: 4,
        }
    }

    #[test]
    fn the_fixed_share_is_fitted_from_reused_frames() {
        let mut r = ReuseCost::default();
        assert_eq!(r.factor(1.0), 1.0, "no reuse seen: today's prediction");
        // A device where 30% of a frame cannot be skipped.
        for k in 0..200 {
            let a = [0.05, 0.1, 0.3, 0.6][k % 4];
            r.observe_cost(&info(a, false), 1.0, 0.3 + 0.7 * a);
        }
        assert!((r.fixed_share() - 0.3).abs() < 1e-3, "{}", r.fixed_share());
    }

    #[test]
    fn the_activity_follows_the_scene_not_the_schedule() {
        let mut r = ReuseCost::default();
        for _ in 0..20 {
            r.observe_active(&info(0.04, false));
        }
        assert!((r.active().unwrap() - 0.04).abs() < 1e-9);
        r.observe_active(&info(1.0, true));
        assert!((r.active().unwrap() - 0.04).abs() < 1e-9, "a scheduled refresh is not the scene");
        let low = r.factor(1.0);
        for _ in 0..20 {
            r.observe_active(&info(1.0, false));
        }
        assert!(r.active().unwrap() > 0.99 && r.factor(1.0) > 0.99 && low < 0.3, "{low}");
    }

    #[test]
    fn the_price_is_the_mean_over_one_refresh_period() {
        let mut r = ReuseCost::default();
        assert_eq!(r.price(1.0, true), 1.0, "no reuse seen");
        for _ in 0..50 {
            r.observe_active(&info(0.1, false));
        }
        let f = r.factor(1.0);
        // Slow reference: a period of P frames, the first computed in full.
        let mean = |p: u32| (0..p).map(|k| if k == 0 { 1.0 } else { f }).sum::<f64>() / p as f64;
        assert!((r.price(1.0, false) - mean(30)).abs() < 1e-12, "in force: 30");
        assert!((r.price(1.0, true) - mean(4)).abs() < 1e-12, "after a reset: 4");
        assert!(r.price(1.0, true) > r.price(1.0, false) && r.price(1.0, false) > f);
        assert!(!r.near_refresh());
        r.observe_active(&info(1.0, true));
        r.observe_active(&info(0.1, false));
        assert!(r.near_refresh(), "the frame after a refresh");
        r.observe_active(&info(0.1, false));
        assert!(!r.near_refresh());
    }

    #[test]
    fn with_reduction_only_the_stem_is_discounted() {
        // A quarter of the blocks reuse, M = N/2: a static scene (alpha 0) saves the stem only.
        let w = ReuseCost::work_share(0.0, 0.25, 0.5);
        assert!((w - 0.375 / 0.625).abs() < 1e-12, "{w}");
        assert_eq!(ReuseCost::work_share(1.0, 0.25, 0.5), 1.0);
        assert_eq!(ReuseCost::work_share(0.1, 0.25, 1.0), 0.1);
    }
}
