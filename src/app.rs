//! The assembled runtime: a config turned into a running pipeline (model plans once, one
//! engine per lane, the source, the sinks, the budget controller), the status behind
//! `/metrics` and `/healthz`, and applying a reloaded config to it. `ailurus run` (the binary's
//! `commands/run.rs`) and the tests drive exactly this.
//!
//! Must not: parse arguments or print tables (the binary's commands do), or run frames itself
//! (the pipeline does).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::budget::{BudgetError, CalibError, CalibrationTable, Controller};
use crate::config::Config;
use crate::engine::{Engine, Setting, SizeInfo};
use crate::metrics::Metrics;
use crate::model::{Io, ModelError, Segmenter};
use crate::pipeline::streams::{StreamInfo, Streams};
use crate::pipeline::{Parts, Pipeline, PipelineError, SourceMode};
use crate::reduce::Strategy;
use crate::service::reload_plan;
use crate::sink::{self, SinkError};
use crate::source::{self, SourceError, SourceHealth, SourceKind};
use crate::status::{Board, Health, Liveness, StatusProvider};

/// Why the runtime could not start. Each names its culprit (file, key, device).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Calibration(#[from] CalibError),
    #[error(transparent)]
    Budget(#[from] BudgetError),
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A source of `[streams.NAME]` cannot start.
    #[error("[streams.{name}]: {source}")]
    Stream {
        name: String,
        #[source]
        source: SourceError,
    },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

impl StartError {
    /// True for a start-up fault of the configuration, the model or a device (exit 2).
    pub fn is_startup(&self) -> bool {
        !matches!(self, StartError::Source(e) if e.is_frame_fault()) && !matches!(self, StartError::Pipeline(_))
    }
}

/// The segmenter `cfg` describes, with plans for `sizes` (empty: `[model] input_size`).
pub fn segmenter(cfg: &Config, sizes: &[u32]) -> Result<Segmenter, ModelError> {
    Segmenter::from_config(&cfg.model, &cfg.reduce, &cfg.resolve(&cfg.model.manifest), sizes)
}

/// The M the config asks for at `size` (clamped to the token count there; N without reduction).
pub fn setting_for(cfg: &Config, sizes: &[SizeInfo], size: u32) -> Setting {
    let n = sizes.iter().find(|s| s.input_size == size).map(|s| s.n_tokens).unwrap_or(usize::MAX);
    let m = if cfg.reduce.strategy.get() == Strategy::None { n } else { cfg.reduce.m.min(n) };
    Setting { input_size: size, m }
}

/// The table named by `[budget] calibration` (the shipped one when that file is absent).
pub fn calibration_table(cfg: &Config) -> Result<CalibrationTable, CalibError> {
    CalibrationTable::load_or_shipped(&cfg.resolve(&cfg.budget.calibration))
}

/// The running pieces `run` keeps hold of.
pub struct Running {
    /// The plans every lane shares.
    pub segmenter: Arc<Segmenter>,
    pub metrics: Arc<Metrics>,
    /// The one `[source]`'s health (None with `[streams.*]`: see `streams`).
    pub source_health: Option<Arc<SourceHealth>>,
    /// The `[streams.*]` sources (empty for the one `[source]`).
    pub streams: Vec<StreamInfo>,
}

impl Running {
    /// Whether some source is waiting for its camera or server.
    pub fn waiting_for_a_source(&self) -> bool {
        let down = |h: &Option<Arc<SourceHealth>>| h.as_ref().is_some_and(|h| !h.is_up());
        down(&self.source_health) || self.streams.iter().any(|s| down(&s.health))
    }
}

/// Start the pipeline `cfg` describes, with `extra` sinks after the configured ones (benches,
/// tests) and a sink context (the HTTP sink's status provider). Plans are built once for
/// `[model] input_size` and, with the budget on, every size of the `[budget]` ladder; each of
/// the `[pipeline] lanes` gets its own states over them.
pub fn start(
    cfg: &Config,
    stop: Arc<AtomicBool>,
    extra: Vec<Box<dyn sink::Sink>>,
    ctx: &sink::SinkContext,
) -> Result<(Pipeline, Running), StartError> {
    let mut sizes = vec![cfg.model.input_size];
    if cfg.budget.enabled {
        sizes.extend(cfg.budget.sizes.iter().filter(|s| **s != cfg.model.input_size));
    }
    let t = Instant::now();
    let seg = Arc::new(segmenter(cfg, &sizes)?);
    let lanes = cfg.pipeline.lanes.max(1);
    warn_lanes_beyond_cores(lanes);
    let engines = if cfg.reuse.enabled {
        reuse_engines(cfg, &seg, lanes)?
    } else {
        (0..lanes).map(|_| seg.lane().map(|l| Box::new(l) as Box<dyn Engine>)).collect::<Result<Vec<_>, _>>()?
    };
    log::info!("model plans built once in {:.1}s, shared by {lanes} lane(s)", t.elapsed().as_secs_f64());
    let fixed = setting_for(cfg, seg.sizes(), cfg.model.input_size);
    let table = calibration_table(cfg)?;
    let reducing = cfg.reduce.strategy.get() != Strategy::None;
    let controller = Controller::new(&cfg.budget, seg.sizes(), reducing, fixed, &table)?;
    let (src, mode, streams) = build_sources(cfg, &stop)?;
    let source_health = if streams.is_empty() { src.health() } else { None };
    let mut sinks = sink::build_all(&cfg.sink, &cfg.base_dir, ctx)?;
    sinks.extend(extra);
    let names: Vec<&str> = sinks.iter().map(|s| s.name()).collect();
    let metrics = Arc::new(Metrics::new(&names));
    log::info!(
        "running: source {} -> {} with plans for {:?} px, {} x {} lane(s) at {} thread(s) -> sinks [{}]; \
         budget {} (target {:.0} ms p{}, table {})",
        src.name(),
        seg.manifest().name,
        sizes,
        cfg.reduce.strategy,
        lanes,
        if cfg.model.threads == 0 { "auto".to_string() } else { cfg.model.threads.to_string() },
        names.join(", "),
        if cfg.budget.enabled { "on" } else { "off" },
        cfg.budget.target_ms,
        cfg.budget.percentile,
        table.origin
    );
    let io = Arc::new(Io::of(seg.manifest()));
    let counters = streams.iter().map(|s| s.counters.clone()).collect();
    let running = Running { segmenter: seg, metrics: metrics.clone(), source_health, streams };
    let parts = Parts {
        engines,
        io,
        source: src,
        mode,
        sinks,
        controller,
        metrics,
        config: cfg.pipeline.clone(),
        streams: counters,
    };
    let pipeline = Pipeline::start(parts, stop.clone())?;
    crate::model::memory::spawn_trimmer(stop);
    Ok((pipeline, running))
}

/// The source the pipeline reads, how, and the named streams behind it (if any).
type BuiltSources = (Box<dyn source::FrameSource>, SourceMode, Vec<StreamInfo>);

/// The one `[source]` (pulled on demand for an unpaced folder, else on its own thread), or the
/// `[streams.*]` sources behind the round-robin `Streams` (pulled on demand: fair turns).
fn build_sources(cfg: &Config, stop: &Arc<AtomicBool>) -> Result<BuiltSources, StartError> {
    if cfg.streams.is_empty() {
        let src = source::build_with_stop(&cfg.source, &cfg.base_dir, stop.clone())?;
        let pull = cfg.source.kind.get() == SourceKind::Folder && cfg.source.fps == 0.0;
        return Ok((src, if pull { SourceMode::Pull } else { SourceMode::Live }, Vec::new()));
    }
    let mut built = Vec::new();
    for (name, sc) in cfg.sources() {
        let src = source::build_with_stop(sc, &cfg.base_dir, stop.clone())
            .map_err(|source| StartError::Stream { name: name.clone(), source })?;
        built.push((name, src));
    }
    let streams =
        Streams::start(built, stop.clone()).map_err(|source| PipelineError::Spawn { stage: "source", source })?;
    let info = streams.info();
    for (i, (_, sc)) in info.iter().zip(cfg.sources()) {
        let t = sc.target_ms.unwrap_or(0.0);
        i.counters.target_override_ms.store(t.to_bits(), std::sync::atomic::Ordering::Relaxed);
    }
    Ok((Box::new(streams), SourceMode::Pull, info))
}

/// `[reuse] enabled`: every lane runs the reuse path over the shared plans (issue #19).
fn reuse_engines(cfg: &Config, seg: &Arc<Segmenter>, lanes: usize) -> Result<Vec<Box<dyn Engine>>, StartError> {
    if lanes > 1 {
        log::warn!("[reuse] with {lanes} lanes: consecutive frames go to different lanes, so each reuses less");
    }
    let streams = cfg.streams.len() as u32;
    if streams > 1 && cfg.reuse.max_streams < 2 {
        log::warn!(
            "[reuse] with {streams} streams and max_streams {}: a lane keeps one stream's tokens, so a frame of \
             another stream starts afresh (the streams take turns: little is reused)",
            cfg.reuse.max_streams
        );
    } else if streams > cfg.reuse.max_streams {
        log::warn!(
            "[reuse] {streams} streams, max_streams {}: a lane keeps the caches of the {} most recent streams \
             (about 110 MB each at 448 px); the others' frames start afresh",
            cfg.reuse.max_streams,
            cfg.reuse.max_streams
        );
    } else if streams > 1 {
        log::info!(
            "[reuse] {streams} streams: each lane keeps one reuse cache per stream (about 110 MB each at 448 px)"
        );
    }
    if cfg.reduce.strategy.get() != Strategy::None {
        log::info!(
            "[reuse] on with [reduce] {}: blocks 0..{} reuse unchanged tokens, the rest run on M merged tokens",
            cfg.reduce.strategy,
            cfg.reduce.cut
        );
    }
    let model = Arc::new(crate::reuse::ReuseModel::new(seg.clone())?);
    (0..lanes).map(|_| Ok(Box::new(model.lane(cfg.reuse.clone())?) as Box<dyn Engine>)).collect()
}

fn warn_lanes_beyond_cores(lanes: usize) {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if lanes > cores {
        log::warn!(
            "[pipeline] lanes = {lanes} is more than this machine's {cores} core(s): lanes beyond the cores \
             add latency and memory, not frames per second"
        );
    }
}

/// What `/metrics` and `/healthz` serve: the pipeline's metrics, the source's health, the
/// service's liveness, and the parts on the board (a sink's broker connection: metrics only,
/// never health). The metrics exist only once the pipeline is built, after the sinks, so
/// they are filled in late (`set_running`).
pub struct StatusHub {
    metrics: OnceLock<Arc<Metrics>>,
    source: OnceLock<Option<Arc<SourceHealth>>>,
    streams: OnceLock<Vec<StreamInfo>>,
    liveness: Arc<Liveness>,
    board: Arc<Board>,
}

impl StatusHub {
    pub fn new(liveness: Arc<Liveness>) -> StatusHub {
        StatusHub {
            metrics: OnceLock::new(),
            source: OnceLock::new(),
            streams: OnceLock::new(),
            liveness,
            board: Arc::new(Board::default()),
        }
    }

    /// Where sinks list their own status (`SinkContext::board`).
    pub fn board(&self) -> Arc<Board> {
        self.board.clone()
    }

    pub fn set_running(&self, running: &Running) {
        let _ = self.metrics.set(running.metrics.clone());
        let _ = self.source.set(running.source_health.clone());
        let _ = self.streams.set(running.streams.clone());
    }
}

impl StatusProvider for StatusHub {
    fn prometheus(&self) -> String {
        let mut s = self.metrics.get().map(|m| m.render_prometheus()).unwrap_or_default();
        if let Some(Some(h)) = self.source.get() {
            let snap = h.snapshot();
            s += &format!(
                "# HELP ailurus_camera_up Whether the frame source is delivering.\n# TYPE ailurus_camera_up gauge\nailurus_camera_up {}\n",
                snap.up as u8
            );
        }
        if let Some(streams) = self.streams.get().filter(|s| !s.is_empty()) {
            s += &streams_prometheus(streams);
        }
        s += &self.board.prometheus();
        s
    }

    fn health(&self) -> Health {
        if let Some(Some(h)) = self.source.get() {
            let snap = h.snapshot();
            if !snap.up {
                return Health::Unavailable(format!(
                    "{}: {}",
                    snap.status,
                    snap.last_error.unwrap_or_else(|| snap.name.clone())
                ));
            }
        }
        let down: Vec<String> = (self.streams.get().map(Vec::as_slice).unwrap_or_default().iter())
            .filter_map(|s| {
                let snap = s.health.as_ref()?.snapshot();
                (!snap.up)
                    .then(|| format!("stream {}: {}: {}", s.name, snap.status, snap.last_error.unwrap_or(snap.name)))
            })
            .collect();
        if !down.is_empty() {
            return Health::Unavailable(down.join("; "));
        }
        self.liveness.health()
    }
}

/// The per-stream series of `/metrics` (`stream` label), for `[streams.*]`.
fn streams_prometheus(streams: &[StreamInfo]) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut s = String::new();
    /// (name, type, help, value of one stream)
    type Series = (&'static str, &'static str, &'static str, fn(&StreamInfo) -> String);
    let series: [Series; 11] = [
        ("ailurus_camera_up", "gauge", "Whether the stream's source is delivering.", |i| {
            (i.health.as_ref().is_none_or(|h| h.is_up()) as u8).to_string()
        }),
        ("ailurus_stream_frames_captured_total", "counter", "Frames the stream's source delivered.", |i| {
            i.counters.captured.load(Relaxed).to_string()
        }),
        (
            "ailurus_stream_frames_dropped_total",
            "counter",
            "Frames of the stream replaced by a newer one before preprocessing took them.",
            |i| i.counters.dropped.load(Relaxed).to_string(),
        ),
        ("ailurus_stream_frames_published_total", "counter", "Masks of the stream published.", |i| {
            i.counters.published.load(Relaxed).to_string()
        }),
        ("ailurus_stream_latency_seconds_sum", "counter", "Sum of the capture-to-mask latency of its masks.", |i| {
            format!("{:.6}", i.counters.latency_us.load(Relaxed) as f64 / 1e6)
        }),
        ("ailurus_stream_reconnects_total", "counter", "Times the stream's source came back after a loss.", |i| {
            i.health.as_ref().map_or(0, |h| h.reconnects()).to_string()
        }),
        (
            "ailurus_stream_budget_target_ms",
            "gauge",
            "The latency target the stream's budget controller keeps ([streams.NAME] target_ms, else [budget]).",
            |i| format!("{}", i.counters.target()),
        ),
        ("ailurus_stream_input_size", "gauge", "Input size of the stream's last published mask, pixels.", |i| {
            i.counters.input_size.load(Relaxed).to_string()
        }),
        ("ailurus_stream_m", "gauge", "Clusters kept (M) for the stream's last published mask.", |i| {
            i.counters.m.load(Relaxed).to_string()
        }),
        (
            "ailurus_stream_reuse_expected_active_fraction",
            "gauge",
            "Temporal reuse: the active fraction the stream's budget controller expects (0: no reuse).",
            |i| format!("{}", f64::from_bits(i.counters.reuse_active.load(Relaxed))),
        ),
        (
            "ailurus_stream_deadline_misses_total",
            "counter",
            "Masks of the stream published later than its own latency target.",
            |i| i.counters.deadline_misses.load(Relaxed).to_string(),
        ),
    ];
    for (name, kind, help, value) in series {
        s += &format!("# HELP {name} {help}\n# TYPE {name} {kind}\n");
        for i in streams {
            s += &format!("{name}{{stream=\"{}\"}} {}\n", i.name, value(i));
        }
    }
    s
}

/// What this runtime is, for a sink that announces it (the MQTT `online` status): version,
/// model, source, and the knobs a remote `set` can change.
pub fn summary(cfg: &Config) -> serde_json::Value {
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config": cfg.origin,
        "model": cfg.model.manifest.display().to_string(),
        "input_size": cfg.model.input_size,
        "model_device": cfg.model.device.to_string(),
        "source": cfg.source.kind.to_string(),
        "lanes": cfg.pipeline.lanes,
        "reduce": {"strategy": cfg.reduce.strategy.to_string(), "m": cfg.reduce.m, "cut": cfg.reduce.cut},
        "budget": {
            "enabled": cfg.budget.enabled,
            "target_ms": cfg.budget.target_ms,
            "sizes": cfg.budget.sizes,
            "m_min": cfg.budget.m_min,
            "m_max": cfg.budget.m_max,
        },
        // `[streams.NAME]`: each stream's source kind and the latency target it keeps.
        "streams": cfg.streams.iter().map(|(name, s)| serde_json::json!({
            "name": name,
            "source": s.kind.to_string(),
            "target_ms": s.target_ms.unwrap_or(cfg.budget.target_ms),
        })).collect::<Vec<_>>(),
    })
}

/// Apply a reloaded config to the running pipeline: the budget and the reducer knobs at once;
/// sections that need a restart are named in one log line.
pub fn apply_reload(pipeline: &Pipeline, old: &Config, new: &Config) {
    let plan = reload_plan(old, new);
    if plan.budget {
        match calibration_table(new) {
            Ok(table) => {
                if let Err(e) = pipeline.update_budget(&new.budget, &table) {
                    log::error!("reload: [budget] not applied: {e}");
                }
            }
            Err(e) => log::error!("reload: [budget] not applied: {e}"),
        }
    }
    if plan.reduce {
        // Built once here to check it can be (a CUDA reducer needs a GPU): one that cannot
        // leaves the running reducers in place. Each lane then builds its own.
        match crate::reduce::build_on_device(&new.reduce) {
            Ok(_) => {
                pipeline.update_reduce(&new.reduce);
                log::info!("reload: reducer now {} (M from [reduce] m / the budget)", new.reduce.strategy);
            }
            Err(e) => log::error!("reload: [reduce] not applied, the running reducer stays: {e}"),
        }
    }
    let mut restart: Vec<&str> = plan.restart_needed.clone();
    if plan.sinks {
        restart.push("sink");
    }
    if plan.pipeline {
        restart.push("pipeline");
    }
    if !restart.is_empty() {
        log::warn!("reload: [{}] changed; those take effect after a restart", restart.join("], ["));
    }
}
