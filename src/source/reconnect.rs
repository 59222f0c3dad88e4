//! A camera source that survives its camera: it wraps an `Opener`, and when the device is
//! missing, unplugged or stops sending it drops the handle, marks the health "camera down",
//! logs "waiting for /dev/video0" and retries with exponential backoff until frames flow again.
//! Raw frames are converted to RGB into pooled buffers and stamped with the driver's time.
//!
//! Owns the retry policy (`Backoff`, on the injectable `clock::Clock`, so tests never sleep) and
//! the up/down bookkeeping. Must not issue ioctls (that is `v4l.rs`) or parse pixels (that is
//! `decode.rs`). `next_frame` blocks while the camera is down and returns `Ok(None)` once the
//! stop flag is set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub use super::clock::{Clock, RealClock};
use super::decode::Decoder;
use super::device::{Capture, DeviceError, Opener, RawFrame};
use super::health::SourceHealth;
use super::{FrameSource, SourceError};
use crate::frame::{Frame, FramePool};

/// Exponential backoff: `min`, doubling up to `max`; `reset` after a frame arrives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let min = min.min(max);
        Backoff { min, max, next: min }
    }
    /// The delay to wait now; the following one doubles (capped at `max`).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max).max(self.min);
        d
    }
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Retry and logging policy.
#[derive(Debug, Clone, Copy)]
pub struct ReconnectOptions {
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// While down, repeat the "still waiting" line this often.
    pub log_every: Duration,
    /// Free RGB buffers kept for reuse.
    pub pool_size: usize,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        ReconnectOptions {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            log_every: Duration::from_secs(30),
            pool_size: 4,
        }
    }
}

/// Longest single sleep, so that a stop request is seen promptly.
const SLEEP_SLICE: Duration = Duration::from_millis(50);

/// The reconnecting camera source (see the module doc).
pub struct ReconnectingSource {
    opener: Box<dyn Opener>,
    cap: Option<Box<dyn Capture>>,
    clock: Arc<dyn Clock>,
    stop: Arc<AtomicBool>,
    opts: ReconnectOptions,
    backoff: Backoff,
    health: Arc<SourceHealth>,
    decoder: Decoder,
    pool: Arc<FramePool>,
    name: String,
    seq: u64,
    ever_streamed: bool,
    /// When the current outage began (`None` while streaming or before the first open).
    down_since: Option<Instant>,
    last_wait_log: Option<Instant>,
    attempts: u64,
    /// "camera" or "stream" (the opener's `what`), for logs.
    what: &'static str,
    /// Successful opens so far: with the capture's restarts, the frames' epoch.
    opens: u64,
}

impl ReconnectingSource {
    /// A source that opens the device on the first `next_frame`.
    pub fn new(
        opener: Box<dyn Opener>,
        opts: ReconnectOptions,
        clock: Arc<dyn Clock>,
        stop: Arc<AtomicBool>,
    ) -> ReconnectingSource {
        let name = opener.device().to_string();
        let what = opener.what();
        ReconnectingSource {
            health: Arc::new(SourceHealth::new(name.clone(), what, false)),
            pool: Arc::new(FramePool::new(opts.pool_size)),
            backoff: Backoff::new(opts.backoff_min, opts.backoff_max),
            opener,
            cap: None,
            clock,
            stop,
            opts,
            decoder: Decoder::new(),
            name,
            seq: 0,
            ever_streamed: false,
            down_since: None,
            last_wait_log: None,
            attempts: 0,
            what,
            opens: 0,
        }
    }

    /// Try to open the device once now. A missing or failing device is not an error (the source
    /// starts down and keeps retrying); a configuration problem (format refused, not a capture
    /// device, no camera support) is.
    pub fn start(
        opener: Box<dyn Opener>,
        opts: ReconnectOptions,
        clock: Arc<dyn Clock>,
        stop: Arc<AtomicBool>,
    ) -> Result<ReconnectingSource, SourceError> {
        let mut s = ReconnectingSource::new(opener, opts, clock, stop);
        match s.opener.open() {
            Ok(cap) => {
                log::info!("{} {}: opened, {}", s.what, s.name, cap.mode());
                s.cap = Some(cap);
                s.opens += 1;
            }
            Err(e) if e.is_transient() => {
                s.health.open_failed();
                s.went_down(&e);
            }
            Err(e) => return Err(SourceError::Device(e)),
        }
        Ok(s)
    }

    /// The pool the RGB buffers come from (give frames back with `recycle`).
    pub fn pool(&self) -> Arc<FramePool> {
        self.pool.clone()
    }

    /// Whether a device handle is held now.
    pub fn is_open(&self) -> bool {
        self.cap.is_some()
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Sleep the next backoff delay, in slices, returning early on stop.
    fn wait(&mut self) {
        let mut left = self.backoff.next_delay();
        while !left.is_zero() && !self.stopped() {
            let d = left.min(SLEEP_SLICE);
            self.clock.sleep(d);
            left -= d;
        }
    }

    fn went_down(&mut self, e: &DeviceError) {
        self.health.set_down(e);
        self.attempts += 1;
        let now = self.clock.now();
        let dev = &self.name;
        if self.down_since.is_none() {
            self.down_since = Some(now);
            self.last_wait_log = Some(now);
            let max = self.opts.backoff_max.as_secs_f64();
            if self.ever_streamed {
                log::warn!("{} {dev} lost ({e}); waiting for {dev}, retrying with backoff up to {max} s", self.what);
            } else {
                log::warn!("{} down ({e}); waiting for {dev}, retrying with backoff up to {max} s", self.what);
            }
            if !e.is_transient() {
                log::error!("{e}");
            }
        } else if self.last_wait_log.is_none_or(|t| now.duration_since(t) >= self.opts.log_every) {
            self.last_wait_log = Some(now);
            let secs = self.down_since.map_or(0.0, |t| now.duration_since(t).as_secs_f64());
            log::warn!("still waiting for {dev} after {secs:.0} s, {} attempts ({e})", self.attempts);
        }
    }

    fn came_up(&mut self) {
        let now = self.clock.now();
        let mode = self.cap.as_ref().map(|c| c.mode().to_string()).unwrap_or_default();
        if self.ever_streamed {
            self.health.reconnected();
            let secs = self.down_since.map_or(0.0, |t| now.duration_since(t).as_secs_f64());
            log::info!("{} {} back after {secs:.1} s ({mode}); frames resume", self.what, self.name);
        } else {
            log::info!("{} {}: streaming {mode}", self.what, self.name);
        }
        self.health.set_up();
        self.ever_streamed = true;
        self.down_since = None;
        self.attempts = 0;
        self.backoff.reset();
    }
}

/// Turn one raw frame into an RGB frame from the pool (free function: `raw` borrows the capture).
fn convert(
    raw: RawFrame<'_>,
    seq: u64,
    origin: &str,
    decoder: &mut Decoder,
    pool: &FramePool,
    clock: &dyn Clock,
) -> Result<Frame, SourceError> {
    if raw.driver_error {
        return Err(SourceError::BadFrame {
            origin: origin.to_string(),
            seq,
            msg: "the driver flagged the buffer as corrupt".into(),
        });
    }
    let mut rgb = pool.take(0);
    match decoder.decode(raw.format, raw.data, raw.width, raw.height, raw.stride, &mut rgb) {
        Ok((width, height)) => {
            let now = clock.now();
            let captured = raw.captured.unwrap_or(now);
            let age = now.saturating_duration_since(captured);
            Ok(Frame {
                seq,
                captured,
                captured_wall: SystemTime::now().checked_sub(age).unwrap_or_else(SystemTime::now),
                width,
                height,
                rgb,
                origin: origin.to_string(),
                stream: crate::frame::unnamed(),
                stream_index: 0,
                epoch: 0,
            })
        }
        Err(source) => {
            pool.give(rgb);
            Err(SourceError::Decode { origin: origin.to_string(), seq, source })
        }
    }
}

impl FrameSource for ReconnectingSource {
    fn name(&self) -> &str {
        &self.name
    }

    /// The next good frame; blocks (retrying) while the camera is down. A corrupt frame is
    /// counted and returned as `Err(Decode | BadFrame)` for the caller to skip.
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        loop {
            if self.stopped() {
                return Ok(None);
            }
            if self.cap.is_none() {
                match self.opener.open() {
                    Ok(cap) => {
                        log::info!("{} {}: opened, {}", self.what, self.name, cap.mode());
                        self.cap = Some(cap);
                        self.opens += 1;
                    }
                    Err(e) => {
                        self.health.open_failed();
                        self.went_down(&e);
                        self.wait();
                        continue;
                    }
                }
            }
            let Some(cap) = self.cap.as_mut() else {
                continue;
            };
            let seq = self.seq;
            let outcome = match cap.next_raw() {
                Ok(raw) => Ok(convert(raw, seq, &self.name, &mut self.decoder, &self.pool, &*self.clock)),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(result) => {
                    self.seq += 1;
                    if !self.health.is_up() {
                        self.came_up();
                    }
                    return match result {
                        Ok(mut frame) => {
                            // Epoch 0 is the first open; each reopen or restart adds one.
                            let restarts = self.cap.as_ref().map_or(0, |c| c.restarts());
                            frame.epoch = self.opens.saturating_sub(1) + restarts;
                            self.health.frame();
                            Ok(Some(frame))
                        }
                        Err(e) => {
                            self.health.bad_frame();
                            self.health.note_error(&e);
                            Err(e)
                        }
                    };
                }
                Err(DeviceError::EndOfStream { .. }) => {
                    self.cap = None;
                    log::info!("{} {}: end of stream", self.what, self.name);
                    return Ok(None);
                }
                Err(e) => {
                    // Say it is down first (releasing the handle can take a while: a GStreamer
                    // pipeline's teardown), then release it before any re-open, so a re-open
                    // never holds two.
                    self.went_down(&e);
                    self.cap = None;
                    self.wait();
                }
            }
        }
    }

    fn recycle(&mut self, frame: Frame) {
        self.pool.give(frame.rgb);
    }

    fn health(&self) -> Option<Arc<SourceHealth>> {
        Some(self.health.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let got: Vec<u64> = (0..6).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(got, [100, 200, 400, 700, 700, 700]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn backoff_with_min_over_max_uses_max() {
        let mut b = Backoff::new(Duration::from_secs(9), Duration::from_secs(2));
        assert_eq!(b.next_delay(), Duration::from_secs(2));
        assert_eq!(b.next_delay(), Duration::from_secs(2));
    }
}
