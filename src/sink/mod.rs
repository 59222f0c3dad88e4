//! Sinks: where masks go (files, UNIX socket, HTTP preview).
//!
//! Owns the `Sink` trait, its implementations and their config. A sink never blocks inference:
//! the pipeline hands each sink its own bounded queue, and a slow sink drops (and counts) its
//! own frames.

use std::sync::Arc;

use serde::Deserialize;

use crate::config::Problems;
use crate::frame::{Frame, Mask};

pub mod files;

/// Everything a sink may publish about one processed frame.
#[derive(Debug, Clone)]
pub struct Output {
    pub frame: Arc<Frame>,
    pub mask: Arc<Mask>,
    /// Tokens the middle blocks ran on (M; equal to N without reduction).
    pub m: usize,
    /// Input side the model ran at.
    pub input_size: u32,
    /// Capture-to-mask latency.
    pub latency: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("sink {sink}: {path}: {source}")]
    Io {
        sink: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sink {sink}: {msg}")]
    Other { sink: &'static str, msg: String },
}

/// A consumer of segmentation results.
pub trait Sink: Send {
    fn name(&self) -> &'static str;
    fn publish(&mut self, out: &Output) -> Result<(), SinkError>;
}

/// `[sink.*]`: every sink's config; several can be enabled at once.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SinksConfig {
    pub files: files::FilesConfig,
}

impl SinksConfig {
    pub fn validate(&self, p: &mut Problems) {
        self.files.validate(p);
    }
}

/// Build every enabled sink.
pub fn build_all(
    cfg: &SinksConfig,
    base: &std::path::Path,
) -> Result<Vec<Box<dyn Sink>>, SinkError> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if cfg.files.enabled {
        sinks.push(Box::new(files::FilesSink::build(&cfg.files, base)?));
    }
    Ok(sinks)
}
