//! `ailurus record`: save N frames to a stream file (see `stream.rs` for the layout) so that a
//! problem seen with a camera can be replayed with `kind = "stream"`.
//!
//! From a camera the frames are written exactly as the driver delivered them (MJPEG untouched,
//! corrupt frames included; raw formats packed), so the replay reproduces the decoder's view.
//! From any other source the decoded RGB frames are written (`RGB3`). Owns only the copying;
//! must not retry a missing camera (it reports it) or decode camera frames.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::device::Capture;
use super::stream::{StreamHeader, StreamWriter, DEFAULT_FPS};
use super::{FrameSource, PixelFormat, SourceConfig, SourceError};

/// What was recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordSummary {
    pub path: PathBuf,
    pub header: StreamHeader,
    /// Frames written.
    pub frames: u64,
    /// Frames the source reported as bad (written as is from a camera, skipped otherwise).
    pub bad: u64,
}

impl std::fmt::Display for RecordSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = &self.header;
        write!(
            f,
            "{}: {} frames of {} {}x{} at {} fps ({} bad)",
            self.path.display(),
            self.frames,
            h.format,
            h.width,
            h.height,
            h.fps,
            self.bad
        )?;
        write!(f, "; replay with [source] kind = \"stream\", path = \"{}\"", self.path.display())
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io { origin: path.display().to_string(), source }
}

/// Record up to `n` raw frames from an open device, exactly as delivered.
pub fn record_capture(
    cap: &mut dyn Capture,
    n: u64,
    out: &Path,
    stop: &AtomicBool,
) -> Result<RecordSummary, SourceError> {
    let mode = cap.mode();
    let header = StreamHeader {
        format: mode.format,
        width: mode.width,
        height: mode.height,
        fps: mode.fps.unwrap_or(DEFAULT_FPS),
    };
    let mut w = StreamWriter::create(out, header)?;
    let mut bad = 0;
    while w.frames() < n && !stop.load(Ordering::Relaxed) {
        let raw = cap.next_raw()?;
        bad += raw.driver_error as u64;
        w.write_frame(raw.data, raw.stride).map_err(io(out))?;
    }
    let frames = w.finish().map_err(io(out))?;
    Ok(RecordSummary { path: out.to_path_buf(), header, frames, bad })
}

/// Record up to `n` decoded frames from any source as `RGB3`. The first good frame fixes the
/// size; bad frames and frames of another size are skipped and counted. `fps` goes into the
/// header (0 = 30).
pub fn record_source(
    src: &mut dyn FrameSource,
    n: u64,
    out: &Path,
    fps: f64,
    stop: &AtomicBool,
) -> Result<RecordSummary, SourceError> {
    let fps = if fps > 0.0 { fps } else { DEFAULT_FPS };
    let mut writer: Option<StreamWriter<_>> = None;
    let mut header = None;
    let mut bad = 0;
    while writer.as_ref().map_or(0, |w| w.frames()) < n && !stop.load(Ordering::Relaxed) {
        let frame = match src.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) if e.is_frame_fault() => {
                log::warn!("{e} (not recorded)");
                bad += 1;
                continue;
            }
            Err(e) => return Err(e),
        };
        let w = match &mut writer {
            Some(w) => w,
            None => {
                let h = StreamHeader { format: PixelFormat::Rgb24, width: frame.width, height: frame.height, fps };
                header = Some(h);
                writer.insert(StreamWriter::create(out, h)?)
            }
        };
        if header.is_some_and(|h| (h.width, h.height) != (frame.width, frame.height)) {
            log::warn!(
                "{}: {}x{} differs from the recording's size (not recorded)",
                frame.origin,
                frame.width,
                frame.height
            );
            bad += 1;
        } else {
            w.write_frame(&frame.rgb, 0).map_err(io(out))?;
        }
        src.recycle(frame);
    }
    let (Some(w), Some(header)) = (writer, header) else {
        return Err(SourceError::Unavailable { origin: src.name().to_string(), msg: "no frame to record".into() });
    };
    let frames = w.finish().map_err(io(out))?;
    Ok(RecordSummary { path: out.to_path_buf(), header, frames, bad })
}

/// What `ailurus record` runs: raw frames from the camera when `kind = "v4l"` (opened once; a
/// missing camera is an error here, not a wait), decoded frames from any other source.
pub fn record(
    cfg: &SourceConfig,
    base: &Path,
    n: u64,
    out: &Path,
    stop: Arc<AtomicBool>,
) -> Result<RecordSummary, SourceError> {
    if cfg.kind.get() == super::SourceKind::V4l {
        return record_camera(cfg, n, out, &stop);
    }
    let mut src = super::build_with_stop(cfg, base, stop.clone())?;
    record_source(src.as_mut(), n, out, cfg.fps, &stop)
}

#[cfg(feature = "camera")]
fn record_camera(cfg: &SourceConfig, n: u64, out: &Path, stop: &AtomicBool) -> Result<RecordSummary, SourceError> {
    use super::device::Opener;
    let mut opener = super::v4l::V4lOpener::new(&cfg.v4l);
    let mut cap = opener.open()?;
    log::info!("recording {n} frames from {}: {}", opener.device(), cap.mode());
    record_capture(cap.as_mut(), n, out, stop)
}

#[cfg(not(feature = "camera"))]
fn record_camera(cfg: &SourceConfig, _n: u64, _out: &Path, _stop: &AtomicBool) -> Result<RecordSummary, SourceError> {
    Err(SourceError::Device(super::DeviceError::NotSupported { device: cfg.v4l.device.display().to_string() }))
}
