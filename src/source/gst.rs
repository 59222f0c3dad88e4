//! The GStreamer source (feature `gstreamer`): RTSP cameras, video files, Jetson CSI cameras and
//! any launch pipeline, as an `Opener`/`Capture` pair under `reconnect::ReconnectingSource`, so
//! a lost server goes through the same health, backoff and resume as a lost V4L2 camera.
//!
//! A pipeline ends in an appsink that keeps only the newest frame (`drop=true max-buffers=1`)
//! as packed RGB: a slow model never builds latency inside GStreamer. The source thread pulls
//! every frame as it comes (so the capture time is the arrival time) and the pipeline's
//! latest-frame slot drops and counts what inference does not take.
//!
//! Owns the GStreamer objects and the mapping of bus messages onto `DeviceError` (transient: a
//! server or camera that may come back; permanent: a pipeline that can never play, which stops
//! start-up with exit 2). Must not retry or sleep (that is `reconnect.rs`) nor decide what to
//! play (that is `gstreamer.rs`).

use std::path::Path;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use super::decode::PixelFormat;
use super::device::{Capture, DeviceError, Mode, Opener, RawFrame};
use super::gstreamer::{choose_path, launch_line, DecodePath, GstConfig, Played};

/// How long one pull waits before the bus is looked at again.
const PULL_SLICE: Duration = Duration::from_millis(100);

/// How long dropping a pipeline waits for it to stop before leaving that to its own thread.
const TEARDOWN_WAIT: Duration = Duration::from_secs(5);

/// Opens the configured pipeline (again after every loss).
pub struct GstOpener {
    played: Played,
    launch: String,
    device: String,
    cfg: GstConfig,
    looping: bool,
}

impl GstOpener {
    /// Check what can be checked before playing (GStreamer initialises, the file exists, some
    /// element plays the URI's scheme) and choose the decode path. Errors here are permanent.
    pub fn new(cfg: &GstConfig, base: &Path, looping: bool) -> Result<GstOpener, DeviceError> {
        let played = cfg.what(base);
        let device = played.describe();
        let fail = |what: String, source: Option<glib_error::Boxed>| DeviceError::Gst {
            device: device.clone(),
            key: played.key(),
            what,
            transient: false,
            source,
        };
        gst::init().map_err(|e| fail("GStreamer does not initialise".into(), Some(Box::new(e))))?;
        let mut file_uri = String::new();
        match &played {
            Played::File(p) => {
                let abs =
                    std::fs::canonicalize(p).map_err(|e| fail("cannot open the file".into(), Some(Box::new(e))))?;
                file_uri = gst::glib::filename_to_uri(&abs, None)
                    .map_err(|e| fail("is not a file name GStreamer takes".into(), Some(Box::new(e))))?
                    .to_string();
            }
            Played::Uri(u) => {
                if let Err(e) = gst::Element::make_from_uri(gst::URIType::Src, u, None) {
                    let scheme = u.split("://").next().unwrap_or("");
                    return Err(fail(
                        format!("no GStreamer element plays {scheme}:// URIs (is its plugin installed?)"),
                        Some(Box::new(e)),
                    ));
                }
            }
            Played::Csi(_) | Played::Pipeline(_) => {}
        }
        let has = |name: &str| gst::ElementFactory::find(name).is_some();
        let path = choose_path(&has);
        if path == DecodePath::Hardware {
            // decodebin picks by rank: put the Jetson decoder above the software ones.
            if let Some(f) = gst::ElementFactory::find("nvv4l2decoder") {
                f.set_rank(gst::Rank::PRIMARY + 1);
            }
        }
        if !matches!(played, Played::Pipeline(_)) {
            log::info!(
                "gstreamer {device}: {} decode and conversion ({})",
                if path == DecodePath::Hardware { "hardware" } else { "software" },
                if path == DecodePath::Hardware {
                    "nvv4l2decoder + nvvidconv"
                } else {
                    "no nvv4l2decoder/nvvidconv here: decodebin's CPU decoders + videoconvert"
                }
            );
        }
        let launch = launch_line(cfg, &played, &file_uri, path);
        log::debug!("gstreamer {device}: {launch}");
        Ok(GstOpener { played, launch, device, cfg: cfg.clone(), looping })
    }

    /// The launch line it plays.
    pub fn launch(&self) -> &str {
        &self.launch
    }

    fn error(&self, what: impl Into<String>, transient: bool, source: Option<glib_error::Boxed>) -> DeviceError {
        DeviceError::Gst { device: self.device.clone(), key: self.played.key(), what: what.into(), transient, source }
    }
}

/// Whether a bus error at start-up means the pipeline can never play: any error of a file, a
/// missing plugin, a stream nothing decodes, caps that do not negotiate. Anything else (a
/// server that refused or vanished) may come back. Mid-stream every error is retried.
fn never_plays(e: &gst::glib::Error, file: bool) -> bool {
    file || matches!(e.kind::<gst::CoreError>(), Some(gst::CoreError::MissingPlugin | gst::CoreError::Negotiation))
        || matches!(
            e.kind::<gst::StreamError>(),
            Some(gst::StreamError::TypeNotFound | gst::StreamError::CodecNotFound | gst::StreamError::WrongType)
        )
}

/// Boxed error causes (glib and io errors are `Send + Sync`).
mod glib_error {
    pub type Boxed = Box<dyn std::error::Error + Send + Sync>;
}

impl Opener for GstOpener {
    fn device(&self) -> &str {
        &self.device
    }

    fn what(&self) -> &'static str {
        "stream"
    }

    fn open(&mut self) -> Result<Box<dyn Capture>, DeviceError> {
        let element = gst::parse::launch(&self.launch)
            .map_err(|e| self.error("the pipeline does not parse", false, Some(Box::new(e))))?;
        let Ok(bin) = element.downcast::<gst::Bin>() else {
            return Err(self.error("the pipeline is a single element, without an appsink named `sink`", false, None));
        };
        let pipeline = Pipeline { bin, device: self.device.clone() };
        let sink = pipeline
            .bin
            .by_name("sink")
            .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            .ok_or_else(|| self.error("the pipeline has no appsink named `sink`", false, None))?;
        sink.set_drop(true);
        sink.set_max_buffers(1);
        sink.set_sync(self.played.sync());
        sink.set_caps(Some(&gst::Caps::builder("video/x-raw").field("format", "RGB").build()));
        if let Some(src) = pipeline.bin.by_name("src") {
            let latency = self.cfg.latency_ms;
            src.connect("source-setup", false, move |args| {
                if let Some(Ok(el)) = args.get(1).map(|v| v.get::<gst::Element>()) {
                    if el.has_property("latency") {
                        el.set_property("latency", latency);
                    }
                }
                None
            });
        }
        let bus = pipeline.bin.bus().ok_or_else(|| self.error("the pipeline has no bus", false, None))?;
        let mut cap = GstCapture {
            pipeline,
            sink,
            bus,
            timeout: Duration::from_millis(self.cfg.timeout_ms),
            looping: self.looping && !self.played.is_network(),
            network: self.played.is_network(),
            file: self.played.is_file(),
            device: self.device.clone(),
            key: self.played.key(),
            mode: None,
            pending: None,
            current: None,
            restarts: 0,
        };
        if cap.pipeline.bin.set_state(gst::State::Playing).is_err() {
            // The reason is on the bus.
            return Err(match cap.bus_error_now() {
                Some(e) => cap.bus_error(&e, true),
                None => self.error("the pipeline does not start", true, None),
            });
        }
        // Opened means streaming: wait for the first frame (or the error saying why not).
        let first = cap.pull(true)?;
        cap.mode = Some(mode_of(&first));
        cap.pending = Some(first);
        Ok(Box::new(cap))
    }
}

/// The pipeline, set to NULL when dropped (which stops its threads and closes its sockets).
struct Pipeline {
    bin: gst::Bin,
    device: String,
}

impl Drop for Pipeline {
    /// A flush, then NULL, on a thread of its own that the source waits for at most
    /// `TEARDOWN_WAIT`.
    ///
    /// Why the flush: setting an RTSP pipeline straight to NULL right after the server vanished
    /// deadlocks now and then (GStreamer 1.22: rtspsrc's own task, closing its rtpbin, waits for
    /// a pad's stream lock while our state change waits for that task). The source thread then
    /// hung in the drop, with the loss neither reported nor retried (CI, stop 33). Killing the
    /// server at random moments 300 times (`tests/source/gst.rs` does a short version): 16
    /// stuck teardowns over UDP and 25 over TCP without the flush, none with it (600 kills).
    /// Why the thread: should a teardown still hang, the source goes on to the next open (the
    /// loss is already reported) and the warning says so instead of the source going silent.
    fn drop(&mut self) {
        let (bin, device) = (self.bin.clone(), self.device.clone());
        let (done, wait) = crossbeam_channel::bounded::<()>(1);
        let spawned = std::thread::Builder::new().name("gst-teardown".into()).spawn(move || {
            let t = Instant::now();
            stop(&bin);
            if done.send(()).is_err() {
                log::info!("gstreamer {device}: the old pipeline stopped after {:.1} s", t.elapsed().as_secs_f64());
            }
        });
        match spawned {
            Ok(_) => {
                if wait.recv_timeout(TEARDOWN_WAIT).is_err() {
                    log::warn!(
                        "gstreamer {}: the old pipeline did not stop within {} s; it stops in the background \
                         while the source goes on",
                        self.device,
                        TEARDOWN_WAIT.as_secs()
                    );
                }
            }
            // No thread to be had: stop it here, however long that takes.
            Err(_) => stop(&self.bin),
        }
    }
}

/// Flush every pad (no streaming thread keeps a stream lock), then go to NULL.
fn stop(bin: &gst::Bin) {
    let _ = bin.send_event(gst::event::FlushStart::new());
    let _ = bin.set_state(gst::State::Null);
}

/// What one pull found.
enum Pulled {
    Sample(gst::Sample),
    Error(gst::Message),
    Eos,
}

/// A playing pipeline.
struct GstCapture {
    sink: gst_app::AppSink,
    bus: gst::Bus,
    timeout: Duration,
    looping: bool,
    network: bool,
    file: bool,
    device: String,
    key: &'static str,
    mode: Option<Mode>,
    /// The first sample, pulled by `open`.
    pending: Option<gst::Sample>,
    /// The frame handed out last (kept mapped until the next call).
    current: Option<gst::MappedBuffer<gst::buffer::Readable>>,
    restarts: u64,
    // Last, so the appsink and bus handles go before the pipeline is set to NULL.
    pipeline: Pipeline,
}

fn mode_of(sample: &gst::Sample) -> Mode {
    let (w, h, fps) = sample
        .caps()
        .and_then(|c| c.structure(0))
        .map(|s| {
            let fps = s.get::<gst::Fraction>("framerate").ok().filter(|f| f.numer() > 0 && f.denom() > 0);
            (
                s.get::<i32>("width").unwrap_or(0).max(0) as u32,
                s.get::<i32>("height").unwrap_or(0).max(0) as u32,
                fps.map(|f| f.numer() as f64 / f.denom() as f64),
            )
        })
        .unwrap_or((0, 0, None));
    Mode { format: PixelFormat::Rgb24, width: w, height: h, fps }
}

impl GstCapture {
    /// An error message waiting on the bus.
    fn bus_error_now(&self) -> Option<gst::Message> {
        self.bus.pop_filtered(&[gst::MessageType::Error])
    }

    fn error(&self, what: impl Into<String>, transient: bool) -> DeviceError {
        DeviceError::Gst { device: self.device.clone(), key: self.key, what: what.into(), transient, source: None }
    }

    /// A bus error as a `DeviceError` (`opening`: classified by `never_plays`; else transient).
    fn bus_error(&self, msg: &gst::Message, opening: bool) -> DeviceError {
        let gst::MessageView::Error(err) = msg.view() else {
            return self.error("the pipeline failed", true);
        };
        let e = err.error();
        let transient = !(opening && never_plays(&e, self.file));
        let from = err.src().map(|s| s.name().to_string()).unwrap_or_else(|| "pipeline".into());
        if let Some(d) = err.debug() {
            log::debug!("gstreamer {}: {from}: {d}", self.device);
        }
        DeviceError::Gst {
            device: self.device.clone(),
            key: self.key,
            what: format!("{from} failed"),
            transient,
            source: Some(Box::new(e)),
        }
    }

    fn pull_once(&self, deadline: Instant) -> Option<Pulled> {
        loop {
            if let Some(e) = self.bus_error_now() {
                return Some(Pulled::Error(e));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let wait = left.min(PULL_SLICE);
            if let Some(s) = self.sink.try_pull_sample(gst::ClockTime::from_nseconds(wait.as_nanos() as u64)) {
                return Some(Pulled::Sample(s));
            }
            if self.sink.is_eos() {
                return Some(Pulled::Eos);
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// The next sample: a looped file goes back to its start at its end; a stream that sends
    /// nothing for `timeout` is lost.
    fn pull(&mut self, opening: bool) -> Result<gst::Sample, DeviceError> {
        let mut deadline = Instant::now() + self.timeout;
        loop {
            match self.pull_once(deadline) {
                Some(Pulled::Sample(s)) => return Ok(s),
                Some(Pulled::Error(e)) => return Err(self.bus_error(&e, opening)),
                Some(Pulled::Eos) if self.network => {
                    return Err(self.error("the server ended the stream", true));
                }
                Some(Pulled::Eos) if self.looping => {
                    let flags = gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT;
                    if self.pipeline.bin.seek_simple(flags, gst::ClockTime::ZERO).is_err() {
                        return Err(self.error("cannot seek back to the start to loop", true));
                    }
                    self.restarts += 1;
                    deadline = Instant::now() + self.timeout;
                }
                Some(Pulled::Eos) => return Err(DeviceError::EndOfStream { device: self.device.clone() }),
                None => {
                    let ms = self.timeout.as_millis() as u64;
                    return Err(self.error(format!("no frame for {ms} ms"), true));
                }
            }
        }
    }
}

impl Capture for GstCapture {
    fn mode(&self) -> Mode {
        self.mode.unwrap_or(Mode { format: PixelFormat::Rgb24, width: 0, height: 0, fps: None })
    }

    fn next_raw(&mut self) -> Result<RawFrame<'_>, DeviceError> {
        self.current = None;
        let sample = match self.pending.take() {
            Some(s) => s,
            None => self.pull(false)?,
        };
        let mode = mode_of(&sample);
        self.mode = Some(mode);
        let buffer = sample.buffer_owned().ok_or_else(|| self.error("a sample without a buffer", true))?;
        let mapped = buffer.into_mapped_buffer_readable().map_err(|_| self.error("cannot map a buffer", true))?;
        let (w, h) = (mode.width as usize, mode.height as usize);
        let line = w * 3;
        // GStreamer's default layout pads RGB lines to 4 bytes; take the stride from the size.
        let stride =
            if h > 0 && mapped.len() % h == 0 && mapped.len() / h >= line { mapped.len() / h } else { (line + 3) & !3 };
        let current = self.current.insert(mapped);
        Ok(RawFrame {
            data: current.as_slice(),
            format: PixelFormat::Rgb24,
            width: mode.width,
            height: mode.height,
            stride,
            sequence: 0,
            captured: Some(Instant::now()),
            driver_error: false,
        })
    }

    fn restarts(&self) -> u64 {
        self.restarts
    }
}
