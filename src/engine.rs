//! What the pipeline, the budget controller, the metrics and the model share: a setting (input
//! size, M), the stage times of a frame, the sizes an engine has plans for, and the `Engine`
//! trait an inference lane drives. A low module: it imports nothing above `reduce`'s config.

use std::time::Duration;

use crate::frame::{Frame, Mask};
use crate::pre::Resampler;
use crate::reduce::{Partition, ReduceConfig};

/// One point the budget controller can choose: the model input side and the cluster count M
/// (M = N means no reduction at that size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Setting {
    pub input_size: u32,
    pub m: usize,
}

/// Measured duration of every stage of one frame.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StageTimes {
    pub preprocess: Duration,
    pub stem: Duration,
    /// Clustering + merge + unfold.
    pub reduce: Duration,
    pub middle: Duration,
    pub head: Duration,
    pub postprocess: Duration,
}

impl StageTimes {
    pub fn inference(&self) -> Duration {
        self.stem + self.reduce + self.middle + self.head
    }
    pub fn total(&self) -> Duration {
        self.preprocess + self.inference() + self.postprocess
    }
}

/// An input size the engine has a plan for, and its patch-token count N.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeInfo {
    pub input_size: u32,
    pub n_tokens: usize,
}

/// The model as an inference lane runs it: model input -> raw output. The real one is
/// `model::SegmenterLane` (shared plans, its own states and scratch); tests use fakes.
///
/// One engine per lane, owned by that lane's thread (`&mut self`: no lock on the hot path).
/// Pre- and postprocessing are pipeline stages of their own (`pre`, `model::output`), not the
/// engine's business.
pub trait Engine: Send {
    /// Input sizes with a ready plan.
    fn sizes(&self) -> &[SizeInfo];
    /// Model input (`[1, 3, s, s]` normalised) -> raw output map (`[classes or 1, s, s]`) into
    /// `out` (reused). Returns the patch-token count the middle actually ran on.
    fn infer(
        &mut self,
        input: &[f32],
        setting: Setting,
        times: &mut StageTimes,
        out: &mut Vec<f32>,
    ) -> Result<usize, EngineError>;
    /// Follow a reloaded `[reduce]` (strategy, knobs, proportional attention) from the next
    /// frame on. Engines without a reducer ignore it.
    fn reconfigure(&mut self, _reduce: &ReduceConfig) -> Result<(), EngineError> {
        Ok(())
    }
    /// The token partition of the last `infer` into `out` (its buffers reused: no allocation
    /// once warm). False, and `out` untouched, when that frame ran unreduced (M = N) or the
    /// engine keeps no partition.
    fn partition(&self, _out: &mut Partition) -> bool {
        false
    }
    /// The frames stop being one continuous stream (a new frame size, a source restart; the
    /// pipeline calls it): engines that carry state from frame to frame (temporal reuse, issue
    /// #19) drop it. Stateless engines ignore it.
    fn stream_break(&mut self) {}
    /// The next frames come from stream `stream` (by index; the pipeline calls it when a lane's
    /// frames switch streams). True when the engine keeps a separate frame-to-frame state per
    /// stream (temporal reuse's per-stream caches) and switched to that stream's; false (the
    /// default) when it keeps one state, which the pipeline then drops with `stream_break`.
    fn switch_stream(&mut self, _stream: usize) -> bool {
        false
    }
    /// What temporal reuse did on the last `infer` (None: the engine does not reuse).
    fn reuse_info(&self) -> Option<ReuseInfo> {
        None
    }
}

/// What temporal reuse (issue #19) did on one frame: what the budget controller's cost model
/// and the metrics read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReuseInfo {
    /// Active (token, block) pairs over all of them in the blocks that reuse (all blocks
    /// unreduced; the blocks before `[reduce] cut` with reduction): the scene's activity.
    pub active: f64,
    /// With reduction (M < N): the share of the encoder's blocks that reuse (those before
    /// `[reduce] cut`: cut / depth), whatever the frame ran; 1 when the engine has no cut.
    pub reduced_share: f64,
    /// The frame was computed in full for a reason that is not the scene: the schedule, a reset
    /// (first frame, new size, reconnect). Scene-driven refreshes (a cut, too much changed)
    /// are not: they report `active` 1.
    pub scheduled_refresh: bool,
    /// The reuse threshold in force for the frame.
    pub threshold: f32,
    /// The scheduled-refresh period in force from this frame on, in frames (0: no schedule).
    pub period: u32,
    /// The period after a reset (a new input size, reduced <-> unreduced, a reconnect): the
    /// schedule starts again there (0: no schedule).
    pub start_period: u32,
}

/// The pre- and postprocessing stages' work: frame -> model input, raw output -> mask. The real
/// one is `model::Io` (from the model's manifest); tests use fakes. `&self` + caller-owned
/// scratch, so the two stages run on their own threads.
pub trait FrameIo: Send + Sync {
    /// Frame -> model input for `input_size`, into `out` (reused).
    fn preprocess(&self, frame: &Frame, input_size: u32, rs: &mut Resampler, out: &mut Vec<f32>);
    /// Raw output -> mask at `w x h` (reused buffers).
    fn postprocess(&self, raw: &[f32], input_size: u32, w: u32, h: u32, rs: &mut Resampler, mask: &mut Mask);
}

/// An output with NaN or infinity is an error: the frame is skipped and counted, not turned into
/// a silently empty mask (with `[model] precision = "f16"` a value past f16's range, 65504,
/// would end up there). One pass over the output, after every engine's `infer`.
pub fn check_output(raw: &[f32], input_size: u32) -> Result<(), EngineError> {
    let bad = raw.iter().filter(|x| !x.is_finite()).count();
    if bad == 0 {
        return Ok(());
    }
    let hint = match crate::model::bf16::precision() {
        crate::model::bf16::Precision::F16 => " ([model] precision = \"f16\": a value past f16's range?)",
        _ => "",
    };
    Err(EngineError::NonFinite { input_size, bad, total: raw.len(), hint })
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("inference at {input_size}px, M={m}: {source:#}")]
    Infer {
        input_size: u32,
        m: usize,
        #[source]
        source: anyhow::Error,
    },
    #[error("no plan for input size {0}")]
    NoPlan(u32),
    #[error("inference at {input_size}px: the output has {bad} non-finite values of {total}{hint}")]
    NonFinite { input_size: u32, bad: usize, total: usize, hint: &'static str },
    #[error("reload: {0}")]
    Reconfigure(#[source] crate::reduce::BuildError),
}

/// The most inference lanes `[pipeline] lanes` accepts.
pub const MAX_LANES: usize = 16;

#[cfg(test)]
mod output_tests {
    use super::*;

    #[test]
    fn a_non_finite_output_is_an_error_that_counts_and_names_the_size() {
        assert!(check_output(&[0.0, 1.0, -3.5], 448).is_ok());
        let e = check_output(&[0.0, f32::NAN, f32::INFINITY, 2.0], 448).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("inference at 448px: the output has 2 non-finite values of 4"), "{msg}");
    }
}
