//! Metrics: per-stage latency histograms, counters, gauges, the periodic log line, the
//! Prometheus text rendering and the health summary.
//!
//! Owns `Metrics` (shared as `Arc<Metrics>` by every pipeline thread; recording is lock-free
//! atomics) and `Histogram`. Must not decide anything: the controller and the pipeline write
//! here, the HTTP endpoint and the log read.
//!
//! Why our own histogram and exposition rather than `hdrhistogram` / `prometheus-client`:
//! every pipeline thread records into the same histograms, and recording must stay lock-free
//! (one `fetch_add` per sample). `hdrhistogram` records through `&mut` (a shared one needs a
//! Mutex or a channel-fed `SyncHistogram` with a refresh thread), and `prometheus-client` would
//! keep a second registry of the same atomics. The log-linear buckets here are ~60 lines, and
//! the text format 0.0.4 is rendered by one function, tested against the exposition rules.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod histogram;

use histogram::hist_lines;
pub use histogram::{HistSnapshot, Histogram, PROM_BOUNDS_S};

/// The timed stages, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Capture to publish (handing the mask to the sinks): the end-to-end latency.
    EndToEnd = 0,
    Preprocess,
    Stem,
    Reduce,
    Middle,
    Head,
    Postprocess,
}

pub const STAGES: [Stage; 7] =
    [Stage::EndToEnd, Stage::Preprocess, Stage::Stem, Stage::Reduce, Stage::Middle, Stage::Head, Stage::Postprocess];

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::EndToEnd => "capture_to_publish",
            Stage::Preprocess => "preprocess",
            Stage::Stem => "stem",
            Stage::Reduce => "reduce",
            Stage::Middle => "middle",
            Stage::Head => "head",
            Stage::Postprocess => "postprocess",
        }
    }
}

/// The queues between stages whose drops are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    SourceToPre = 0,
    PreToInfer,
    InferToPost,
}

pub const EDGES: [Edge; 3] = [Edge::SourceToPre, Edge::PreToInfer, Edge::InferToPost];

impl Edge {
    pub fn name(self) -> &'static str {
        match self {
            Edge::SourceToPre => "source_to_preprocess",
            Edge::PreToInfer => "preprocess_to_infer",
            Edge::InferToPost => "infer_to_postprocess",
        }
    }
}

/// One sink's counters.
pub struct SinkMetrics {
    pub name: String,
    pub latency: Histogram,
    pub published: AtomicU64,
    pub dropped: Arc<AtomicU64>,
    pub errors: AtomicU64,
}

struct TimedHist {
    total: Histogram,
    window: Histogram,
}

/// What `/healthz` needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Health {
    pub uptime: Duration,
    pub frames_published: u64,
    /// Since the last mask was published (None: none yet).
    pub since_last_frame: Option<Duration>,
    /// How long the inference in progress has been running (None: idle).
    pub inferring_for: Option<Duration>,
}

impl Health {
    /// True when no mask was published for `limit` (counting from start when none ever was),
    /// or one inference has been running for longer than `limit`.
    pub fn is_stuck(&self, limit: Duration) -> bool {
        self.since_last_frame.unwrap_or(self.uptime) > limit || self.inferring_for.is_some_and(|d| d > limit)
    }
}

/// Everything measured about a running pipeline. Shared as `Arc<Metrics>`.
pub struct Metrics {
    start: Instant,
    stages: Vec<TimedHist>,
    edge_drops: [Arc<AtomicU64>; 3],
    pub sinks: Vec<SinkMetrics>,
    pub frames_captured: AtomicU64,
    pub frames_published: AtomicU64,
    pub deadline_misses: AtomicU64,
    /// Frames the source could not deliver (corrupt image, truncated read).
    pub bad_frames: AtomicU64,
    /// Frames the engine failed on.
    pub failed_frames: AtomicU64,
    /// Frames dropped because a newer frame was already published (inference lanes finish out
    /// of order).
    pub out_of_order: AtomicU64,
    /// Inference lanes (frames inferred at once).
    lanes: AtomicU64,
    input_size: AtomicU64,
    m: AtomicU64,
    target_ms: AtomicU64,
    unreachable: AtomicBool,
    load: AtomicU64,
    /// Temporal reuse (f64 bits, NaN until a frame reused): the last frame's active fraction,
    /// the active fraction its stream's controller expects, and predicted cost / full cost.
    reuse_active: AtomicU64,
    reuse_expected: AtomicU64,
    reuse_factor: AtomicU64,
    /// Nanoseconds since `start` of the last publish / each lane's inference start, +1 (0 =
    /// never / idle).
    last_publish_ns: AtomicU64,
    infer_started_ns: [AtomicU64; crate::engine::MAX_LANES],
    window: Mutex<Window>,
}

struct Window {
    started: Instant,
    published_at_start: u64,
    misses_at_start: u64,
    fps: f64,
    last: Vec<HistSnapshot>,
}

impl Metrics {
    /// Metrics for a pipeline whose sinks are named `sinks` (in the order they are run).
    pub fn new(sinks: &[&str]) -> Metrics {
        let now = Instant::now();
        Metrics {
            start: now,
            stages: STAGES
                .iter()
                .map(|_| TimedHist { total: Histogram::default(), window: Histogram::default() })
                .collect(),
            edge_drops: Default::default(),
            sinks: sinks
                .iter()
                .map(|n| SinkMetrics {
                    name: n.to_string(),
                    latency: Histogram::default(),
                    published: AtomicU64::new(0),
                    dropped: Arc::new(AtomicU64::new(0)),
                    errors: AtomicU64::new(0),
                })
                .collect(),
            frames_captured: AtomicU64::new(0),
            frames_published: AtomicU64::new(0),
            deadline_misses: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            failed_frames: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            lanes: AtomicU64::new(1),
            input_size: AtomicU64::new(0),
            m: AtomicU64::new(0),
            target_ms: AtomicU64::new(0f64.to_bits()),
            unreachable: AtomicBool::new(false),
            load: AtomicU64::new(1f64.to_bits()),
            reuse_active: AtomicU64::new(f64::NAN.to_bits()),
            reuse_expected: AtomicU64::new(f64::NAN.to_bits()),
            reuse_factor: AtomicU64::new(f64::NAN.to_bits()),
            last_publish_ns: AtomicU64::new(0),
            infer_started_ns: Default::default(),
            window: Mutex::new(Window {
                started: now,
                published_at_start: 0,
                misses_at_start: 0,
                fps: 0.0,
                last: vec![],
            }),
        }
    }

    fn since_start_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64 + 1
    }

    pub fn record(&self, stage: Stage, d: Duration) {
        let h = &self.stages[stage as usize];
        h.total.record(d);
        h.window.record(d);
    }

    /// Cumulative histogram of a stage.
    pub fn stage(&self, stage: Stage) -> &Histogram {
        &self.stages[stage as usize].total
    }

    /// The drop counter of an edge (the queue increments it).
    pub fn edge_counter(&self, e: Edge) -> Arc<AtomicU64> {
        self.edge_drops[e as usize].clone()
    }

    pub fn dropped(&self, e: Edge) -> u64 {
        self.edge_drops[e as usize].load(Relaxed)
    }

    /// A mask was handed to the sinks `e2e` after capture; `deadline` is the current target.
    pub fn published(&self, e2e: Duration, input_size: u32, m: usize) {
        self.record(Stage::EndToEnd, e2e);
        self.frames_published.fetch_add(1, Relaxed);
        let target = f64::from_bits(self.target_ms.load(Relaxed));
        if target > 0.0 && e2e.as_secs_f64() * 1e3 > target {
            self.deadline_misses.fetch_add(1, Relaxed);
        }
        self.input_size.store(input_size as u64, Relaxed);
        self.m.store(m as u64, Relaxed);
        self.last_publish_ns.store(self.since_start_ns(), Relaxed);
    }

    /// The M of the last published frame.
    pub fn current_m(&self) -> usize {
        self.m.load(Relaxed) as usize
    }

    pub fn set_target_ms(&self, ms: f64) {
        self.target_ms.store(ms.to_bits(), Relaxed);
    }

    /// The latency budget target, ms (0: none set).
    pub fn target_ms(&self) -> f64 {
        f64::from_bits(self.target_ms.load(Relaxed))
    }

    /// Controller state: whether even the cheapest setting misses, and the load factor
    /// (measured cost / calibrated cost).
    pub fn set_controller(&self, unreachable: bool, load: f64) {
        self.unreachable.store(unreachable, Relaxed);
        self.load.store(load.to_bits(), Relaxed);
    }

    /// Temporal reuse on the last frame: its active fraction and the one its stream's
    /// controller expects (None: none reused yet).
    pub fn set_reuse(&self, active: f64, expected: Option<f64>) {
        self.reuse_active.store(active.to_bits(), Relaxed);
        self.reuse_expected.store(expected.unwrap_or(f64::NAN).to_bits(), Relaxed);
    }

    /// Temporal reuse: the controller's predicted cost / full cost of its current setting.
    pub fn set_reuse_factor(&self, factor: f64) {
        self.reuse_factor.store(factor.to_bits(), Relaxed);
    }

    /// (last active fraction, expected, cost factor); NaN where not set.
    pub fn reuse(&self) -> (f64, f64, f64) {
        let f = |a: &AtomicU64| f64::from_bits(a.load(Relaxed));
        (f(&self.reuse_active), f(&self.reuse_expected), f(&self.reuse_factor))
    }

    /// The number of inference lanes (shown in the log line and `/metrics`).
    pub fn set_lanes(&self, lanes: usize) {
        self.lanes.store(lanes as u64, Relaxed);
    }

    pub fn lanes(&self) -> usize {
        self.lanes.load(Relaxed) as usize
    }

    pub fn lane_infer_started(&self, lane: usize) {
        if let Some(a) = self.infer_started_ns.get(lane) {
            a.store(self.since_start_ns(), Relaxed);
        }
    }

    pub fn lane_infer_finished(&self, lane: usize) {
        if let Some(a) = self.infer_started_ns.get(lane) {
            a.store(0, Relaxed);
        }
    }

    pub fn health(&self) -> Health {
        let now = self.since_start_ns();
        let ago = |v: u64| (v != 0).then(|| Duration::from_nanos(now.saturating_sub(v)));
        Health {
            uptime: self.start.elapsed(),
            frames_published: self.frames_published.load(Relaxed),
            since_last_frame: ago(self.last_publish_ns.load(Relaxed)),
            // The longest-running inference of any lane.
            inferring_for: ago(self
                .infer_started_ns
                .iter()
                .map(|a| a.load(Relaxed))
                .filter(|&v| v != 0)
                .min()
                .unwrap_or(0)),
        }
    }

    /// Close the current window: its quantiles are kept for `render_prometheus`, and a one-line
    /// summary of it is returned (for the periodic log).
    pub fn log_line(&self) -> String {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let secs = w.started.elapsed().as_secs_f64().max(1e-9);
        let published = self.frames_published.load(Relaxed);
        let misses = self.deadline_misses.load(Relaxed);
        let n = published - w.published_at_start;
        w.fps = n as f64 / secs;
        w.last = self.stages.iter().map(|h| h.window.take()).collect();
        let e2e = &w.last[Stage::EndToEnd as usize];
        let q = |s: Stage, p: f64| w.last[s as usize].quantile_ms(p);
        let mut line = format!(
            "{n} frames in {secs:.1}s ({:.2} FPS, {} lane(s)); e2e p50/p90/p99/max {:.0}/{:.0}/{:.0}/{:.0} ms; \
             p50 pre {:.0} stem {:.0} reduce {:.1} middle {:.0} head {:.0} post {:.0} ms; \
             setting {}px M={}; misses {} (total {misses}); drops",
            w.fps,
            self.lanes(),
            e2e.quantile_ms(0.5),
            e2e.quantile_ms(0.9),
            e2e.quantile_ms(0.99),
            e2e.max_ms(),
            q(Stage::Preprocess, 0.5),
            q(Stage::Stem, 0.5),
            q(Stage::Reduce, 0.5),
            q(Stage::Middle, 0.5),
            q(Stage::Head, 0.5),
            q(Stage::Postprocess, 0.5),
            self.input_size.load(Relaxed),
            self.m.load(Relaxed),
            misses - w.misses_at_start,
        );
        for e in EDGES {
            let _ = write!(line, " {} {}", e.name(), self.dropped(e));
        }
        let _ = write!(line, " out_of_order {}", self.out_of_order.load(Relaxed));
        for s in &self.sinks {
            let _ = write!(line, " sink:{} {}", s.name, s.dropped.load(Relaxed));
        }
        let _ = write!(line, "; bad {} failed {}", self.bad_frames.load(Relaxed), self.failed_frames.load(Relaxed));
        let (active, expected, factor) = self.reuse();
        if active.is_finite() {
            let _ = write!(line, "; reuse active {active:.3} expected {expected:.3} cost x{factor:.2}");
        }
        if self.unreachable.load(Relaxed) {
            line += "; BUDGET UNREACHABLE";
        }
        w.started = Instant::now();
        w.published_at_start = published;
        w.misses_at_start = misses;
        line
    }

    /// The Prometheus text exposition (format 0.0.4) of everything here.
    pub fn render_prometheus(&self) -> String {
        let mut o = String::with_capacity(8192);
        let help = |o: &mut String, name: &str, kind: &str, text: &str| {
            let _ = writeln!(o, "# HELP ailurus_{name} {text}\n# TYPE ailurus_{name} {kind}");
        };
        help(
            &mut o,
            "stage_latency_seconds",
            "histogram",
            "Latency of each pipeline stage (capture_to_publish is end to end).",
        );
        for (s, h) in STAGES.iter().zip(&self.stages) {
            hist_lines(&mut o, "stage_latency_seconds", &format!("stage=\"{}\"", s.name()), &h.total);
        }
        help(&mut o, "sink_latency_seconds", "histogram", "Time a sink took to publish one frame.");
        for s in &self.sinks {
            hist_lines(&mut o, "sink_latency_seconds", &format!("sink=\"{}\"", esc(&s.name)), &s.latency);
        }
        help(&mut o, "stage_latency_recent_seconds", "gauge", "Latency quantiles over the last log window.");
        {
            let w = self.window.lock().unwrap_or_else(|e| e.into_inner());
            for (s, snap) in STAGES.iter().zip(&w.last) {
                for (qn, q) in [("0.5", 0.5), ("0.9", 0.9), ("0.99", 0.99), ("1", 1.0)] {
                    let v = if q == 1.0 { snap.max_ms() } else { snap.quantile_ms(q) };
                    if v.is_finite() {
                        let _ = writeln!(
                            o,
                            "ailurus_stage_latency_recent_seconds{{stage=\"{}\",quantile=\"{qn}\"}} {}",
                            s.name(),
                            v / 1e3
                        );
                    }
                }
            }
            help(&mut o, "fps", "gauge", "Frames published per second over the last log window.");
            let _ = writeln!(o, "ailurus_fps {}", w.fps);
        }
        let counters: [(&str, &str, u64); 5] = [
            ("frames_captured_total", "Frames delivered by the source.", self.frames_captured.load(Relaxed)),
            ("frames_published_total", "Masks handed to the sinks.", self.frames_published.load(Relaxed)),
            (
                "deadline_misses_total",
                "Frames whose capture-to-publish latency exceeded the budget target.",
                self.deadline_misses.load(Relaxed),
            ),
            ("bad_frames_total", "Frames the source could not deliver (skipped).", self.bad_frames.load(Relaxed)),
            ("failed_frames_total", "Frames the engine failed on (skipped).", self.failed_frames.load(Relaxed)),
        ];
        for (name, text, v) in counters {
            help(&mut o, name, "counter", text);
            let _ = writeln!(o, "ailurus_{name} {v}");
        }
        help(
            &mut o,
            "frames_dropped_total",
            "counter",
            "Frames replaced in a latest-frame-wins queue, refused by a full sink queue, or finished \
             after a newer frame was published (edge=\"out_of_order\", inference lanes).",
        );
        for e in EDGES {
            let _ = writeln!(o, "ailurus_frames_dropped_total{{edge=\"{}\"}} {}", e.name(), self.dropped(e));
        }
        let _ =
            writeln!(o, "ailurus_frames_dropped_total{{edge=\"out_of_order\"}} {}", self.out_of_order.load(Relaxed));
        for s in &self.sinks {
            let _ = writeln!(
                o,
                "ailurus_frames_dropped_total{{edge=\"sink:{}\"}} {}",
                esc(&s.name),
                s.dropped.load(Relaxed)
            );
        }
        help(&mut o, "sink_errors_total", "counter", "Publish errors per sink.");
        for s in &self.sinks {
            let _ = writeln!(o, "ailurus_sink_errors_total{{sink=\"{}\"}} {}", esc(&s.name), s.errors.load(Relaxed));
        }
        let health = self.health();
        let gauges: [(&str, &str, f64); 7] = [
            ("lanes", "Inference lanes: frames inferred at once, each on its own plans.", self.lanes() as f64),
            (
                "setting_input_size",
                "Model input side of the last published frame.",
                self.input_size.load(Relaxed) as f64,
            ),
            (
                "setting_m",
                "Tokens the middle blocks ran on for the last published frame (M).",
                self.m.load(Relaxed) as f64,
            ),
            ("budget_target_seconds", "The latency budget target.", f64::from_bits(self.target_ms.load(Relaxed)) / 1e3),
            (
                "budget_unreachable",
                "1 when even the cheapest setting is predicted to miss the budget.",
                self.unreachable.load(Relaxed) as u8 as f64,
            ),
            (
                "budget_load_factor",
                "Measured cost over calibrated cost (2 = twice as slow as calibrated).",
                f64::from_bits(self.load.load(Relaxed)),
            ),
            (
                "last_frame_age_seconds",
                "Seconds since the last mask was published (since start when none was).",
                health.since_last_frame.unwrap_or(health.uptime).as_secs_f64(),
            ),
        ];
        for (name, text, v) in gauges {
            help(&mut o, name, "gauge", text);
            let _ = writeln!(o, "ailurus_{name} {v}");
        }
        let (active, expected, factor) = self.reuse();
        let reuse: [(&str, &str, f64); 3] = [
            (
                "reuse_active_fraction",
                "Temporal reuse: (token, block) pairs recomputed over all of them, last frame.",
                active,
            ),
            (
                "reuse_expected_active_fraction",
                "Temporal reuse: the active fraction the budget controller expects of the next frame of that stream.",
                expected,
            ),
            (
                "reuse_cost_factor",
                "Temporal reuse: the budget controller's predicted cost over a full frame's, current setting.",
                factor,
            ),
        ];
        for (name, text, v) in reuse.into_iter().filter(|r| r.2.is_finite()) {
            help(&mut o, name, "gauge", text);
            let _ = writeln!(o, "ailurus_{name} {v}");
        }
        help(
            &mut o,
            "inference_running_seconds",
            "gauge",
            "How long the longest-running inference in progress has run (0 when idle).",
        );
        let _ =
            writeln!(o, "ailurus_inference_running_seconds {}", health.inferring_for.unwrap_or_default().as_secs_f64());
        o
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
