//! Frame sources: where frames come from (camera, image folder, recorded stream, synthetic).
//!
//! Owns the `FrameSource` trait and its implementations. Must not run models or sinks.

use crate::frame::Frame;

pub mod folder;

/// Errors of a frame source. `Frame`-level faults are skipped by the caller and counted.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The device or file could not be opened or read at all (retry with backoff).
    #[error("source {origin}: {msg}")]
    Unavailable { origin: String, msg: String },
    /// One frame was bad (corrupt JPEG, truncated read): skip it, count it, go on.
    #[error("source {origin}: bad frame {seq}: {msg}")]
    BadFrame {
        origin: String,
        seq: u64,
        msg: String,
    },
    #[error("source {origin}: {source}")]
    Io {
        origin: String,
        #[source]
        source: std::io::Error,
    },
}

/// A stream of frames. `next_frame` blocks until a frame is ready; `Ok(None)` is end of stream.
pub trait FrameSource: Send {
    /// Human-readable name (device path or folder), for logs and health.
    fn name(&self) -> &str;
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError>;
    /// Give a frame's pixel buffer back for reuse (optional pooling).
    fn recycle(&mut self, _frame: Frame) {}
}

use serde::Deserialize;

use crate::config::Problems;

/// `[source]`: where frames come from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// "folder", "v4l", "stream" or "synthetic".
    pub kind: String,
    /// Folder of images, or recorded stream file.
    pub path: std::path::PathBuf,
    /// Start again at the end.
    #[serde(rename = "loop")]
    pub looping: bool,
    /// Pace to this many frames per second (0 = unpaced).
    pub fps: f64,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            kind: "folder".into(),
            path: ".cache/photos".into(),
            looping: true,
            fps: 0.0,
        }
    }
}

pub const KINDS: &[&str] = &["folder", "v4l", "stream", "synthetic"];

impl SourceConfig {
    pub fn validate(&self, p: &mut Problems) {
        p.check(
            KINDS.contains(&self.kind.as_str()),
            "source",
            "kind",
            || format!("{:?} is not one of {}", self.kind, KINDS.join(", ")),
        );
        p.check(
            self.fps >= 0.0 && self.fps.is_finite(),
            "source",
            "fps",
            || format!("{} must be >= 0", self.fps),
        );
    }
}
