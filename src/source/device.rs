//! The capture-device abstraction between the V4L2 ioctl layer (`v4l.rs`, untested here) and
//! everything above it (reconnect, record, tests with fake devices): what a device offers, how a
//! mode is chosen from the config, and the raw frames it hands out.
//!
//! Owns the `Opener`/`Capture` traits, `DeviceError`, and the pure negotiation and listing
//! logic. Must not issue ioctls, decode pixels, sleep or retry.

use std::time::{Duration, Instant};

use super::decode::PixelFormat;

/// Errors of a capture device, each naming the device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The device node does not exist (unplugged, or not yet plugged).
    #[error("{device}: no such device")]
    Missing {
        device: String,
        #[source]
        source: std::io::Error,
    },
    /// An ioctl or read failed (device busy, unplugged mid-stream, I/O error).
    #[error("{device}: {op}: {source}")]
    Io {
        device: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The device exists but cannot stream video capture.
    #[error("{device} ({card}) is not a streaming video capture device")]
    NotCapture { device: String, card: String },
    /// None of the wanted formats is offered, or the driver changed the format we set.
    #[error("{device}: the camera refuses {wanted}; it offers: {offered}")]
    Refused { device: String, wanted: String, offered: String },
    /// The device is open but sent nothing for too long.
    #[error("{device}: no frame for {ms} ms (the camera stopped sending)")]
    Timeout { device: String, ms: u64 },
    /// This build has no V4L2 support.
    #[error("{device}: this build has no camera support (built without the `camera` feature)")]
    NotSupported { device: String },
    /// A GStreamer pipeline cannot be built or failed (`gst.rs`); `transient`: a server or
    /// camera that may come back, as opposed to a pipeline that can never play.
    #[error("[source.gstreamer] {key} {device}: {what}{}", cause(.source))]
    Gst {
        device: String,
        key: &'static str,
        what: String,
        transient: bool,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A file came to its end and is not looped: the source ends (not an outage).
    #[error("{device}: end of stream")]
    EndOfStream { device: String },
}

/// `: <the cause>` (shown in the one line, since the binary prints the top error only).
fn cause(source: &Option<Box<dyn std::error::Error + Send + Sync>>) -> String {
    source.as_ref().map(|s| format!(": {s}")).unwrap_or_default()
}

impl DeviceError {
    /// Whether waiting and retrying can fix it (the device may come back); the others are
    /// configuration problems and fail start-up.
    pub fn is_transient(&self) -> bool {
        match self {
            DeviceError::Missing { .. } | DeviceError::Io { .. } | DeviceError::Timeout { .. } => true,
            DeviceError::Gst { transient, .. } => *transient,
            _ => false,
        }
    }

    pub fn device(&self) -> &str {
        match self {
            DeviceError::Missing { device, .. }
            | DeviceError::Io { device, .. }
            | DeviceError::NotCapture { device, .. }
            | DeviceError::Refused { device, .. }
            | DeviceError::Timeout { device, .. }
            | DeviceError::NotSupported { device }
            | DeviceError::Gst { device, .. }
            | DeviceError::EndOfStream { device } => device,
        }
    }
}

/// The negotiated capture mode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mode {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Frame rate asked of the device (`None`: the device's default).
    pub fps: Option<f64>,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}x{}", self.format, self.width, self.height)?;
        if let Some(fps) = self.fps {
            write!(f, " at {fps} fps")?;
        }
        Ok(())
    }
}

/// One raw frame as the device delivered it, borrowed from the driver's buffer until the next
/// call to `next_raw`.
#[derive(Debug)]
pub struct RawFrame<'a> {
    pub data: &'a [u8],
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    /// Bytes per line for raw formats (0 = packed).
    pub stride: usize,
    /// The driver's frame counter (gaps are frames the driver dropped).
    pub sequence: u64,
    /// The driver's capture timestamp mapped onto the process clock (`None`: unknown).
    pub captured: Option<Instant>,
    /// The driver flagged the buffer as corrupt.
    pub driver_error: bool,
}

/// An open, streaming device. Dropping it must release every resource (fd, mappings).
pub trait Capture: Send {
    fn mode(&self) -> Mode;
    /// Block until the next frame (or the device's timeout).
    fn next_raw(&mut self) -> Result<RawFrame<'_>, DeviceError>;
    /// Times the device restarted its stream without being reopened (a looped file going
    /// back to its start); each is a discontinuity for whoever compares frames.
    fn restarts(&self) -> u64 {
        0
    }
}

/// Opens a device, negotiating the mode; called again after each loss.
pub trait Opener: Send {
    /// The device path, for logs and health.
    fn device(&self) -> &str;
    /// What to call it in logs and health ("camera down", "stream down").
    fn what(&self) -> &'static str {
        "camera"
    }
    fn open(&mut self) -> Result<Box<dyn Capture>, DeviceError>;
}

/// Frame rates a device offers for one size.
#[derive(Debug, Clone, PartialEq)]
pub enum Rates {
    /// Discrete rates, frames per second.
    List(Vec<f64>),
    /// Any rate between the two (frames per second).
    Range { min: f64, max: f64 },
}

/// Sizes a device offers for one format.
#[derive(Debug, Clone, PartialEq)]
pub enum SizeOffer {
    Discrete { width: u32, height: u32, rates: Rates },
    Stepwise { min_width: u32, max_width: u32, step_width: u32, min_height: u32, max_height: u32, step_height: u32 },
}

/// One format a device offers, with its sizes (empty: the device does not enumerate them).
#[derive(Debug, Clone, PartialEq)]
pub struct FormatOffer {
    pub fourcc: [u8; 4],
    pub description: String,
    pub sizes: Vec<SizeOffer>,
}

/// What the config asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    /// Preferred formats, best first.
    pub formats: Vec<PixelFormat>,
}

impl Wanted {
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.formats.iter().map(|f| f.name()).collect();
        format!("{} at {}x{}", names.join(" or "), self.width, self.height)
    }
}

fn fits(step_min: u32, step_max: u32, step: u32, v: u32) -> bool {
    v >= step_min && v <= step_max && (step <= 1 || (v - step_min).is_multiple_of(step))
}

/// Pick the first wanted format the device offers at the wanted size, and the offered rate
/// closest to the wanted one. Err lists everything the device offers.
pub fn negotiate(device: &str, offers: &[FormatOffer], want: &Wanted) -> Result<Mode, DeviceError> {
    for &format in &want.formats {
        for offer in offers.iter().filter(|o| PixelFormat::from_fourcc(&o.fourcc) == Some(format)) {
            if offer.sizes.is_empty() {
                return Ok(Mode { format, width: want.width, height: want.height, fps: Some(want.fps) });
            }
            for size in &offer.sizes {
                match size {
                    SizeOffer::Discrete { width, height, rates } if (*width, *height) == (want.width, want.height) => {
                        return Ok(Mode {
                            format,
                            width: want.width,
                            height: want.height,
                            fps: Some(pick_rate(rates, want.fps)),
                        });
                    }
                    SizeOffer::Stepwise { min_width, max_width, step_width, min_height, max_height, step_height }
                        if fits(*min_width, *max_width, *step_width, want.width)
                            && fits(*min_height, *max_height, *step_height, want.height) =>
                    {
                        return Ok(Mode { format, width: want.width, height: want.height, fps: Some(want.fps) });
                    }
                    _ => {}
                }
            }
        }
    }
    Err(DeviceError::Refused { device: device.to_string(), wanted: want.describe(), offered: describe_offers(offers) })
}

fn pick_rate(rates: &Rates, want: f64) -> f64 {
    match rates {
        Rates::List(list) if !list.is_empty() => {
            list.iter().copied().min_by(|a, b| (a - want).abs().total_cmp(&(b - want).abs())).unwrap_or(want)
        }
        Rates::Range { min, max } => want.clamp(*min, *max),
        Rates::List(_) => want,
    }
}

fn fmt_fps(f: f64) -> String {
    if (f - f.round()).abs() < 0.01 {
        format!("{}", f.round())
    } else {
        format!("{f:.2}")
    }
}

fn describe_size(s: &SizeOffer) -> String {
    match s {
        SizeOffer::Discrete { width, height, rates } => {
            let r = match rates {
                Rates::List(l) if l.is_empty() => String::new(),
                Rates::List(l) => format!(" ({} fps)", l.iter().map(|&f| fmt_fps(f)).collect::<Vec<_>>().join(", ")),
                Rates::Range { min, max } => format!(" ({}-{} fps)", fmt_fps(*min), fmt_fps(*max)),
            };
            format!("{width}x{height}{r}")
        }
        SizeOffer::Stepwise { min_width, max_width, step_width, min_height, max_height, step_height } => {
            format!("{min_width}-{max_width} (step {step_width}) x {min_height}-{max_height} (step {step_height})")
        }
    }
}

/// One format with its sizes and rates: `MJPG 1280x720 (30, 15 fps), 640x480 (30 fps)`.
pub fn describe_offer(o: &FormatOffer) -> String {
    let name = String::from_utf8_lossy(&o.fourcc).into_owned();
    let note = if PixelFormat::from_fourcc(&o.fourcc).is_none() { " [not supported by ailurus]" } else { "" };
    let sizes: Vec<String> = o.sizes.iter().map(describe_size).collect();
    let sizes = if sizes.is_empty() { "sizes not listed".to_string() } else { sizes.join(", ") };
    format!("{name}{note} {sizes}")
}

/// Every offered format on one line, `; `-separated ("nothing" when empty).
pub fn describe_offers(offers: &[FormatOffer]) -> String {
    if offers.is_empty() {
        return "nothing".to_string();
    }
    offers.iter().map(describe_offer).collect::<Vec<_>>().join("; ")
}

/// Map a driver timestamp on CLOCK_MONOTONIC (`ts`) onto the process clock, given one moment
/// read on both clocks (`now`, `mono_now`). `None` when the stamp lies in the future or more than
/// 10 s back (a driver stamping with some other clock).
pub fn driver_instant(now: Instant, mono_now: Duration, ts: Duration) -> Option<Instant> {
    let age = mono_now.checked_sub(ts)?;
    if age > Duration::from_secs(10) {
        return None;
    }
    now.checked_sub(age)
}

/// A camera found by `ailurus devices`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceInfo {
    pub path: String,
    pub card: String,
    pub driver: String,
    pub bus: String,
    pub formats: Vec<FormatOffer>,
}

/// The `ailurus devices` listing: one block per camera, one line per format, and the config
/// lines that select it.
pub fn format_listing(found: &[Result<DeviceInfo, DeviceError>]) -> String {
    if found.is_empty() {
        return "no V4L2 devices found (is the camera plugged in? see `ls /dev/video*`)\n".to_string();
    }
    let mut s = String::new();
    for item in found {
        match item {
            Ok(d) => {
                s += &format!("{}: {} (driver {}, bus {})\n", d.path, d.card, d.driver, d.bus);
                if d.formats.is_empty() {
                    s += "  no capture formats (a metadata or output node)\n";
                }
                for f in &d.formats {
                    s += &format!("  {}\n", describe_offer(f));
                }
            }
            Err(e) => s += &format!("{e}\n"),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offers() -> Vec<FormatOffer> {
        vec![
            FormatOffer {
                fourcc: *b"YUYV",
                description: "YUYV 4:2:2".into(),
                sizes: vec![SizeOffer::Discrete { width: 640, height: 480, rates: Rates::List(vec![30.0, 15.0]) }],
            },
            FormatOffer {
                fourcc: *b"MJPG",
                description: "Motion-JPEG".into(),
                sizes: vec![
                    SizeOffer::Discrete { width: 1280, height: 720, rates: Rates::List(vec![30.0]) },
                    SizeOffer::Discrete { width: 640, height: 480, rates: Rates::List(vec![60.0, 30.0]) },
                ],
            },
            FormatOffer { fourcc: *b"H264", description: "H.264".into(), sizes: vec![] },
        ]
    }

    fn want(w: u32, h: u32, fps: f64, f: &[PixelFormat]) -> Wanted {
        Wanted { width: w, height: h, fps, formats: f.to_vec() }
    }

    #[test]
    fn preference_order_wins_over_device_order() {
        let m = negotiate("/dev/video0", &offers(), &want(640, 480, 30.0, &[PixelFormat::Mjpeg, PixelFormat::Yuyv]))
            .unwrap();
        assert_eq!(m, Mode { format: PixelFormat::Mjpeg, width: 640, height: 480, fps: Some(30.0) });
        let m = negotiate("/dev/video0", &offers(), &want(640, 480, 25.0, &[PixelFormat::Yuyv])).unwrap();
        assert_eq!(m.fps, Some(30.0), "closest offered rate");
    }

    #[test]
    fn falls_back_to_the_next_format_when_the_size_is_missing() {
        let m = negotiate("/dev/video0", &offers(), &want(1280, 720, 30.0, &[PixelFormat::Yuyv, PixelFormat::Mjpeg]))
            .unwrap();
        assert_eq!(m.format, PixelFormat::Mjpeg);
    }

    #[test]
    fn refusal_lists_what_the_device_offers() {
        let err =
            negotiate("/dev/video0", &offers(), &want(1920, 1080, 30.0, &[PixelFormat::Mjpeg, PixelFormat::Grey]))
                .unwrap_err();
        let msg = err.to_string();
        assert!(!err.is_transient());
        assert!(msg.contains("/dev/video0: the camera refuses MJPG or GREY at 1920x1080"), "{msg}");
        assert!(msg.contains("YUYV 640x480 (30, 15 fps)"), "{msg}");
        assert!(msg.contains("MJPG 1280x720 (30 fps), 640x480 (60, 30 fps)"), "{msg}");
        assert!(msg.contains("H264 [not supported by ailurus] sizes not listed"), "{msg}");
        assert!(!msg.contains('\n'));
    }

    #[test]
    fn stepwise_sizes_respect_the_step() {
        let o = vec![FormatOffer {
            fourcc: *b"GREY",
            description: String::new(),
            sizes: vec![SizeOffer::Stepwise {
                min_width: 16,
                max_width: 1920,
                step_width: 16,
                min_height: 16,
                max_height: 1080,
                step_height: 8,
            }],
        }];
        assert!(negotiate("d", &o, &want(640, 480, 30.0, &[PixelFormat::Grey])).is_ok());
        assert!(negotiate("d", &o, &want(641, 480, 30.0, &[PixelFormat::Grey])).is_err());
        assert!(negotiate("d", &o, &want(640, 2000, 30.0, &[PixelFormat::Grey])).is_err());
    }

    #[test]
    fn driver_timestamps_map_onto_the_process_clock() {
        let now = Instant::now();
        let mono = Duration::from_secs(1000);
        let got = driver_instant(now, mono, mono - Duration::from_millis(40)).unwrap();
        assert_eq!(now - got, Duration::from_millis(40));
        assert_eq!(driver_instant(now, mono, mono + Duration::from_millis(1)), None, "future stamp");
        assert_eq!(driver_instant(now, mono, Duration::from_secs(3)), None, "another clock");
    }

    #[test]
    fn listing_says_when_nothing_is_found() {
        assert!(format_listing(&[]).starts_with("no V4L2 devices found"));
        let info = DeviceInfo {
            path: "/dev/video0".into(),
            card: "Cam".into(),
            driver: "uvcvideo".into(),
            bus: "usb-1".into(),
            formats: offers(),
        };
        let text = format_listing(&[Ok(info)]);
        assert!(text.starts_with("/dev/video0: Cam (driver uvcvideo, bus usb-1)\n  YUYV 640x480"), "{text}");
    }
}
