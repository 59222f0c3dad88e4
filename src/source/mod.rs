//! Frame sources: where frames come from (camera, image folder, recorded stream, synthetic,
//! GStreamer: RTSP, video files, Jetson CSI cameras, launch pipelines).
//!
//! Owns the `FrameSource` trait, the `[source]` config (with its `[source.v4l]` and
//! `[source.synthetic]` sub-tables), the source errors and `build`, which turns the config into
//! a running source. Must not run models or sinks.
//!
//! Layers of the camera path, top down: `reconnect` (retry, health, RGB frames) over `device`
//! (traits, negotiation) over `v4l` (the only code that issues ioctls, untested here), with
//! `decode` for the pixel formats and `stream`/`record` for recorded files. The GStreamer
//! source (`gstreamer` config and launch lines, `gst` the pipeline, feature `gstreamer`) is
//! another `Opener`/`Capture` under `reconnect`.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::choice::Choice;
use crate::frame::Frame;
use crate::problems::Problems;

crate::choice_enum! {
    /// `[source] kind`.
    pub enum SourceKind {
        Folder = "folder", V4l = "v4l", Stream = "stream", Synthetic = "synthetic", Gstreamer = "gstreamer",
    }
}

pub mod clock;
pub mod decode;
pub mod device;
pub mod folder;
#[cfg(feature = "gstreamer")]
pub mod gst;
pub mod gstreamer;
pub mod health;
pub mod reconnect;
pub mod record;
pub mod stream;
pub mod synthetic;
#[cfg(feature = "camera")]
pub mod v4l;

pub use decode::{DecodeError, PixelFormat};
pub use device::DeviceError;
pub use gstreamer::GstConfig;
pub use health::{HealthSnapshot, SourceHealth};

/// Errors of a frame source. `BadFrame`/`Decode` are frame-level faults: the caller skips the
/// frame (the source has already counted it) and goes on.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The device or file could not be opened or read at all.
    #[error("source {origin}: {msg}")]
    Unavailable { origin: String, msg: String },
    /// One frame was bad (driver-flagged, unreadable image): skip it, count it, go on.
    #[error("source {origin}: bad frame {seq}: {msg}")]
    BadFrame { origin: String, seq: u64, msg: String },
    /// One frame could not be decoded (corrupt or truncated JPEG, short raw buffer).
    #[error("source {origin}: bad frame {seq}: {source}")]
    Decode {
        origin: String,
        seq: u64,
        #[source]
        source: DecodeError,
    },
    #[error("source {origin}: {source}")]
    Io {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    /// A camera problem that waiting does not fix (format refused, not a capture device).
    #[error("camera {0}")]
    Device(#[from] DeviceError),
    /// A GStreamer pipeline that can never play (the error names `[source.gstreamer]`).
    #[error("{0}")]
    Gst(DeviceError),
}

impl SourceError {
    /// A fault of one frame (skip it and go on), as opposed to a fault of the source.
    pub fn is_frame_fault(&self) -> bool {
        matches!(self, SourceError::BadFrame { .. } | SourceError::Decode { .. })
    }
}

/// A stream of frames. `next_frame` blocks until a frame is ready; `Ok(None)` is end of stream.
pub trait FrameSource: Send {
    /// Human-readable name (device path or folder), for logs and health.
    fn name(&self) -> &str;
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError>;
    /// Give a frame's pixel buffer back for reuse (optional pooling).
    fn recycle(&mut self, _frame: Frame) {}
    /// Shared health (up/down, last error, counters) for the pipeline and `/healthz`.
    fn health(&self) -> Option<Arc<SourceHealth>> {
        None
    }
}

/// `[source]`: where frames come from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    /// "folder", "v4l", "stream" or "synthetic".
    pub kind: Choice<SourceKind>,
    /// Folder of images, or recorded stream file.
    pub path: std::path::PathBuf,
    /// Start again at the end.
    #[serde(rename = "loop")]
    pub looping: bool,
    /// Pace to this many frames per second (0 = unpaced).
    pub fps: f64,
    /// For "stream": play at the recorded rate (the file header's fps, 30 without a header).
    pub realtime: bool,
    /// `[source.v4l]`: the camera.
    pub v4l: V4lConfig,
    /// `[source.synthetic]`: the generated scene.
    pub synthetic: SyntheticConfig,
    /// `[source.gstreamer]`: RTSP, files, Jetson CSI cameras, launch pipelines.
    pub gstreamer: GstConfig,
    /// `[streams.NAME] target_ms`: this stream's own latency target (None: `[budget]
    /// target_ms`). Only for named streams; the one `[source]` keeps `[budget] target_ms`.
    pub target_ms: Option<f64>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            kind: SourceKind::Folder.into(),
            path: ".cache/photos".into(),
            looping: true,
            fps: 0.0,
            realtime: false,
            v4l: V4lConfig::default(),
            synthetic: SyntheticConfig::default(),
            gstreamer: GstConfig::default(),
            target_ms: None,
        }
    }
}

impl SourceConfig {
    pub fn validate(&self, p: &mut Problems) {
        self.kind.check(p, "source", "kind");
        p.check(self.fps >= 0.0 && self.fps.is_finite(), "source", "fps", || format!("{} must be >= 0", self.fps));
        if let Some(t) = self.target_ms {
            p.check(t > 0.0 && t.is_finite(), "source", "target_ms", || format!("{t} must be > 0 (ms)"));
        }
        self.v4l.validate(p);
        self.synthetic.validate(p);
        if self.kind.get() == SourceKind::Gstreamer {
            self.gstreamer.validate(p, "source.gstreamer");
        }
    }
}

/// `[source.v4l]`: a V4L2 camera.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct V4lConfig {
    /// Device node.
    pub device: PathBuf,
    pub width: u32,
    pub height: u32,
    /// Frame rate to ask for (the device picks the nearest it offers).
    pub fps: f64,
    /// Pixel formats in order of preference: "MJPG", "YUYV", "GREY", "RGB3".
    pub formats: Vec<String>,
    /// Driver buffers to stream with (mmap).
    pub buffers: u32,
    /// A camera that sends nothing for this long is treated as lost (and reopened).
    pub timeout_ms: u64,
    /// First retry delay after a loss; it doubles up to `backoff_max_ms`.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for V4lConfig {
    fn default() -> Self {
        V4lConfig {
            device: "/dev/video0".into(),
            width: 640,
            height: 480,
            fps: 30.0,
            formats: vec!["MJPG".into(), "YUYV".into()],
            buffers: 4,
            timeout_ms: 2000,
            backoff_min_ms: 100,
            backoff_max_ms: 5000,
        }
    }
}

impl V4lConfig {
    pub fn validate(&self, p: &mut Problems) {
        let s = "source.v4l";
        p.check((1..=8192).contains(&self.width), s, "width", || format!("{} is not in 1..=8192", self.width));
        p.check((1..=8192).contains(&self.height), s, "height", || format!("{} is not in 1..=8192", self.height));
        p.check(self.fps > 0.0 && self.fps.is_finite() && self.fps <= 1000.0, s, "fps", || {
            format!("{} is not in (0, 1000]", self.fps)
        });
        p.check(!self.formats.is_empty(), s, "formats", || {
            "is empty; list at least one of MJPG, YUYV, GREY, RGB3".into()
        });
        for f in &self.formats {
            p.check(PixelFormat::parse(f).is_some(), s, "formats", || {
                format!("{f:?} is not one of MJPG, YUYV, GREY, RGB3")
            });
        }
        p.check((2..=32).contains(&self.buffers), s, "buffers", || format!("{} is not in 2..=32", self.buffers));
        p.check(self.timeout_ms >= 10, s, "timeout_ms", || format!("{} must be >= 10", self.timeout_ms));
        p.check(self.backoff_min_ms >= 1, s, "backoff_min_ms", || format!("{} must be >= 1", self.backoff_min_ms));
        p.check(self.backoff_max_ms >= self.backoff_min_ms, s, "backoff_max_ms", || {
            format!("{} is below backoff_min_ms ({})", self.backoff_max_ms, self.backoff_min_ms)
        });
    }

    /// What to negotiate (unknown format names are dropped; `validate` reports them).
    pub fn wanted(&self) -> device::Wanted {
        device::Wanted {
            width: self.width,
            height: self.height,
            fps: self.fps,
            formats: self.formats.iter().filter_map(|f| PixelFormat::parse(f)).collect(),
        }
    }

    pub fn reconnect_options(&self) -> reconnect::ReconnectOptions {
        reconnect::ReconnectOptions {
            backoff_min: Duration::from_millis(self.backoff_min_ms),
            backoff_max: Duration::from_millis(self.backoff_max_ms),
            ..Default::default()
        }
    }
}

/// `[source.synthetic]`: a generated moving scene.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    pub width: u32,
    pub height: u32,
    /// Frames to produce (0 = endless).
    pub frames: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig { width: 640, height: 480, frames: 0 }
    }
}

impl SyntheticConfig {
    pub fn validate(&self, p: &mut Problems) {
        let s = "source.synthetic";
        p.check((1..=8192).contains(&self.width), s, "width", || format!("{} is not in 1..=8192", self.width));
        p.check((1..=8192).contains(&self.height), s, "height", || format!("{} is not in 1..=8192", self.height));
    }
}

/// Build the configured source. A camera that is missing is not an error: the source starts
/// "camera down", logs "waiting for /dev/video0" and keeps retrying inside `next_frame`, which
/// returns `Ok(None)` once `stop` is set (wire it to SIGTERM so shutdown is not stuck waiting).
/// A camera that refuses the configured format is an error listing what it offers.
pub fn build_with_stop(
    cfg: &SourceConfig,
    base: &Path,
    stop: Arc<AtomicBool>,
) -> Result<Box<dyn FrameSource>, SourceError> {
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
        }
    };
    match cfg.kind.get() {
        SourceKind::Folder => Ok(Box::new(folder::FolderSource::open(&resolve(&cfg.path), cfg.looping, cfg.fps)?)),
        SourceKind::Stream => {
            let opts = stream::StreamOptions { looping: cfg.looping, realtime: cfg.realtime, fps: cfg.fps };
            Ok(Box::new(stream::StreamSource::open(&resolve(&cfg.path), opts)?))
        }
        SourceKind::Synthetic => {
            let s = &cfg.synthetic;
            Ok(Box::new(synthetic::SyntheticSource::new(s.width, s.height, s.frames, cfg.fps)))
        }
        SourceKind::V4l => build_camera(&cfg.v4l, stop),
        SourceKind::Gstreamer => build_gstreamer(&cfg.gstreamer, base, cfg.looping, stop),
    }
}

/// The GStreamer source under the reconnect machinery: a pipeline that can never play (a
/// missing file, no plugin for the scheme, a launch line that does not parse, no appsink named
/// `sink`) is an error; a server that is merely absent starts "stream down" and is retried.
#[cfg(feature = "gstreamer")]
fn build_gstreamer(
    cfg: &GstConfig,
    base: &Path,
    looping: bool,
    stop: Arc<AtomicBool>,
) -> Result<Box<dyn FrameSource>, SourceError> {
    let opener = gst::GstOpener::new(cfg, base, looping).map_err(SourceError::Gst)?;
    let opts = reconnect::ReconnectOptions {
        backoff_min: Duration::from_millis(cfg.backoff_min_ms),
        backoff_max: Duration::from_millis(cfg.backoff_max_ms),
        ..Default::default()
    };
    let clock = Arc::new(reconnect::RealClock);
    match reconnect::ReconnectingSource::start(Box::new(opener), opts, clock, stop) {
        Ok(s) => Ok(Box::new(s)),
        Err(SourceError::Device(e)) => Err(SourceError::Gst(e)),
        Err(e) => Err(e),
    }
}

#[cfg(not(feature = "gstreamer"))]
fn build_gstreamer(
    cfg: &GstConfig,
    base: &Path,
    _looping: bool,
    _stop: Arc<AtomicBool>,
) -> Result<Box<dyn FrameSource>, SourceError> {
    let played = cfg.what(base);
    Err(SourceError::Gst(DeviceError::Gst {
        device: played.describe(),
        key: played.key(),
        what: "this build has no GStreamer support (built without the `gstreamer` feature)".into(),
        transient: false,
        source: None,
    }))
}

#[cfg(feature = "camera")]
fn build_camera(cfg: &V4lConfig, stop: Arc<AtomicBool>) -> Result<Box<dyn FrameSource>, SourceError> {
    let opener = Box::new(v4l::V4lOpener::new(cfg));
    let clock = Arc::new(reconnect::RealClock);
    Ok(Box::new(reconnect::ReconnectingSource::start(opener, cfg.reconnect_options(), clock, stop)?))
}

#[cfg(not(feature = "camera"))]
fn build_camera(cfg: &V4lConfig, _stop: Arc<AtomicBool>) -> Result<Box<dyn FrameSource>, SourceError> {
    Err(SourceError::Device(DeviceError::NotSupported { device: cfg.device.display().to_string() }))
}

/// The `ailurus devices` listing (says "no V4L2 devices found" when there are none).
pub fn list_devices_text() -> String {
    #[cfg(feature = "camera")]
    let found = v4l::list_devices();
    #[cfg(not(feature = "camera"))]
    let found: Vec<Result<device::DeviceInfo, DeviceError>> =
        vec![Err(DeviceError::NotSupported { device: "/dev/video*".into() })];
    device::format_listing(&found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(toml_text: &str) -> Vec<String> {
        #[derive(Deserialize)]
        struct W {
            source: SourceConfig,
        }
        let w: W = toml::from_str(toml_text).expect("parses");
        let mut p = Problems::default();
        w.source.validate(&mut p);
        p.0.into_iter().map(|p| format!("{}: {}", p.key, p.msg)).collect()
    }

    #[test]
    fn v4l_table_parses_and_validates_every_key() {
        let ok = problems("[source]\nkind = \"v4l\"\n[source.v4l]\ndevice = \"/dev/video2\"\nformats = [\"YUYV\"]\n");
        assert!(ok.is_empty(), "{ok:?}");
        let bad = problems(
            "[source]\nkind = \"v4l\"\n[source.v4l]\nwidth = 0\nfps = 0\nformats = [\"H264\"]\nbuffers = 1\nbackoff_min_ms = 10\nbackoff_max_ms = 5\n",
        );
        let joined = bad.join("\n");
        for key in [
            "[source.v4l] width",
            "[source.v4l] fps",
            "[source.v4l] formats: \"H264\"",
            "[source.v4l] buffers",
            "[source.v4l] backoff_max_ms",
        ] {
            assert!(joined.contains(key), "missing {key} in {joined}");
        }
    }

    #[test]
    fn unknown_v4l_key_is_a_parse_error() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct W {
            source: SourceConfig,
        }
        let err = toml::from_str::<W>("[source.v4l]\ndevcie = \"/dev/video0\"\n").unwrap_err();
        assert!(err.to_string().contains("devcie"), "{err}");
    }

    #[test]
    fn build_makes_every_kind_but_the_camera_here() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut cfg = SourceConfig { kind: "synthetic".into(), ..Default::default() };
        cfg.synthetic.frames = 1;
        let mut s = build_with_stop(&cfg, base, Default::default()).unwrap();
        assert!(s.next_frame().unwrap().is_some());
        assert!(s.health().is_some());
        let cfg = SourceConfig { kind: "stream".into(), path: "no/such/file".into(), ..Default::default() };
        assert!(matches!(build_with_stop(&cfg, base, Default::default()), Err(SourceError::Io { .. })));
    }
}
