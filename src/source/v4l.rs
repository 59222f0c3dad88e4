//! The V4L2 ioctl layer, through the `v4l` crate with mmap streaming: open a device, list what it
//! offers, set the negotiated format and rate, and hand out raw buffers with the driver's
//! timestamp mapped onto the process clock. Also the enumeration behind `ailurus devices`.
//!
//! This is the ONLY camera code that touches the kernel, and the only part of the camera path
//! that is not tested (the build machines have no /dev/video*): keep it thin. Negotiation,
//! decoding, reconnecting and recording live in `device.rs`, `decode.rs`, `reconnect.rs` and
//! `record.rs`, where they are tested against fake devices. Must not retry, sleep or decode.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use v4l::buffer::{Flags as BufFlags, Type};
use v4l::capability::Flags as CapFlags;
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream as MmapStream;
use v4l::io::traits::CaptureStream;
use v4l::video::capture::Parameters;
use v4l::video::Capture as _;
use v4l::{Device, FourCC, Fraction};

use super::device::{
    describe_offers, driver_instant, negotiate, Capture, DeviceError, DeviceInfo, FormatOffer, Mode, Rates, RawFrame,
    SizeOffer, Wanted,
};
use super::V4lConfig;

/// Opens the configured camera (called again after every loss).
pub struct V4lOpener {
    device: String,
    path: PathBuf,
    want: Wanted,
    buffers: u32,
    timeout: Duration,
}

impl V4lOpener {
    pub fn new(cfg: &V4lConfig) -> V4lOpener {
        V4lOpener {
            device: cfg.device.display().to_string(),
            path: cfg.device.clone(),
            want: cfg.wanted(),
            buffers: cfg.buffers,
            timeout: Duration::from_millis(cfg.timeout_ms),
        }
    }
}

fn io_err<'a>(device: &'a str, op: &'static str) -> impl Fn(io::Error) -> DeviceError + 'a {
    move |source| DeviceError::Io { device: device.to_string(), op, source }
}

/// Open the node, mapping "no such file" to `Missing` (the camera is not plugged in).
fn open_node(path: &Path, device: &str) -> Result<Device, DeviceError> {
    Device::with_path(path).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => DeviceError::Missing { device: device.to_string(), source },
        _ => DeviceError::Io { device: device.to_string(), op: "open", source },
    })
}

impl super::device::Opener for V4lOpener {
    fn device(&self) -> &str {
        &self.device
    }

    fn open(&mut self) -> Result<Box<dyn Capture>, DeviceError> {
        let dev_name = self.device.as_str();
        let dev = open_node(&self.path, dev_name)?;
        let caps = dev.query_caps().map_err(io_err(dev_name, "VIDIOC_QUERYCAP"))?;
        if !caps.capabilities.contains(CapFlags::VIDEO_CAPTURE | CapFlags::STREAMING) {
            return Err(DeviceError::NotCapture { device: dev_name.to_string(), card: caps.card });
        }
        let offers = enumerate(&dev, dev_name)?;
        let mode = negotiate(dev_name, &offers, &self.want)?;
        let mut fmt = dev.format().map_err(io_err(dev_name, "VIDIOC_G_FMT"))?;
        (fmt.width, fmt.height, fmt.fourcc) = (mode.width, mode.height, FourCC::new(&mode.format.fourcc()));
        let got = dev.set_format(&fmt).map_err(io_err(dev_name, "VIDIOC_S_FMT"))?;
        if got.fourcc != fmt.fourcc || got.width != mode.width || got.height != mode.height {
            let wanted = format!("{mode} (the driver set {} {}x{})", got.fourcc, got.width, got.height);
            return Err(DeviceError::Refused {
                device: dev_name.to_string(),
                wanted,
                offered: describe_offers(&offers),
            });
        }
        let mut mode = mode;
        if let Some(fps) = mode.fps {
            // Rates are advisory: the driver picks the nearest it can do; report what it chose.
            let want = Parameters::new(Fraction::new(1000, (fps * 1000.0).round().max(1.0) as u32));
            match dev.set_params(&want) {
                Ok(p) if p.interval.numerator > 0 => {
                    mode.fps = Some(p.interval.denominator as f64 / p.interval.numerator as f64)
                }
                Ok(_) => {}
                Err(e) => log::warn!("camera {dev_name}: cannot set {fps} fps ({e}); using the driver's rate"),
            }
        }
        let mut stream = MmapStream::with_buffers(&dev, Type::VideoCapture, self.buffers)
            .map_err(io_err(dev_name, "VIDIOC_REQBUFS/mmap"))?;
        stream.set_timeout(self.timeout);
        Ok(Box::new(V4lCapture {
            stream: Some(stream),
            _dev: dev,
            mode,
            stride: got.stride as usize,
            device: self.device.clone(),
            timeout_ms: self.timeout.as_millis() as u64,
        }))
    }
}

/// An open, streaming camera. Field order matters: the stream (buffers, mappings) is released
/// before the device fd.
struct V4lCapture {
    stream: Option<MmapStream<'static>>,
    _dev: Device,
    mode: Mode,
    stride: usize,
    device: String,
    timeout_ms: u64,
}

impl Capture for V4lCapture {
    fn mode(&self) -> Mode {
        self.mode
    }

    fn next_raw(&mut self) -> Result<RawFrame<'_>, DeviceError> {
        let device = self.device.as_str();
        let Some(stream) = self.stream.as_mut() else {
            return Err(DeviceError::Io {
                device: device.to_string(),
                op: "VIDIOC_DQBUF",
                source: io::Error::other("stream closed"),
            });
        };
        let (data, meta) = stream.next().map_err(|source| match source.kind() {
            io::ErrorKind::TimedOut => DeviceError::Timeout { device: device.to_string(), ms: self.timeout_ms },
            _ => DeviceError::Io { device: device.to_string(), op: "VIDIOC_DQBUF", source },
        })?;
        let used = (meta.bytesused as usize).min(data.len());
        let monotonic = (meta.flags & BufFlags::TIMESTAMP_MASK) == BufFlags::TIMESTAMP_MONOTONIC;
        let ts = Duration::new(meta.timestamp.sec.max(0) as u64, (meta.timestamp.usec.clamp(0, 999_999) * 1000) as u32);
        let captured = if monotonic {
            monotonic_now().and_then(|now_mono| driver_instant(Instant::now(), now_mono, ts))
        } else {
            None
        };
        Ok(RawFrame {
            data: &data[..used],
            format: self.mode.format,
            width: self.mode.width,
            height: self.mode.height,
            stride: self.stride,
            sequence: meta.sequence as u64,
            captured,
            driver_error: meta.flags.contains(BufFlags::ERROR),
        })
    }
}

impl Drop for V4lCapture {
    fn drop(&mut self) {
        // v4l's Stream::drop panics when VIDIOC_STREAMOFF fails with anything but ENODEV (a
        // half-unplugged device can answer EIO); a lost camera must not take the process down.
        if let Some(stream) = self.stream.take() {
            if catch_unwind(AssertUnwindSafe(move || drop(stream))).is_err() {
                log::warn!("camera {}: stopping the stream failed (device gone?)", self.device);
            }
        }
    }
}

/// CLOCK_MONOTONIC now, the clock V4L2 stamps buffers with.
fn monotonic_now() -> Option<Duration> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32))
}

fn fps_of(f: Fraction) -> Option<f64> {
    (f.numerator > 0 && f.denominator > 0).then(|| f.denominator as f64 / f.numerator as f64)
}

fn rates(dev: &Device, fourcc: FourCC, width: u32, height: u32) -> Rates {
    let Ok(list) = dev.enum_frameintervals(fourcc, width, height) else {
        return Rates::List(vec![]);
    };
    let mut fps = Vec::new();
    for iv in list {
        match iv.interval {
            FrameIntervalEnum::Discrete(f) => fps.extend(fps_of(f)),
            FrameIntervalEnum::Stepwise(s) => {
                if let (Some(min), Some(max)) = (fps_of(s.max), fps_of(s.min)) {
                    return Rates::Range { min, max };
                }
            }
        }
    }
    Rates::List(fps)
}

/// Every capture format of an open device, with its sizes and rates.
fn enumerate(dev: &Device, device: &str) -> Result<Vec<FormatOffer>, DeviceError> {
    let formats = dev.enum_formats().map_err(io_err(device, "VIDIOC_ENUM_FMT"))?;
    Ok(formats
        .into_iter()
        .map(|f| {
            let sizes = dev
                .enum_framesizes(f.fourcc)
                .unwrap_or_default()
                .into_iter()
                .map(|s| match s.size {
                    FrameSizeEnum::Discrete(d) => SizeOffer::Discrete {
                        width: d.width,
                        height: d.height,
                        rates: rates(dev, f.fourcc, d.width, d.height),
                    },
                    FrameSizeEnum::Stepwise(s) => SizeOffer::Stepwise {
                        min_width: s.min_width,
                        max_width: s.max_width,
                        step_width: s.step_width,
                        min_height: s.min_height,
                        max_height: s.max_height,
                        step_height: s.step_height,
                    },
                })
                .collect();
            FormatOffer { fourcc: f.fourcc.repr, description: f.description, sizes }
        })
        .collect())
}

/// The `/dev/video*` nodes, in numeric order.
fn video_nodes() -> Vec<PathBuf> {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix("video")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(_, p)| p).collect()
}

/// Every V4L2 node with what it offers (capture nodes) or why it could not be read.
pub fn list_devices() -> Vec<Result<DeviceInfo, DeviceError>> {
    video_nodes()
        .into_iter()
        .map(|path| {
            let device = path.display().to_string();
            let dev = open_node(&path, &device)?;
            let caps = dev.query_caps().map_err(io_err(&device, "VIDIOC_QUERYCAP"))?;
            let capture = caps.capabilities.contains(CapFlags::VIDEO_CAPTURE);
            let formats = if capture { enumerate(&dev, &device)? } else { vec![] };
            Ok(DeviceInfo { path: device, card: caps.card, driver: caps.driver, bus: caps.bus, formats })
        })
        .collect()
}
