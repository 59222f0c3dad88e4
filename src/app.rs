//! The commands behind the CLI (`segment`, `eval`, `run`), as library functions so tests and
//! benches drive exactly what users run.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::budget::Controller;
use crate::calibrate::CalibrationTable;
use crate::config::Config;
use crate::frame::{Frame, Mask};
use crate::metrics::Metrics;
use crate::model::{Segmenter, SegmenterOptions};
use crate::pipeline::{Engine, Parts, Pipeline, Setting, SourceMode, StageTimes};
use crate::pre::Resampler;
use crate::sink;
use crate::source::{self, FrameSource};

/// Build the segmenter the config describes, with plans for `sizes` (empty = the config's).
pub fn build_segmenter(cfg: &Config, sizes: &[u32], with_full: bool) -> Result<Segmenter, crate::model::ModelError> {
    let sizes = if sizes.is_empty() { vec![cfg.model.input_size] } else { sizes.to_vec() };
    crate::model::configure_cpu(&cfg.model);
    let opts = SegmenterOptions {
        fixed_middle: fixed_middle_tokens(cfg),
        fixed_unreduced: cfg.model.fixed_middle,
        sizes,
        reduce: cfg.reduce.clone(),
        with_full,
        verify_sha256: true,
        device: cfg.model.device.clone(),
    };
    Segmenter::load(&cfg.resolve(&cfg.model.manifest), &opts)
}

/// The Ms that get a fixed-shape middle plan (`[model] fixed_middle`): `[reduce] m` (the
/// unreduced token count at each size is added by the segmenter).
pub fn fixed_middle_tokens(cfg: &Config) -> Vec<usize> {
    if cfg.model.fixed_middle && cfg.reduce.strategy != "none" {
        vec![cfg.reduce.m]
    } else {
        Vec::new()
    }
}

/// One frame through pre -> infer -> post, with reusable scratch.
#[derive(Default)]
pub struct FrameRunner {
    pub rs: Resampler,
    pub input: Vec<f32>,
    pub raw: Vec<f32>,
    pub times: StageTimes,
}

impl FrameRunner {
    pub fn run(
        &mut self,
        eng: &dyn Engine,
        frame: &Frame,
        setting: Setting,
        mask: &mut Mask,
    ) -> Result<(), crate::pipeline::EngineError> {
        let t0 = Instant::now();
        eng.preprocess(frame, setting.input_size, &mut self.rs, &mut self.input);
        self.times.preprocess = t0.elapsed();
        eng.infer(&self.input, setting, &mut self.times, &mut self.raw)?;
        let t1 = Instant::now();
        eng.postprocess(&self.raw, setting.input_size, frame.width, frame.height, &mut self.rs, mask);
        self.times.postprocess = t1.elapsed();
        Ok(())
    }
}

/// The M the config asks for at `size` (clamped to the token count there).
pub fn setting_for(cfg: &Config, seg: &Segmenter, size: u32) -> Setting {
    let n = seg.sizes().iter().find(|s| s.input_size == size).map(|s| s.n_tokens).unwrap_or(usize::MAX);
    let m = if cfg.reduce.strategy == "none" { n } else { cfg.reduce.m.min(n) };
    Setting { input_size: size, m }
}

/// `ailurus segment`: masks (and overlays) for each image into `out`; prints IoU against a
/// ground truth found next to the image.
pub fn segment(cfg: &Config, images: &[PathBuf], out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("output folder {}", out.display()))?;
    let seg = build_segmenter(cfg, &[], false)?;
    let setting = setting_for(cfg, &seg, cfg.model.input_size);
    let mut fr = FrameRunner::default();
    let mut mask = Mask::default();
    let mut ious = Vec::new();
    for (i, path) in images.iter().enumerate() {
        let frame = match source::folder::load_frame(path, i as u64) {
            Ok(f) => f,
            Err(e) => {
                log::error!("{e}");
                continue;
            }
        };
        let t = Instant::now();
        fr.run(&seg, &frame, setting, &mut mask)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("frame");
        sink::files::write_png_atomic(&crate::post::mask_to_png(&mask), &out.join(format!("{stem}.mask.png")))?;
        sink::files::write_png_atomic(&crate::post::overlay(&frame, &mask), &out.join(format!("{stem}.overlay.png")))?;
        let mut line = format!(
            "{}: {}x{} at {}px M={} {:.0} ms, salient {:.1}%",
            path.display(),
            frame.width,
            frame.height,
            setting.input_size,
            setting.m,
            ms,
            100.0 * mask.classes.iter().filter(|&&c| c != 0).count() as f64 / mask.classes.len().max(1) as f64
        );
        if let Some(gt_path) = crate::gt::find_for(path) {
            let gt = crate::gt::load_foreground(&gt_path, frame.width, frame.height)
                .with_context(|| format!("ground truth {}", gt_path.display()))?;
            let (fg, bg) = crate::gt::iou_fg_bg(&mask.classes, &gt);
            ious.push(fg);
            line += &format!(", IoU vs ground truth {:.3} (background {:.3}, mIoU {:.3})", fg, bg, (fg + bg) / 2.0);
        }
        println!("{line}");
    }
    if !ious.is_empty() {
        println!(
            "mean foreground IoU vs ground truth over {} image(s): {:.3}",
            ious.len(),
            ious.iter().sum::<f64>() / ious.len() as f64
        );
    }
    Ok(())
}

/// Images of an eval folder: `DIR/JPEGImages/*` when it is a VOC layout, else `DIR/*`.
pub fn eval_images(dir: &Path) -> Result<Vec<PathBuf>, source::SourceError> {
    let voc = dir.join("JPEGImages");
    source::folder::list_images(if voc.is_dir() { &voc } else { dir })
}

/// Draw a progress bar on stderr (only when it is a terminal).
pub fn progress(done: usize, total: usize, what: &str) {
    use std::io::{IsTerminal, Write};
    let mut err = std::io::stderr();
    if !err.is_terminal() {
        return;
    }
    let width = 30;
    let filled = (done * width).checked_div(total).unwrap_or(width);
    let _ = write!(err, "\r[{}{}] {done}/{total} {what:<40}", "#".repeat(filled), "-".repeat(width - filled));
    if done == total {
        let _ = writeln!(err);
    }
    let _ = err.flush();
}

/// `ailurus eval DIR`: the configured (reduced) model against the unreduced one and against
/// ground truth where it exists, with FPS.
pub fn eval(cfg: &Config, dir: &Path) -> Result<()> {
    let images = eval_images(dir)?;
    let seg = build_segmenter(cfg, &[], false)?;
    let size = cfg.model.input_size;
    let setting = setting_for(cfg, &seg, size);
    let full = Setting { input_size: size, m: usize::MAX };
    let mut fr = FrameRunner::default();
    let (mut mask, mut ref_mask) = (Mask::default(), Mask::default());
    let (mut agree_iou, mut agree_mae, mut gt_fg, mut gt_miou) = (vec![], vec![], vec![], vec![]);
    let (mut t_red, mut t_full) = (Duration::ZERO, Duration::ZERO);
    println!("{:<28} {:>9} {:>9} {:>10} {:>10} {:>9}", "image", "ms", "ms full", "IoU(full)", "MAE(full)", "IoU(GT)");
    for (i, path) in images.iter().enumerate() {
        progress(i, images.len(), &path.file_name().unwrap_or_default().to_string_lossy());
        let frame = match source::folder::load_frame(path, i as u64) {
            Ok(f) => f,
            Err(e) => {
                log::error!("{e}");
                continue;
            }
        };
        let t = Instant::now();
        fr.run(&seg, &frame, setting, &mut mask)?;
        let dt = t.elapsed();
        let t = Instant::now();
        fr.run(&seg, &frame, full, &mut ref_mask)?;
        let dt_full = t.elapsed();
        t_red += dt;
        t_full += dt_full;
        let iou = crate::post::iou(&mask.classes, &ref_mask.classes);
        let mae = crate::post::mae(&mask.scores, &ref_mask.scores);
        agree_iou.push(iou);
        agree_mae.push(mae);
        let mut gt_col = "-".to_string();
        if let Some(gt_path) = crate::gt::find_for(path) {
            let gt = crate::gt::load_foreground(&gt_path, frame.width, frame.height)
                .with_context(|| format!("ground truth {}", gt_path.display()))?;
            let (fg, bg) = crate::gt::iou_fg_bg(&mask.classes, &gt);
            gt_fg.push(fg);
            gt_miou.push((fg + bg) / 2.0);
            gt_col = format!("{fg:.3}");
        }
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        println!(
            "{:<28} {:>9.0} {:>9.0} {:>10.3} {:>10.4} {:>9}",
            name,
            dt.as_secs_f64() * 1e3,
            dt_full.as_secs_f64() * 1e3,
            iou,
            mae,
            gt_col
        );
    }
    progress(images.len(), images.len(), "done");
    let mean = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let n = agree_iou.len().max(1) as f64;
    println!(
        "summary: {} image(s) at {}px, strategy {} M={} (of {}): {:.2} FPS vs {:.2} FPS unreduced ({:.2}x); \
         agreement with unreduced: mask IoU {:.3}, MAE {:.4}; vs ground truth: fg IoU {:.3}, mIoU {:.3} ({} with GT)",
        agree_iou.len(),
        size,
        cfg.reduce.strategy,
        setting.m,
        seg.sizes()[0].n_tokens,
        n / t_red.as_secs_f64(),
        n / t_full.as_secs_f64(),
        t_full.as_secs_f64() / t_red.as_secs_f64(),
        mean(&agree_iou),
        mean(&agree_mae),
        mean(&gt_fg),
        mean(&gt_miou),
        gt_fg.len()
    );
    Ok(())
}

/// Build the configured frame source (`stop` ends a wait for a missing camera).
pub fn build_source(cfg: &Config, stop: Arc<AtomicBool>) -> Result<Box<dyn FrameSource>, source::SourceError> {
    source::build_with_stop(&cfg.source, &cfg.base_dir, stop)
}

/// Start `ailurus run`'s pipeline and return its handle (for `/metrics`, config reload and
/// stopping). Plans are built for `[model] input_size` and, with the budget on, every size of
/// the `[budget]` ladder.
pub fn start(cfg: &Config, stop: Arc<AtomicBool>) -> Result<Pipeline> {
    Ok(start_full(cfg, stop, Vec::new(), &sink::SinkContext::default())?.0)
}

/// `start`, with `extra` sinks run after the configured ones (benches, tests).
pub fn start_with_sinks(cfg: &Config, stop: Arc<AtomicBool>, extra: Vec<Box<dyn sink::Sink>>) -> Result<Pipeline> {
    Ok(start_full(cfg, stop, extra, &sink::SinkContext::default())?.0)
}

/// The running pieces `run` keeps hold of: the pipeline, the models (one per inference lane,
/// to swap reducers on reload), the metrics and the source health.
pub struct Running {
    /// One per `[pipeline] lanes`, in lane order.
    pub segmenters: Vec<Arc<Segmenter>>,
    pub metrics: Arc<Metrics>,
    pub source_health: Option<Arc<source::SourceHealth>>,
}

/// `start`, with extra sinks and a sink context (the HTTP sink's status provider).
pub fn start_full(
    cfg: &Config,
    stop: Arc<AtomicBool>,
    extra: Vec<Box<dyn sink::Sink>>,
    ctx: &sink::SinkContext,
) -> Result<(Pipeline, Running)> {
    let mut sizes = vec![cfg.model.input_size];
    if cfg.budget.enabled {
        sizes.extend(cfg.budget.sizes.iter().filter(|s| **s != cfg.model.input_size));
    }
    let segs = build_lanes(cfg, &sizes)?;
    let seg = &segs[0];
    let fixed = setting_for(cfg, seg, cfg.model.input_size);
    let table = CalibrationTable::for_config(cfg)?;
    let controller = Controller::new(&cfg.budget, seg.sizes(), cfg.reduce.strategy != "none", fixed, &table)?;
    let src = build_source(cfg, stop.clone())?;
    let source_health = src.health();
    let mode = if cfg.source.kind == "folder" && cfg.source.fps == 0.0 { SourceMode::Pull } else { SourceMode::Live };
    let mut sinks = sink::build_all_with(&cfg.sink, &cfg.base_dir, ctx)?;
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
        segs.len(),
        if cfg.model.threads == 0 { "auto".to_string() } else { cfg.model.threads.to_string() },
        names.join(", "),
        if cfg.budget.enabled { "on" } else { "off" },
        cfg.budget.target_ms,
        cfg.budget.percentile,
        table.origin
    );
    let engines: Vec<Arc<dyn Engine>> = segs.iter().map(|s| s.clone() as Arc<dyn Engine>).collect();
    let running = Running { segmenters: segs, metrics: metrics.clone(), source_health };
    let parts = Parts { engines, source: src, mode, sinks, controller, metrics, config: cfg.pipeline.clone() };
    Ok((Pipeline::start(parts, stop)?, running))
}

/// One segmenter per `[pipeline] lanes`, each with its own plans for `sizes` (built side by
/// side, one thread per lane: loading is mostly single-threaded).
fn build_lanes(cfg: &Config, sizes: &[u32]) -> Result<Vec<Arc<Segmenter>>, crate::model::ModelError> {
    let lanes = cfg.pipeline.lanes.max(1);
    if lanes == 1 {
        return Ok(vec![Arc::new(build_segmenter(cfg, sizes, false)?)]);
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if lanes > cores {
        log::warn!(
            "[pipeline] lanes = {lanes} is more than this machine's {cores} core(s): lanes beyond the cores \
             add latency and memory, not frames per second"
        );
    }
    let t = Instant::now();
    let built: Vec<_> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..lanes).map(|_| sc.spawn(|| build_segmenter(cfg, sizes, false))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    let segs = built.into_iter().map(|r| r.map(Arc::new)).collect::<Result<Vec<_>, _>>()?;
    log::info!("built {lanes} inference lanes in {:.1}s", t.elapsed().as_secs_f64());
    Ok(segs)
}

/// What `/metrics` and `/healthz` serve: the pipeline's metrics, the source's health and the
/// service's liveness. The metrics exist only once the pipeline is built, after the sinks, so
/// they are filled in late.
pub struct StatusHub {
    metrics: std::sync::OnceLock<Arc<Metrics>>,
    source: std::sync::OnceLock<Option<Arc<source::SourceHealth>>>,
    liveness: Arc<crate::service::Liveness>,
}

impl crate::service::StatusProvider for StatusHub {
    fn prometheus(&self) -> String {
        let mut s = self.metrics.get().map(|m| m.render_prometheus()).unwrap_or_default();
        if let Some(Some(h)) = self.source.get() {
            let snap = h.snapshot();
            s += &format!(
                "# HELP ailurus_camera_up Whether the frame source is delivering.\n# TYPE ailurus_camera_up gauge\nailurus_camera_up {}\n",
                snap.up as u8
            );
        }
        s
    }

    fn health(&self) -> crate::service::Health {
        if let Some(Some(h)) = self.source.get() {
            let snap = h.snapshot();
            if !snap.up {
                return crate::service::Health::Unavailable(format!(
                    "camera down: {}",
                    snap.last_error.unwrap_or_else(|| snap.name.clone())
                ));
            }
        }
        self.liveness.health()
    }
}

/// `ailurus run`: stream frames from the source through the model to the sinks until the
/// source ends, `max_frames` is reached, or SIGTERM/SIGINT. Runs under systemd as well:
/// READY=1 after the first frame, WATCHDOG=1 while frames flow, STATUS= with FPS and M, and
/// SIGHUP re-reads `config_path` (budget and reducer knobs apply at once; a bad file is
/// rejected with one log line and the old config stays).
pub fn run(cfg: &Config, config_path: Option<PathBuf>) -> Result<()> {
    use crate::service::{loader_for, Notifier, Service, ServiceOptions};
    let svc = Service::install(cfg.clone(), loader_for(config_path), ServiceOptions::default(), Notifier::from_env())?;
    let hub = Arc::new(StatusHub { metrics: Default::default(), source: Default::default(), liveness: svc.liveness() });
    let ctx = sink::SinkContext { status: Some(hub.clone()) };
    let (pipeline, running) = start_full(cfg, svc.stop_flag(), Vec::new(), &ctx)?;
    let _ = hub.metrics.set(running.metrics.clone());
    let _ = hub.source.set(running.source_health.clone());
    let mut seen = 0u64;
    let mut current = cfg.clone();
    while !pipeline.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        if svc.should_stop() {
            pipeline.stop();
        }
        let published = running.metrics.frames_published.load(std::sync::atomic::Ordering::Relaxed);
        if published > seen {
            for _ in seen..published {
                svc.frame_done(running.metrics.current_m());
            }
            seen = published;
        } else if running.source_health.as_ref().is_some_and(|h| !h.is_up()) {
            // Waiting for the camera is not a hang: keep the watchdog fed.
            svc.heartbeat();
        }
        if let Some(new) = svc.poll_reload() {
            apply_reload(&pipeline, &running, &current, &new);
            current = new;
        }
    }
    pipeline.wait()?;
    Ok(())
}

/// Apply a reloaded config to the running pipeline: the budget and the reducer knobs at once;
/// sections that need a restart are named in one log line.
fn apply_reload(pipeline: &Pipeline, running: &Running, old: &Config, new: &Config) {
    let plan = crate::service::reload_plan(old, new);
    if plan.budget {
        match CalibrationTable::for_config(new) {
            Ok(table) => {
                if let Err(e) = pipeline.update_budget(&new.budget, &table) {
                    log::error!("reload: [budget] not applied: {e}");
                }
            }
            Err(e) => log::error!("reload: [budget] not applied: {e}"),
        }
    }
    if plan.reduce {
        // On the configured device, as at start-up; a reducer that cannot be built leaves the
        // running one in place.
        // One reducer per lane, all built before any is swapped in: every lane runs the same
        // reducer.
        match running
            .segmenters
            .iter()
            .map(|_| crate::reduce::build_on_device(&new.reduce))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(reducers) => {
                for (seg, r) in running.segmenters.iter().zip(reducers) {
                    seg.set_reducer(r);
                    seg.set_key_bias(new.reduce.proportional_attention);
                }
                log::info!(
                    "reload: reducer now {} on {} lane(s) (M from [reduce] m / the budget)",
                    new.reduce.strategy,
                    running.segmenters.len()
                );
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
