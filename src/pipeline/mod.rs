//! The streaming pipeline: source -> preprocess -> infer -> postprocess -> sinks.
//!
//! Every stage is a thread; stages are joined by depth-1 latest-value-wins slots (`slot.rs`,
//! drops counted per edge) and each sink runs behind its own bounded queue (`sinks.rs`).
//! Inference gives postprocess up to `POST_PATIENCE` to take the previous result before
//! replacing it: with at most `MAX_IN_FLIGHT` frames in flight that never builds latency, and a
//! finished inference is not thrown away because a thread was descheduled for a moment.
//! Frames carry their sequence number and capture time from the source to the sinks.
//!
//! Using both cores: inference (tract, multi-threaded matmuls) overlaps with the
//! preprocessing of the next frame and the postprocessing of the previous one (at most
//! `MAX_IN_FLIGHT` frames between "preprocess starts" and "published"). Preprocessing starts
//! just in time: when inference is predicted to end within the time preprocessing takes, so
//! the frame it takes is as fresh as possible and no prepared frame waits behind a running
//! inference. When inference overruns its prediction, a prepared input that has waited for
//! `REFRESH_LEADS` leads is replaced by a fresher frame (a counted `preprocess_to_infer`
//! drop), so a frame never waits long behind a slow inference.
//! `[pipeline] overlap = false` runs one frame at a time (for comparison).
//!
//! Inference lanes (`[pipeline] lanes`): one infer thread per lane, each owning its engine
//! (its own states and scratch over plans shared by all lanes: no lock on the per-frame path),
//! all taking prepared inputs from the same slot, so up to `lanes` frames are
//! inferred at once (throughput mode: lanes = cores, `[model] threads = 1`). Up to `lanes + 1`
//! frames are in flight; preprocessing starts when any lane is idle or about to finish. Frames
//! carry a ticket (their preprocessing order): postprocess briefly holds a frame that finished
//! before an older one still running, so frames are published in order, and a frame older
//! than one already published is dropped and counted (`out_of_order`), never published.
//!
//! Several named sources (`[streams.NAME]`): `streams::Streams` runs each on its own thread
//! and is the pipeline's source, pulled on demand, taking the next fresh frame round-robin
//! over the streams; postprocess counts each stream's masks (`Parts::streams`). Each stream
//! has its own budget controller (a copy of `Parts::controller` keeping the stream's
//! `target_ms`): a frame is decided and refined by its stream's controller, its latency goes
//! to that one, and its preprocess + inference cost to every stream's (cost does not depend on
//! the camera).
//!
//! With temporal reuse (`[reuse]`), each lane keeps one reuse cache per stream (the engine's
//! `switch_stream`), so the streams' frames taking turns keep reusing; the frame's cost and
//! active fraction go to the controllers (`Controller::observe_reuse`): the stream's own one
//! follows its scene's activity, so a static camera keeps a larger setting.
//!
//! Preprocessing (resize + normalise) and postprocessing (upsample + threshold/argmax) are
//! stages of their own, run with the model's `FrameIo`; the engine only infers.
//!
//! Owns the threads and the queues. Must not decide settings (that is the budget controller)
//! nor render metrics (metrics.rs).

pub mod sinks;
pub mod slot;
mod stages;
pub mod streams;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crossbeam_channel::Sender;

use crate::budget::{BudgetConfig, BudgetError, CalibrationTable, Controller};
use crate::engine::{Engine, FrameIo, ReuseInfo, MAX_LANES};
use crate::metrics::Metrics;
use crate::problems::Problems;
use crate::reduce::ReduceConfig;
use crate::sink::Sink;
use crate::source::FrameSource;

pub use sinks::SinkRunner;

/// `[pipeline]`
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Seconds between metrics log lines.
    pub log_every_s: f64,
    /// Stop after this many frames (0 = run until stopped).
    pub max_frames: u64,
    /// Overlap pre/postprocessing with inference (false: one frame at a time).
    pub overlap: bool,
    /// Outputs queued per sink before that sink's frames are dropped.
    pub sink_queue: usize,
    /// At shutdown, how long sinks get to publish what is queued.
    pub drain_timeout_s: f64,
    /// Frames inferred at once, each on its own engine (1..=MAX_LANES).
    pub lanes: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            log_every_s: 10.0,
            max_frames: 0,
            overlap: true,
            sink_queue: 2,
            drain_timeout_s: 5.0,
            lanes: 1,
        }
    }
}

impl PipelineConfig {
    pub fn validate(&self, p: &mut Problems) {
        p.check(self.log_every_s > 0.0, "pipeline", "log_every_s", || format!("{} must be > 0", self.log_every_s));
        p.check(self.sink_queue >= 1, "pipeline", "sink_queue", || "must be >= 1".into());
        p.check(self.drain_timeout_s >= 0.0 && self.drain_timeout_s.is_finite(), "pipeline", "drain_timeout_s", || {
            format!("{} must be >= 0", self.drain_timeout_s)
        });
        p.check((1..=MAX_LANES).contains(&self.lanes), "pipeline", "lanes", || {
            format!("{} must be 1..={MAX_LANES} (frames inferred at once)", self.lanes)
        });
    }
}

/// Frames between "preprocess starts" and "published" when overlapping, with one lane
/// (`lanes + 1` with more).
pub const MAX_IN_FLIGHT: usize = 2;

/// How the source is driven.
pub enum SourceMode {
    /// Frames are taken on demand (files played as fast as inference goes): the source runs
    /// inside the preprocess thread, when a frame is needed, so no decoded frame goes stale.
    Pull,
    /// The source produces at its own pace (camera, paced files) on its own thread; the latest
    /// frame wins and the others are dropped and counted.
    Live,
}

/// Everything a pipeline is built from.
pub struct Parts {
    /// One engine per inference lane (1..=`MAX_LANES`), each moved to its lane's thread.
    /// `config.lanes` is how many `app::start` builds; a mismatch is logged.
    pub engines: Vec<Box<dyn Engine>>,
    /// The pre- and postprocess stages' work (`model::Io` for the real model).
    pub io: Arc<dyn FrameIo>,
    pub source: Box<dyn FrameSource>,
    pub mode: SourceMode,
    pub sinks: Vec<Box<dyn Sink>>,
    /// The budget controller; with `streams`, every stream gets its own copy keeping the
    /// stream's target (`StreamCounters::target_override`, else this one's).
    pub controller: Controller,
    /// Built with `Metrics::new` over the sinks' names, in order.
    pub metrics: Arc<Metrics>,
    pub config: PipelineConfig,
    /// Per-stream counters by stream index (`streams::Streams::info`); empty for one source.
    pub streams: Vec<Arc<streams::StreamCounters>>,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("pipeline stage {stage}: cannot start its thread: {source}")]
    Spawn {
        stage: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("pipeline stage {stage}: panicked")]
    Panicked { stage: &'static str },
    #[error("pipeline: metrics has {have} sink(s), {want} sink(s) were given")]
    SinkCount { have: usize, want: usize },
    #[error("pipeline: {0} engine(s) given: one per lane, 1..={MAX_LANES} lanes")]
    Lanes(usize),
}

/// Logs the first of a kind of message at once, then at most one per `every`, with the count
/// of those skipped in between.
pub struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    skipped: u64,
}

impl RateLimited {
    pub fn new(every: Duration) -> RateLimited {
        RateLimited { every, last: None, skipped: 0 }
    }

    pub fn warn(&mut self, msg: impl FnOnce() -> String) {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            self.skipped += 1;
            return;
        }
        match std::mem::take(&mut self.skipped) {
            0 => log::warn!("{}", msg()),
            n => log::warn!("{} ({n} similar message(s) skipped)", msg()),
        }
        self.last = Some(Instant::now());
    }
}

/// Who may start preprocessing: frames in flight, a prepared input waiting, and when each
/// lane's running inference is expected to end. Also which frame (ticket) each lane runs, so
/// postprocess knows whether an older frame is still coming.
struct Gate {
    st: Mutex<GateState>,
    cv: Condvar,
}

struct GateState {
    in_flight: usize,
    /// When the prepared input waiting for inference was prepared.
    pending: Option<Instant>,
    /// Per lane: when its running inference is predicted to end (None: idle).
    busy_until: Vec<Option<Instant>>,
    /// Per lane: the ticket of the frame it is inferring (None: idle).
    running: Vec<Option<u64>>,
    /// A stale input was already replaced since the last inference started.
    refreshed: bool,
}

/// A prepared input older than `REFRESH_LEADS` preprocessing leads (and at least
/// `REFRESH_MIN`) while inference overruns its prediction is replaced by a fresher frame, once
/// per inference.
const REFRESH_LEADS: u32 = 8;
const REFRESH_MIN: Duration = Duration::from_millis(500);

impl Gate {
    fn new(lanes: usize) -> Gate {
        Gate {
            st: Mutex::new(GateState {
                in_flight: 0,
                pending: None,
                busy_until: vec![None; lanes],
                running: vec![None; lanes],
                refreshed: false,
            }),
            cv: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut GateState)) {
        f(&mut self.lock());
        self.cv.notify_all();
    }

    /// A frame left the pipeline (published, dropped or failed).
    fn release(&self) {
        self.update(|g| g.in_flight = g.in_flight.saturating_sub(1));
    }

    /// The oldest ticket a lane is inferring.
    fn oldest_running(&self) -> Option<u64> {
        self.lock().running.iter().flatten().min().copied()
    }

    /// Block until preprocessing may start, and take a flight slot. It may start when fewer
    /// than `max` frames are in flight, no prepared input waits, and some lane is idle or
    /// within `lead` of its predicted end. With `refresh` it may also start when the waiting
    /// input has gone stale behind overrunning inferences on every lane (it will replace that
    /// input). False when `stop` is set.
    fn wait_turn(&self, max: usize, lead: Duration, refresh: bool, stop: &AtomicBool) -> bool {
        let refresh_after = (lead * REFRESH_LEADS).max(REFRESH_MIN);
        let mut g = self.lock();
        loop {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            let now = Instant::now();
            let mut wait = Duration::from_millis(50);
            match g.pending {
                None if g.in_flight < max => {
                    // When the first lane frees up (None: one is idle now).
                    let soonest = g.busy_until.iter().copied().min().flatten();
                    match soonest {
                        Some(end) if now + lead < end => wait = wait.min(end - lead - now),
                        _ => {
                            g.in_flight += 1;
                            return true;
                        }
                    }
                }
                Some(t) if refresh && g.busy_until.iter().all(Option::is_some) && !g.refreshed => {
                    if now >= t + refresh_after {
                        g.in_flight += 1;
                        g.refreshed = true;
                        return true;
                    }
                    wait = wait.min(t + refresh_after - now);
                }
                _ => {}
            }
            g = self.cv.wait_timeout(g, wait).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

/// Shared by the stage threads.
struct Shared {
    lanes: usize,
    io: Arc<dyn FrameIo>,
    /// One per stream, by stream index (just one for one source).
    controllers: Vec<Arc<Mutex<Controller>>>,
    metrics: Arc<Metrics>,
    gate: Gate,
    stop: Arc<AtomicBool>,
    config: PipelineConfig,
    streams: Vec<Arc<streams::StreamCounters>>,
}

impl Shared {
    /// The controller of stream `stream` (the first one for an unknown index).
    fn controller(&self, stream: usize) -> std::sync::MutexGuard<'_, Controller> {
        let c = self.controllers.get(stream).unwrap_or(&self.controllers[0]);
        c.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A frame's preprocess + inference cost depends on the lanes, not on its stream: every
    /// stream's controller learns from it. With temporal reuse it also depends on the scene:
    /// the frame's own stream's controller follows its activity (`budget::reuse`).
    fn observe_cost(&self, stream: usize, s: crate::engine::Setting, cost_ms: f64, reuse: Option<&ReuseInfo>) {
        let own = stream.min(self.controllers.len() - 1);
        for (i, c) in self.controllers.iter().enumerate() {
            let mut c = c.lock().unwrap_or_else(|e| e.into_inner());
            match reuse {
                Some(r) => c.observe_reuse(s, cost_ms, r, i == own),
                None => c.observe(s, cost_ms),
            }
        }
    }

    /// Frames allowed between "preprocess starts" and "published": one per lane plus one
    /// being prepared when overlapping, one per lane otherwise.
    fn max_in_flight(&self) -> usize {
        if self.config.overlap {
            MAX_IN_FLIGHT + self.lanes - 1
        } else {
            self.lanes
        }
    }
}

/// One controller per stream, each keeping its stream's target (the given one's when the
/// stream has none); just the given one for one source.
fn per_stream_controllers(c: Controller, streams: &[Arc<streams::StreamCounters>]) -> Vec<Arc<Mutex<Controller>>> {
    if streams.is_empty() {
        return vec![Arc::new(Mutex::new(c))];
    }
    let default = c.config().target_ms;
    streams
        .iter()
        .map(|s| {
            let t = s.target_override().unwrap_or(default);
            s.target_ms.store(t.to_bits(), Ordering::Relaxed);
            let mut own = c.clone();
            own.set_target_ms(t);
            Arc::new(Mutex::new(own))
        })
        .collect()
}

/// A running pipeline.
pub struct Pipeline {
    shared: Arc<Shared>,
    /// Per lane: reloaded `[reduce]` configs, applied by the lane before its next frame.
    reconfigure: Vec<Sender<ReduceConfig>>,
    threads: Vec<(&'static str, JoinHandle<()>)>,
    source: Option<(JoinHandle<()>, crossbeam_channel::Receiver<()>)>,
}

impl Pipeline {
    /// Start every stage. The pipeline runs until the source ends, `max_frames` frames are
    /// published, or `stop` is set; then `wait` returns.
    pub fn start(parts: Parts, stop: Arc<AtomicBool>) -> Result<Pipeline, PipelineError> {
        let Parts { engines, io, source, mode, sinks, controller, metrics, config, streams } = parts;
        if metrics.sinks.len() != sinks.len() {
            return Err(PipelineError::SinkCount { have: metrics.sinks.len(), want: sinks.len() });
        }
        if engines.is_empty() || engines.len() > MAX_LANES {
            return Err(PipelineError::Lanes(engines.len()));
        }
        if engines.len() != config.lanes {
            log::warn!(
                "pipeline: {} lane(s) configured, {} engine(s) given: running {}",
                config.lanes,
                engines.len(),
                engines.len()
            );
        }
        metrics.set_target_ms(controller.config().target_ms);
        let controllers = per_stream_controllers(controller, &streams);
        let lanes = engines.len();
        metrics.set_lanes(lanes);
        let shared = Arc::new(Shared {
            lanes,
            io,
            controllers,
            metrics: metrics.clone(),
            gate: Gate::new(lanes),
            stop,
            config,
            streams,
        });
        let spawn_err = |stage| move |source| PipelineError::Spawn { stage, source };
        let mut runners = Vec::new();
        for (i, s) in sinks.into_iter().enumerate() {
            runners
                .push(SinkRunner::spawn(s, shared.config.sink_queue, metrics.clone(), i).map_err(spawn_err("sink"))?);
        }
        let (pre_tx, pre_rx) = slot::slot(metrics.edge_counter(crate::metrics::Edge::PreToInfer));
        let (post_tx, post_rx) = slot::slot(metrics.edge_counter(crate::metrics::Edge::InferToPost));
        // Every lane takes from the one prepared-input slot and puts into the one result slot.
        let (pre_rx, post_tx) = (Arc::new(pre_rx), Arc::new(post_tx));
        let (input_pool_tx, input_pool_rx) = crossbeam_channel::bounded(3 + lanes);
        let (raw_pool_tx, raw_pool_rx) = crossbeam_channel::bounded(3 + lanes);
        let (frame_back_tx, frame_back_rx) = crossbeam_channel::bounded(8);
        // Partition copies (cluster view) go back from postprocess to the lanes once no sink
        // holds them any more.
        let (parts_tx, parts_rx) = crossbeam_channel::bounded(stages::POOL + 3 + lanes);
        let (finished_tx, finished_rx) = crossbeam_channel::bounded::<()>(1);
        let mut threads = Vec::new();
        let mut source_thread = None;
        let feed = match mode {
            SourceMode::Pull => stages::Feed::Pull(source, frame_back_rx),
            SourceMode::Live => {
                let (tx, rx) = slot::slot(metrics.edge_counter(crate::metrics::Edge::SourceToPre));
                let (done_tx, done_rx) = crossbeam_channel::bounded(1);
                let sh = shared.clone();
                let h = std::thread::Builder::new()
                    .name("source".into())
                    .spawn(move || {
                        stages::source_loop(&sh, source, tx, frame_back_rx);
                        let _ = done_tx.send(());
                    })
                    .map_err(spawn_err("source"))?;
                source_thread = Some((h, done_rx));
                stages::Feed::Live(rx)
            }
        };
        let sh = shared.clone();
        let h = std::thread::Builder::new()
            .name("preprocess".into())
            .spawn(move || stages::pre_loop(&sh, feed, pre_tx, input_pool_rx))
            .map_err(spawn_err("preprocess"))?;
        threads.push(("preprocess", h));
        let mut reconfigure = Vec::with_capacity(lanes);
        for (lane, engine) in engines.into_iter().enumerate() {
            let sh = shared.clone();
            let (rx, tx, pool_tx, pool_rx) =
                (pre_rx.clone(), post_tx.clone(), input_pool_tx.clone(), raw_pool_rx.clone());
            let (reconf_tx, reconf_rx) = crossbeam_channel::unbounded();
            reconfigure.push(reconf_tx);
            let lane = stages::Lane { index: lane, engine, reconfigure: reconf_rx, parts: parts_rx.clone() };
            let h = std::thread::Builder::new()
                .name(if lanes == 1 { "infer".into() } else { format!("infer-{}", lane.index) })
                .spawn(move || stages::infer_loop(&sh, lane, &rx, &tx, pool_tx, pool_rx))
                .map_err(spawn_err("infer"))?;
            threads.push(("infer", h));
        }
        drop((pre_rx, post_tx, input_pool_tx, raw_pool_rx, parts_rx));
        let sh = shared.clone();
        let h = std::thread::Builder::new()
            .name("postprocess".into())
            .spawn(move || {
                stages::post_loop(&sh, post_rx, &runners, raw_pool_tx, frame_back_tx, parts_tx);
                let drain = Duration::from_secs_f64(sh.config.drain_timeout_s);
                for r in runners {
                    r.shutdown(drain);
                }
                drop(finished_tx);
            })
            .map_err(spawn_err("postprocess"))?;
        threads.push(("postprocess", h));
        let sh = shared.clone();
        let h = std::thread::Builder::new()
            .name("metrics-log".into())
            .spawn(move || {
                let every = Duration::from_secs_f64(sh.config.log_every_s);
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = finished_rx.recv_timeout(every) {
                    log::info!("{}", sh.metrics.log_line());
                }
                log::info!("final: {}", sh.metrics.log_line());
            })
            .map_err(spawn_err("metrics-log"))?;
        threads.push(("metrics-log", h));
        Ok(Pipeline { shared, reconfigure, threads, source: source_thread })
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// The controller (the first stream's), for inspection (status, predictions).
    pub fn controller(&self) -> Arc<Mutex<Controller>> {
        self.shared.controllers[0].clone()
    }

    /// The controller of stream `stream` (by index), if there is such a stream.
    pub fn stream_controller(&self, stream: usize) -> Option<Arc<Mutex<Controller>>> {
        self.shared.controllers.get(stream).cloned()
    }

    /// Follow a new `[budget]` (config reload): the controllers take it from the next frame;
    /// a stream with its own `target_ms` keeps that.
    pub fn update_budget(&self, cfg: &BudgetConfig, table: &CalibrationTable) -> Result<(), BudgetError> {
        for (i, c) in self.shared.controllers.iter().enumerate() {
            let mut c = c.lock().unwrap_or_else(|e| e.into_inner());
            c.reconfigure(cfg, table)?;
            if let Some(s) = self.shared.streams.get(i) {
                let t = s.target_override().unwrap_or(cfg.target_ms);
                c.set_target_ms(t);
                s.target_ms.store(t.to_bits(), Ordering::Relaxed);
            }
        }
        self.shared.metrics.set_target_ms(cfg.target_ms);
        log::info!(
            "budget now: {} target {:.0} ms p{} sizes {:?} M {}..{} step {} margin {}",
            if cfg.enabled { "on" } else { "off" },
            cfg.target_ms,
            cfg.percentile,
            cfg.sizes,
            cfg.m_min,
            cfg.m_max,
            cfg.m_step,
            cfg.margin
        );
        Ok(())
    }

    /// Follow a new `[reduce]` (config reload): every lane swaps its reducer (and proportional
    /// attention) before its next frame; a lane whose reducer cannot be built keeps its own and
    /// logs why.
    pub fn update_reduce(&self, cfg: &ReduceConfig) {
        for tx in &self.reconfigure {
            let _ = tx.send(cfg.clone());
        }
    }

    /// Ask every stage to stop after the frame in hand.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.gate.cv.notify_all();
    }

    /// True once the postprocess stage has ended (source ended, frame limit, or stop).
    pub fn is_finished(&self) -> bool {
        self.threads.iter().find(|(n, _)| *n == "postprocess").is_none_or(|(_, h)| h.is_finished())
    }

    /// Wait for every stage to end. A live source blocked in a read is left behind after
    /// `drain_timeout_s`.
    pub fn wait(mut self) -> Result<(), PipelineError> {
        let mut result = Ok(());
        for (stage, h) in self.threads.drain(..) {
            if h.join().is_err() && result.is_ok() {
                result = Err(PipelineError::Panicked { stage });
            }
        }
        self.stop();
        if let Some((h, done)) = self.source.take() {
            let t = Duration::from_secs_f64(self.shared.config.drain_timeout_s);
            match done.recv_timeout(t) {
                Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                    if h.join().is_err() && result.is_ok() {
                        result = Err(PipelineError::Panicked { stage: "source" });
                    }
                }
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                    log::warn!("source: still blocked in a read {:.1}s after stop; left behind", t.as_secs_f64())
                }
            }
        }
        result
    }
}
