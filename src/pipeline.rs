//! The streaming pipeline: source -> preprocess -> infer -> postprocess -> sinks.

use serde::Deserialize;

use crate::config::Problems;

/// `[pipeline]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Seconds between metrics log lines.
    pub log_every_s: f64,
    /// Stop after this many frames (0 = run until stopped).
    pub max_frames: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig { log_every_s: 10.0, max_frames: 0 }
    }
}

impl PipelineConfig {
    pub fn validate(&self, p: &mut Problems) {
        p.check(self.log_every_s > 0.0, "pipeline", "log_every_s", || format!("{} must be > 0", self.log_every_s));
    }
}

use std::time::Duration;

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

/// The model as the pipeline sees it. The real one is `model::Segmenter`; tests use fakes.
///
/// `preprocess` and `postprocess` are `&self` + caller-owned scratch so they can run on other
/// threads than `infer` (overlapping frame t+1's preprocessing with frame t's inference).
pub trait Engine: Send + Sync {
    /// Input sizes with a ready plan.
    fn sizes(&self) -> &[SizeInfo];
    /// Frame -> model input for `input_size`, into `out` (reused).
    fn preprocess(
        &self,
        frame: &crate::frame::Frame,
        input_size: u32,
        scratch: &mut crate::pre::Resampler,
        out: &mut Vec<f32>,
    );
    /// Model input -> raw output map (`[classes or 1, s, s]`) into `out` (reused).
    fn infer(
        &self,
        input: &[f32],
        setting: Setting,
        times: &mut StageTimes,
        out: &mut Vec<f32>,
    ) -> Result<(), EngineError>;
    /// Raw output -> mask at frame size.
    fn postprocess(
        &self,
        raw: &[f32],
        input_size: u32,
        frame_w: u32,
        frame_h: u32,
        scratch: &mut crate::pre::Resampler,
        mask: &mut crate::frame::Mask,
    );
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
}
