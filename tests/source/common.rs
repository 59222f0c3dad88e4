//! Shared helpers of the source tests: the real photos, encoders written independently of the
//! library (JPEG through the `image` crate, YUYV by the BT.601 formula), a scripted fake camera
//! that fails on a schedule, a fake clock, a seeded RNG and a log capture.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ailurus::source::clock::Clock;
use ailurus::source::decode::PixelFormat;
use ailurus::source::device::{
    negotiate, Capture, DeviceError, FormatOffer, Mode, Opener, Rates, RawFrame, SizeOffer, Wanted,
};
use image::RgbImage;

pub fn photos_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/photos")
}

/// The real photos (fetched by tools/fetch_assets.sh), as RGB, sorted by name.
pub fn photos() -> Vec<(String, RgbImage)> {
    let files = ailurus::source::folder::list_images(&photos_dir())
        .expect("photos in .cache/photos: run tools/fetch_assets.sh");
    files
        .iter()
        .map(|p| {
            (p.file_name().unwrap().to_string_lossy().into_owned(), image::open(p).expect("photo decodes").to_rgb8())
        })
        .collect()
}

/// Crop to an even width (YUYV pairs pixels).
pub fn even_width(img: &RgbImage) -> RgbImage {
    let w = img.width() & !1;
    image::imageops::crop_imm(img, 0, 0, w, img.height()).to_image()
}

/// Baseline JPEG through the `image` crate (standard Huffman tables, 4:2:0).
pub fn encode_jpeg(img: &RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
    img.write_with_encoder(enc).expect("jpeg encodes");
    out
}

/// Remove every DHT segment (what MJPEG cameras send).
pub fn strip_dht(jpeg: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    let mut i = 2;
    loop {
        assert_eq!(jpeg[i], 0xFF, "marker expected at {i}");
        let m = jpeg[i + 1];
        if m == 0xDA {
            out.extend_from_slice(&jpeg[i..]);
            return out;
        }
        let len = ((jpeg[i + 2] as usize) << 8) | jpeg[i + 3] as usize;
        if m != 0xC4 {
            out.extend_from_slice(&jpeg[i..i + 2 + len]);
        }
        i += 2 + len;
    }
}

/// RGB to BT.601 limited-range YUV, in floating point.
pub fn rgb_to_yuv(p: [u8; 3]) -> [f64; 3] {
    let [r, g, b] = p.map(|c| c as f64);
    let y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0;
    let u = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0;
    let v = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0;
    [y, u, v]
}

/// Pack an image as YUYV: luma per pixel, chroma averaged over each horizontal pair.
pub fn encode_yuyv(img: &RgbImage) -> Vec<u8> {
    let (w, h) = img.dimensions();
    assert!(w % 2 == 0);
    let q = |v: f64| v.round().clamp(0.0, 255.0) as u8;
    let mut out = Vec::with_capacity((w * h * 2) as usize);
    for y in 0..h {
        for x in (0..w).step_by(2) {
            let a = rgb_to_yuv(img.get_pixel(x, y).0);
            let b = rgb_to_yuv(img.get_pixel(x + 1, y).0);
            out.extend_from_slice(&[q(a[0]), q((a[1] + b[1]) / 2.0), q(b[0]), q((a[2] + b[2]) / 2.0)]);
        }
    }
    out
}

/// Per-channel absolute differences of two equally sized RGB buffers: (mean, max).
pub fn diff_stats(a: &[u8], b: &[u8]) -> (f64, u8) {
    assert_eq!(a.len(), b.len());
    let mut sum = 0u64;
    let mut max = 0u8;
    for (x, y) in a.iter().zip(b) {
        let d = x.abs_diff(*y);
        sum += d as u64;
        max = max.max(d);
    }
    (sum as f64 / a.len() as f64, max)
}

pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mse: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>() / a.len() as f64;
    10.0 * (255.0f64 * 255.0 / mse.max(1e-9)).log10()
}

/// xorshift64*: a seeded, dependency-free RNG.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A clock that never sleeps: `sleep` records the request and advances `now`; it sets
/// `stop_after` sleeps' worth of the stop flag when asked to.
pub struct FakeClock {
    pub now: Mutex<Instant>,
    pub sleeps: Mutex<Vec<Duration>>,
    pub stop: Arc<AtomicBool>,
    pub stop_after: Option<usize>,
}

impl FakeClock {
    pub fn new(stop: Arc<AtomicBool>, stop_after: Option<usize>) -> Arc<FakeClock> {
        Arc::new(FakeClock { now: Mutex::new(Instant::now()), sleeps: Mutex::new(vec![]), stop, stop_after })
    }
    pub fn sleeps_ms(&self) -> Vec<u64> {
        self.sleeps.lock().unwrap().iter().map(|d| d.as_millis() as u64).collect()
    }
}

impl Clock for FakeClock {
    fn now(&self) -> Instant {
        *self.now.lock().unwrap()
    }
    fn sleep(&self, d: Duration) {
        let mut s = self.sleeps.lock().unwrap();
        s.push(d);
        *self.now.lock().unwrap() += d;
        if self.stop_after.is_some_and(|n| s.len() >= n) {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

/// One step of a fake camera's life.
#[derive(Debug, Clone)]
pub enum Ev {
    /// `open` fails: the node is missing.
    Missing,
    /// `open` fails: the device is busy.
    Busy,
    /// `open` succeeds (negotiating against `offers`).
    Open,
    /// `next_raw` delivers this payload.
    Frame(Vec<u8>),
    /// `next_raw` delivers a buffer the driver flagged as corrupt.
    DriverError,
    /// `next_raw` fails: unplugged.
    Unplug,
    /// `next_raw` times out: the camera stopped sending.
    Stall,
}

/// Shared state of a fake camera: the script, and how many handles are open now / at most.
#[derive(Default)]
pub struct FakeState {
    pub script: Mutex<VecDeque<Ev>>,
    pub live: AtomicUsize,
    pub max_live: AtomicUsize,
    pub opens: AtomicUsize,
}

/// A fake camera device: negotiates like the real one, holds a real fd per handle (so that
/// leaks show in /proc/self/fd), and plays its script; an empty script means "unplugged".
pub struct FakeOpener {
    pub device: String,
    pub offers: Vec<FormatOffer>,
    pub want: Wanted,
    pub state: Arc<FakeState>,
    pub captured: Option<Instant>,
}

pub fn mjpeg_offers(w: u32, h: u32) -> Vec<FormatOffer> {
    vec![FormatOffer {
        fourcc: *b"MJPG",
        description: "Motion-JPEG".into(),
        sizes: vec![SizeOffer::Discrete { width: w, height: h, rates: Rates::List(vec![30.0, 15.0]) }],
    }]
}

impl FakeOpener {
    pub fn new(device: &str, w: u32, h: u32, script: Vec<Ev>) -> FakeOpener {
        let state = Arc::new(FakeState { script: Mutex::new(script.into()), ..Default::default() });
        FakeOpener {
            device: device.into(),
            offers: mjpeg_offers(w, h),
            want: Wanted { width: w, height: h, fps: 30.0, formats: vec![PixelFormat::Mjpeg, PixelFormat::Yuyv] },
            state,
            captured: None,
        }
    }
}

fn missing(device: &str) -> DeviceError {
    DeviceError::Missing { device: device.into(), source: std::io::Error::from(std::io::ErrorKind::NotFound) }
}

impl Opener for FakeOpener {
    fn device(&self) -> &str {
        &self.device
    }
    fn open(&mut self) -> Result<Box<dyn Capture>, DeviceError> {
        let ev = self.state.script.lock().unwrap().pop_front();
        match ev {
            Some(Ev::Open) => {}
            Some(Ev::Busy) => {
                return Err(DeviceError::Io {
                    device: self.device.clone(),
                    op: "open",
                    source: std::io::Error::from_raw_os_error(16),
                })
            }
            Some(Ev::Missing) | None => return Err(missing(&self.device)),
            Some(other) => panic!("script: open met {other:?}"),
        }
        let mode = negotiate(&self.device, &self.offers, &self.want)?;
        let fd = File::open("/dev/null").expect("/dev/null");
        let live = self.state.live.fetch_add(1, Ordering::SeqCst) + 1;
        self.state.max_live.fetch_max(live, Ordering::SeqCst);
        self.state.opens.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(FakeCapture {
            _fd: fd,
            mode,
            state: self.state.clone(),
            device: self.device.clone(),
            buf: vec![],
            seq: 0,
            captured: self.captured,
        }))
    }
}

pub struct FakeCapture {
    _fd: File,
    mode: Mode,
    state: Arc<FakeState>,
    device: String,
    buf: Vec<u8>,
    seq: u64,
    captured: Option<Instant>,
}

impl Drop for FakeCapture {
    fn drop(&mut self) {
        self.state.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Capture for FakeCapture {
    fn mode(&self) -> Mode {
        self.mode
    }
    fn next_raw(&mut self) -> Result<RawFrame<'_>, DeviceError> {
        let ev = self.state.script.lock().unwrap().pop_front();
        let driver_error = match ev {
            Some(Ev::Frame(data)) => {
                self.buf = data;
                false
            }
            Some(Ev::DriverError) => {
                self.buf = vec![0xFF, 0xD8];
                true
            }
            Some(Ev::Stall) => return Err(DeviceError::Timeout { device: self.device.clone(), ms: 2000 }),
            Some(Ev::Unplug) | None => {
                return Err(DeviceError::Io {
                    device: self.device.clone(),
                    op: "VIDIOC_DQBUF",
                    source: std::io::Error::from_raw_os_error(19),
                })
            }
            Some(other) => panic!("script: next_raw met {other:?}"),
        };
        self.seq += 1;
        Ok(RawFrame {
            data: &self.buf,
            format: self.mode.format,
            width: self.mode.width,
            height: self.mode.height,
            stride: 0,
            sequence: self.seq,
            captured: self.captured,
            driver_error,
        })
    }
}

/// Captures log lines (installed once per test binary).
pub struct LogCapture(pub Mutex<Vec<String>>);

impl log::Log for LogCapture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        if r.target().starts_with("ailurus") {
            self.0.lock().unwrap().push(format!("{} {}", r.level(), r.args()));
        }
    }
    fn flush(&self) {}
}

pub fn logs() -> &'static LogCapture {
    static L: OnceLock<&'static LogCapture> = OnceLock::new();
    L.get_or_init(|| {
        let l: &'static LogCapture = Box::leak(Box::new(LogCapture(Mutex::new(vec![]))));
        let _ = log::set_logger(l);
        log::set_max_level(log::LevelFilter::Info);
        l
    })
}

/// Open fds of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count()
}
