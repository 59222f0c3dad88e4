//! Fakes for the pipeline tests: an engine whose output encodes its input, a scripted source,
//! recording and hanging sinks, and a controller over the fake sizes.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ailurus::budget::CalibrationTable;
use ailurus::budget::{BudgetConfig, Controller};
use ailurus::engine::{Engine, EngineError, FrameIo, Setting, SizeInfo, StageTimes};
use ailurus::frame::{Frame, Mask};
use ailurus::pre::Resampler;
use ailurus::sink::{Output, Sink, SinkError};
use ailurus::source::{FrameSource, SourceError};

/// Input sizes 56 (16 tokens) and 28 (4 tokens). The output says which frame it came from
/// (mask class = the frame's first byte) and how much it kept: the salient fraction of the
/// mask is size/56 * M/N, so fidelity against 56/16 is measurable.
pub struct FakeEngine {
    sizes: Vec<SizeInfo>,
    pub fail_seq: Option<u64>,
    /// The frame whose output has a NaN (the inference itself succeeds).
    pub nan_seq: Option<u64>,
    pub work: Duration,
    /// When set, the sleep of frame `seq` (instead of `work`): frames that finish out of order.
    pub work_for: Option<fn(u64) -> Duration>,
    pub infers: AtomicU64,
    /// Inferences running now and the most ever at once (an `Arc`: the engine moves into the
    /// pipeline, the test keeps a clone).
    pub concurrency: Arc<Concurrency>,
    /// When set, the first inference waits (up to 10 s) until this many run at once: a
    /// rendezvous that shows the lanes infer concurrently without timing anything.
    pub rendezvous: Option<usize>,
    /// When set, inference sleeps `work` scaled by the setting like the table's costs: 56 px
    /// at 0.5 + 0.5 * M/N (1 at M = N), 28 px at 0.5.
    pub by_setting: bool,
}

/// In-flight inference counter of a [`FakeEngine`].
#[derive(Debug, Default)]
pub struct Concurrency {
    pub now: AtomicUsize,
    pub peak: AtomicUsize,
}

impl Concurrency {
    fn enter(&self) -> InFlight<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        InFlight(self)
    }

    /// Wait until `n` inferences have run at once, or `limit` has passed.
    fn wait_for_peak(&self, n: usize, limit: Duration) {
        let t = Instant::now();
        while self.peak.load(Ordering::SeqCst) < n && t.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// One inference in flight, until dropped.
struct InFlight<'a>(&'a Concurrency);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl FakeEngine {
    pub fn new(work: Duration) -> FakeEngine {
        FakeEngine {
            sizes: vec![SizeInfo { input_size: 56, n_tokens: 16 }, SizeInfo { input_size: 28, n_tokens: 4 }],
            fail_seq: None,
            nan_seq: None,
            work,
            work_for: None,
            infers: AtomicU64::new(0),
            concurrency: Arc::default(),
            rendezvous: None,
            by_setting: false,
        }
    }
}

/// One pipeline lane over a shared [`FakeEngine`] (the test keeps the `Arc` to read counters).
pub struct FakeLane(pub Arc<FakeEngine>);

impl Engine for FakeLane {
    fn sizes(&self) -> &[SizeInfo] {
        &self.0.sizes
    }

    fn infer(
        &mut self,
        input: &[f32],
        setting: Setting,
        times: &mut StageTimes,
        out: &mut Vec<f32>,
    ) -> Result<usize, EngineError> {
        self.0.infer(input, setting, times, out)
    }
}

/// The fake's pre/post: the input says which frame it is; the mask says what was kept.
impl FrameIo for FakeEngine {
    fn preprocess(&self, frame: &Frame, input_size: u32, _rs: &mut Resampler, out: &mut Vec<f32>) {
        let s = input_size as usize;
        out.clear();
        out.resize(3 * s * s, 0.0);
        out[0] = frame.rgb[0] as f32;
        out[1] = frame.seq as f32;
    }

    fn postprocess(&self, raw: &[f32], input_size: u32, w: u32, h: u32, _rs: &mut Resampler, mask: &mut Mask) {
        let px = (w * h) as usize;
        let keep = (px as f64 * raw[1] as f64 * input_size as f64 / 56.0).round() as usize;
        mask.width = w;
        mask.height = h;
        mask.num_classes = 2;
        mask.classes.clear();
        mask.classes.extend((0..px).map(|i| if i == 0 { raw[0] as u8 } else { (i < keep) as u8 }));
        mask.scores.clear();
        mask.scores.extend(mask.classes[..].iter().enumerate().map(|(i, &c)| if i == 0 { 0.0 } else { c as f32 }));
    }
}

impl FakeEngine {
    pub fn sizes(&self) -> &[SizeInfo] {
        &self.sizes
    }

    /// Every lane's inference (shared counters: `&self`).
    pub fn infer(
        &self,
        input: &[f32],
        setting: Setting,
        times: &mut StageTimes,
        out: &mut Vec<f32>,
    ) -> Result<usize, EngineError> {
        let first = self.infers.fetch_add(1, Ordering::Relaxed) == 0;
        let _in_flight = self.concurrency.enter();
        if let (true, Some(n)) = (first, self.rendezvous) {
            self.concurrency.wait_for_peak(n, Duration::from_secs(10));
        }
        if self.fail_seq == Some(input[1] as u64) {
            return Err(EngineError::Infer {
                input_size: setting.input_size,
                m: setting.m,
                source: anyhow::anyhow!("fake failure"),
            });
        }
        let n = self
            .sizes
            .iter()
            .find(|s| s.input_size == setting.input_size)
            .ok_or(EngineError::NoPlan(setting.input_size))?
            .n_tokens;
        let mut work = self.work_for.map_or(self.work, |f| f(input[1] as u64));
        if self.by_setting {
            let u = setting.m.min(n) as f64 / n as f64;
            work = work.mul_f64(if setting.input_size == 56 { 0.5 + 0.5 * u } else { 0.5 });
        }
        if !work.is_zero() {
            std::thread::sleep(work);
        }
        times.stem = work / 4;
        times.middle = work / 2;
        times.head = work / 4;
        out.clear();
        out.push(input[0]);
        out.push(setting.m.min(n) as f32 / n as f32);
        if self.nan_seq == Some(input[1] as u64) {
            out[1] = f32::NAN;
        }
        Ok(setting.m.min(n))
    }
}

/// Frames 0..n (n = 0: endless); `bad_at` is delivered as a corrupt frame. The first byte of
/// a frame is its seq mod 251.
pub struct FakeSource {
    pub n: u64,
    pub next: u64,
    pub bad_at: Option<u64>,
}

impl FakeSource {
    pub fn new(n: u64) -> FakeSource {
        FakeSource { n, next: 0, bad_at: None }
    }
}

impl FrameSource for FakeSource {
    fn name(&self) -> &str {
        "fake"
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.n > 0 && self.next >= self.n {
            return Ok(None);
        }
        let seq = self.next;
        self.next += 1;
        if self.bad_at == Some(seq) {
            return Err(SourceError::BadFrame { origin: "fake".into(), seq, msg: "corrupt".into() });
        }
        let mut f = Frame::new(seq, 8, 6);
        f.rgb[0] = (seq % 251) as u8;
        Ok(Some(f))
    }
}

/// What a recording sink saw of one output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seen {
    pub seq: u64,
    pub frame_byte: u8,
    pub mask_byte: u8,
    pub input_size: u32,
    pub m: usize,
    pub latency: Duration,
}

#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<Seen>>>);

impl Sink for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    fn publish(&mut self, out: &Output) -> Result<(), SinkError> {
        self.0.lock().unwrap().push(Seen {
            seq: out.frame.seq,
            frame_byte: out.frame.rgb[0],
            mask_byte: out.mask.classes[0],
            input_size: out.input_size,
            m: out.m,
            latency: out.latency,
        });
        Ok(())
    }
}

/// A sink whose first publish never returns.
pub struct Hang;

impl Sink for Hang {
    fn name(&self) -> &'static str {
        "hang"
    }

    fn publish(&mut self, _out: &Output) -> Result<(), SinkError> {
        loop {
            std::thread::park();
        }
    }
}

/// A sink that fails every publish.
pub struct Failing;

impl Sink for Failing {
    fn name(&self) -> &'static str {
        "failing"
    }

    fn publish(&mut self, _out: &Output) -> Result<(), SinkError> {
        Err(SinkError::Other { sink: "failing", msg: "disk full".into() })
    }
}

pub const TABLE: &str = "input_size,m,n_tokens,cost_ms,iou,mae\n\
56,16,16,2.0,1,0\n56,8,16,1.5,0.9,0.05\n56,4,16,1.2,0.8,0.08\n28,4,4,1.0,0.7,0.1\n";

pub fn budget(enabled: bool) -> BudgetConfig {
    BudgetConfig {
        enabled,
        target_ms: 10_000.0,
        sizes: vec![56, 28],
        m_min: 4,
        m_max: 16,
        m_step: 4,
        ..BudgetConfig::default()
    }
}

pub fn controller(eng: &FakeEngine, cfg: &BudgetConfig) -> Controller {
    let table = CalibrationTable::parse(TABLE, "test table").unwrap();
    Controller::new(cfg, eng.sizes(), true, Setting { input_size: 56, m: 16 }, &table).unwrap()
}
