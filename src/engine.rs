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
    #[error("reload: {0}")]
    Reconfigure(#[source] crate::reduce::BuildError),
}

/// The most inference lanes `[pipeline] lanes` accepts.
pub const MAX_LANES: usize = 16;
