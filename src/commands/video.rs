//! `ailurus bench --video CLIP...`: temporal reuse on real clips (issue #19). For each clip (a
//! folder of numbered frames, e.g. from tools/decode_clips.sh, or a video file / URI played
//! through the GStreamer source) and setting it runs every frame in
//! order, in one process, and compares with per-frame full computation of the same frames:
//! `clip,setting,ms_per_frame,speedup,active_fraction,iou_mean,iou_min,mae_mean,flicker,...`.
//!
//! Settings: `full` (the reference: the unreduced cut model per frame), `reduced M=..` (per-frame
//! AiluRus at `[reduce] cut`), `reuse t=..` at each threshold (`[reuse]`'s refresh rules),
//! `reuse t=.. + a=.. M=..` (reuse before the cut, then the reduced path's AiluRus and middle
//! in full on M tokens, every frame) at each threshold when `--reduced-m` is set, and
//! `reuse t=.. carry a=.. M=..` (reuse before the cut, clusters carried across frames, the
//! middle with reuse on the M merged tokens: `[reuse] carry_clusters`) at each threshold and each
//! `--carry-m` (default: `--reduced-m`).
//!
//! Owns the sweep and its table; it drives the lanes through the same `FrameRunner` as `run`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use ailurus::config::Config;
use ailurus::engine::{Engine, Setting};
use ailurus::frame::{Frame, Mask};
use ailurus::model::io::{FrameRunner, Io};
use ailurus::reduce::Strategy;
use ailurus::reuse::{ReuseConfig, ReuseLane, ReuseModel};

/// `ailurus bench --video` arguments.
#[derive(clap::Args, Clone)]
pub struct VideoArgs {
    /// Temporal reuse on video instead (issue #19): folders of numbered frames
    /// (tools/decode_clips.sh writes .cache/video/frames/*) or video files / URIs played through
    /// GStreamer (.cache/video/bikes.mp4, rtsp://...), each against per-frame full
    /// computation of the same frames at --size. Writes --csv.
    #[arg(long, num_args = 1..)]
    pub video: Vec<PathBuf>,
    /// --video: at most this many frames per clip.
    #[arg(long, default_value_t = 60)]
    pub max_frames: usize,
    /// --video: reuse thresholds to sweep (`[reuse] threshold`; the other [reuse] keys apply).
    #[arg(long, value_delimiter = ',', default_value = "0.2,0.3")]
    pub thresholds: Vec<f32>,
    /// --video: `[reuse] min_active` values, each with every threshold.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    pub min_active: Vec<f32>,
    /// --video: M of the per-frame reduced row (at `[reduce] cut`; 0 for none).
    #[arg(long, default_value_t = 768)]
    pub reduced_m: usize,
    /// --video: M values of the reuse + carried-clusters rows (default: --reduced-m; 0: none).
    #[arg(long, value_delimiter = ',')]
    pub carry_m: Vec<usize>,
}

/// `ailurus bench --video`: the table on stdout, the CSV at `csv`.
pub fn command(cfg: &Config, a: &VideoArgs, csv: &Path, size: u32) -> Result<()> {
    let o = VideoOptions {
        clips: a
            .video
            .iter()
            .map(|d| if d.to_string_lossy().contains("://") { d.clone() } else { cfg.resolve(d) })
            .collect(),
        size,
        max_frames: a.max_frames,
        thresholds: a.thresholds.clone(),
        min_active: a.min_active.clone(),
        reduced_m: a.reduced_m,
        carry_m: if a.carry_m.is_empty() { vec![a.reduced_m] } else { a.carry_m.clone() },
    };
    let rows = run(cfg, &o)?;
    print!("{}", format_table(&rows, &cpu_name()));
    write_csv(&rows, csv)?;
    println!("table written to {}", csv.display());
    Ok(())
}

/// What `--video` measures.
pub struct VideoOptions {
    pub clips: Vec<PathBuf>,
    pub size: u32,
    pub max_frames: usize,
    pub thresholds: Vec<f32>,
    /// `[reuse] min_active` values to sweep with every threshold.
    pub min_active: Vec<f32>,
    /// M of the per-frame reduced row (0: none).
    pub reduced_m: usize,
    /// M of the reuse + carried-clusters rows (0 or >= N: none).
    pub carry_m: Vec<usize>,
}

/// One row.
#[derive(Debug, Clone, Default)]
pub struct VideoRow {
    pub clip: String,
    pub setting: String,
    pub frames: usize,
    pub ms: f64,
    pub speedup: f64,
    pub active: f64,
    pub iou_mean: f64,
    pub iou_min: f64,
    pub mae: f64,
    /// Mean fraction of mask pixels that change between consecutive frames.
    pub flicker: f64,
    pub refreshes: usize,
    pub head_skipped: usize,
    /// Per-frame decision (scores, gates, refresh rules), ms and share of the frame.
    pub decision_ms: f64,
    /// The clip's frames whose full-model mask is ambiguous (`bench::AMBIGUOUS_SHARE` of the
    /// scores within `bench::AMBIGUOUS_MARGIN` of the threshold): any change flips them.
    pub ambiguous: usize,
}

/// The first `max` frames of a clip: a folder of numbered images, or anything the GStreamer
/// source plays (an .mp4 path, a `file://`/`rtsp://`/`http://` URI), decoded to RGB at the
/// clip's own size.
fn frames_of(dir: &Path, max: usize) -> Result<Vec<Frame>> {
    if !dir.is_dir() {
        return played(dir, max);
    }
    let list = ailurus::source::folder::list_images(dir).with_context(|| format!("video folder {}", dir.display()))?;
    anyhow::ensure!(list.len() >= 2, "video folder {}: fewer than 2 frames", dir.display());
    list.iter().take(max).enumerate().map(|(i, p)| Ok(ailurus::source::folder::load_frame(p, i as u64)?)).collect()
}

/// [`frames_of`] for a video file or URI, through `[source] kind = "gstreamer"` (`loop = false`):
/// frames are pulled as fast as they are decoded; a gap in the sequence numbers (a frame the
/// appsink dropped) is an error, since reuse needs consecutive frames.
fn played(clip: &Path, max: usize) -> Result<Vec<Frame>> {
    let what = clip.display().to_string();
    let uri = toml::Value::String(what.clone());
    let cfg: ailurus::source::SourceConfig =
        toml::from_str(&format!("kind = \"gstreamer\"\nloop = false\n[gstreamer]\nuri = {uri}\n"))
            .map_err(|e| anyhow::anyhow!("video {what}: {e}"))?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The path is resolved already; the source's error names it (and exits 2, as bad input).
    let mut src = ailurus::source::build_with_stop(&cfg, Path::new(""), stop.clone())?;
    let mut frames: Vec<Frame> = Vec::with_capacity(max);
    while frames.len() < max {
        let Some(f) = src.next_frame()? else { break };
        if let Some(prev) = frames.last() {
            anyhow::ensure!(
                f.seq == prev.seq + 1,
                "video {what}: frame {} follows {} (a frame was dropped while decoding)",
                f.seq,
                prev.seq
            );
        }
        frames.push(f);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    anyhow::ensure!(frames.len() >= 2, "video {what}: fewer than 2 frames");
    Ok(frames)
}

/// Per-frame work of one setting: the masks, the time, and what the engine reports per frame.
struct Pass {
    masks: Vec<Mask>,
    total: Duration,
    active: f64,
    refreshes: usize,
    head_skipped: usize,
    decision: Duration,
    /// Stem, reduce (clustering, unfold), middle, head, summed over the frames.
    stages: [Duration; 4],
}

impl Pass {
    /// Add one reused frame's report.
    fn tally(&mut self, r: &ailurus::reuse::FrameReport) {
        self.active += r.active_fraction;
        self.refreshes += r.refresh.is_some() as usize;
        self.head_skipped += !r.head_ran as usize;
        self.decision += r.decision;
    }
}

/// Run every frame through `engine` in order; `after` reads the engine's per-frame stats.
fn pass<E: Engine>(
    io: &Io,
    engine: &mut E,
    frames: &[Frame],
    setting: Setting,
    after_warm_up: impl FnOnce(&mut E),
    mut after: impl FnMut(&E, &mut Pass),
) -> Result<Pass> {
    let mut fr = FrameRunner::default();
    let mut p = Pass {
        masks: Vec::new(),
        total: Duration::ZERO,
        active: 0.0,
        refreshes: 0,
        head_skipped: 0,
        decision: Duration::ZERO,
        stages: [Duration::ZERO; 4],
    };
    // One untimed warm-up frame (first-run costs of the plans), then the caller resets.
    fr.run(io, engine, &frames[0], setting, &mut Mask::default())?;
    after_warm_up(engine);
    for f in frames {
        let mut mask = Mask::default();
        let t0 = Instant::now();
        fr.run(io, engine, f, setting, &mut mask)?;
        p.total += t0.elapsed();
        let t = &fr.times;
        for (sum, d) in p.stages.iter_mut().zip([t.stem, t.reduce, t.middle, t.head]) {
            *sum += d;
        }
        after(engine, &mut p);
        p.masks.push(mask);
    }
    Ok(p)
}

fn flicker(masks: &[Mask]) -> f64 {
    let pairs: Vec<f64> = masks
        .windows(2)
        .map(|w| {
            let changed = w[0].classes.iter().zip(&w[1].classes).filter(|(a, b)| a != b).count();
            changed as f64 / w[0].classes.len().max(1) as f64
        })
        .collect();
    pairs.iter().sum::<f64>() / pairs.len().max(1) as f64
}

fn row(clip: &str, setting: String, p: &Pass, reference: Option<(&[Mask], f64)>) -> VideoRow {
    let n = p.masks.len().max(1) as f64;
    let ms = p.total.as_secs_f64() * 1e3 / n;
    let (mut ious, mut maes) = (Vec::new(), Vec::new());
    if let Some((r, _)) = reference {
        for (a, b) in p.masks.iter().zip(r) {
            ious.push(ailurus::eval::iou(&a.classes, &b.classes));
            maes.push(ailurus::eval::mae(&a.scores, &b.scores));
        }
        log::debug!("{clip} {setting}: per-frame IoU {ious:.3?} MAE {maes:.3?}");
    }
    let st: Vec<f64> = p.stages.iter().map(|d| d.as_secs_f64() * 1e3 / n).collect();
    log::info!(
        "{clip} {setting}: ms/frame stem {:.1} reduce {:.1} middle {:.1} head {:.1}",
        st[0],
        st[1],
        st[2],
        st[3]
    );
    let mean = |v: &[f64]| if v.is_empty() { 1.0 } else { v.iter().sum::<f64>() / v.len() as f64 };
    VideoRow {
        clip: clip.into(),
        setting,
        frames: p.masks.len(),
        ms,
        speedup: reference.map_or(1.0, |(_, full_ms)| full_ms / ms),
        active: p.active / n,
        iou_mean: mean(&ious),
        iou_min: ious.iter().copied().fold(1.0, f64::min),
        mae: if maes.is_empty() { 0.0 } else { mean(&maes) },
        flicker: flicker(&p.masks),
        refreshes: p.refreshes,
        head_skipped: p.head_skipped,
        decision_ms: p.decision.as_secs_f64() * 1e3 / n,
        ambiguous: 0,
    }
}

/// The sweep over every clip.
pub fn run(cfg: &Config, o: &VideoOptions) -> Result<Vec<VideoRow>> {
    ailurus::model::configure_cpu(&cfg.model);
    let m = o.reduced_m;
    let fixed: Vec<usize> = if m > 0 { vec![m] } else { Vec::new() };
    let mut lane = super::bench::build(cfg, &[o.size], cfg.reduce.cut, true, &fixed)?;
    super::bench::with_strategy(&mut lane, cfg, Strategy::Ailurus);
    let io = Io::of(lane.segmenter().manifest());
    let n = lane.segmenter().sizes()[0].n_tokens;
    let model = Arc::new(ReuseModel::new(lane.segmenter().clone())?);
    let mut reuse: ReuseLane = model.lane(cfg.reuse.clone())?;
    let mut rows = Vec::new();
    for dir in &o.clips {
        let name = if dir.is_dir() { dir.file_name() } else { dir.file_stem() };
        let clip = name.map_or_else(|| dir.display().to_string(), |s| s.to_string_lossy().into_owned());
        let frames = frames_of(dir, o.max_frames)?;
        log::info!("bench --video: {clip}, {} frames at {} px", frames.len(), o.size);
        let full = pass(
            &io,
            &mut lane,
            &frames,
            Setting { input_size: o.size, m: usize::MAX },
            |_| (),
            |_, p| p.active += 1.0,
        )?;
        let full_row = row(&clip, "full".into(), &full, None);
        let steps: Vec<f64> = full.masks.windows(2).map(|w| ailurus::eval::mae(&w[0].scores, &w[1].scores)).collect();
        log::debug!("{clip} full: MAE between consecutive frames {steps:.3?}");
        let reference = Some((full.masks.as_slice(), full_row.ms));
        let th = lane.segmenter().manifest().output.threshold;
        let ambiguous = full
            .masks
            .iter()
            .filter(|m| {
                ailurus::eval::ambiguous_share(&m.scores, th, super::bench::AMBIGUOUS_MARGIN)
                    >= super::bench::AMBIGUOUS_SHARE
            })
            .count();
        let first = rows.len();
        rows.push(row(&clip, "full".into(), &full, reference));
        if m > 0 && m < n {
            let st = Setting { input_size: o.size, m };
            let p = pass(&io, &mut lane, &frames, st, |_| (), |_, p| p.active += m as f64 / n as f64)?;
            rows.push(row(&clip, format!("reduced M={m}"), &p, reference));
        }
        for (&t, &floor) in o.thresholds.iter().flat_map(|t| o.min_active.iter().map(move |f| (t, f))) {
            let base = ReuseConfig { enabled: true, threshold: t, min_active: floor, ..cfg.reuse.clone() };
            reuse.set_config(ReuseConfig { carry_clusters: false, ..base.clone() });
            let p = pass(&io, &mut reuse, &frames, Setting { input_size: o.size, m: n }, ReuseLane::reset, |e, p| {
                let r = e.last_report();
                log::debug!(
                    "{clip} t={t} min={floor}: refresh {:?} (agreement {:?}, period {}), active per block {:?}",
                    r.refresh,
                    r.agreement,
                    e.refresh_period(),
                    r.encoder.active
                );
                p.tally(r);
            })?;
            let name = if floor > 0.0 { format!("reuse t={t} min={floor}") } else { format!("reuse t={t}") };
            rows.push(row(&clip, name.clone(), &p, reference));
            if m > 0 && m < n {
                // Reuse + reduction: reuse before the cut, AiluRus and the middle on M tokens.
                let st = Setting { input_size: o.size, m };
                let p = pass(&io, &mut reuse, &frames, st, ReuseLane::reset, |e, p| {
                    let r = e.last_report();
                    p.tally(r);
                })?;
                let name = format!("{name} + a={} M={m}", cfg.reduce.cut);
                rows.push(row(&clip, name, &p, reference));
            }
            reuse.set_config(ReuseConfig { carry_clusters: true, ..base.clone() });
            for &cm in o.carry_m.iter().filter(|&&cm| cm > 0 && cm < n) {
                // Reuse + reduction with carried clusters: the middle with reuse too.
                let st = Setting { input_size: o.size, m: cm };
                let mut reclusters = 0;
                let p = pass(&io, &mut reuse, &frames, st, ReuseLane::reset, |e, p| {
                    let r = e.last_report();
                    log::debug!(
                        "{clip} t={t} carry M={cm}: refresh {:?}, re-cluster {:?}, changed {} moved {} touched {}, \
                         stem {:?}, middle {:?}, clusters {:.1?} middle {:.1?}",
                        r.refresh,
                        r.carry.reclustered,
                        r.carry.changed,
                        r.carry.moved,
                        r.carry.touched,
                        r.encoder.active,
                        r.carry.middle.active,
                        r.carry.cluster_time,
                        r.carry.middle_time
                    );
                    reclusters += r.carry.reclustered.is_some() as usize;
                    p.tally(r);
                })?;
                let name = format!("{name} carry a={} M={cm}", cfg.reduce.cut);
                log::info!("{clip} {name}: re-clustered on {reclusters} of {} frames", frames.len());
                rows.push(row(&clip, name, &p, reference));
            }
        }
        for r in &mut rows[first..] {
            r.ambiguous = ambiguous;
        }
    }
    Ok(rows)
}

pub fn format_table(rows: &[VideoRow], cpu: &str) -> String {
    let mut s = format!("temporal reuse, same run, {cpu}\n");
    s += &format!(
        "{:<18} {:<30} {:>6} {:>9} {:>7} {:>7} {:>8} {:>7} {:>7} {:>7} {:>5} {:>5} {:>8}\n",
        "clip",
        "setting",
        "frames",
        "ms/frame",
        "speedup",
        "active",
        "iou_mean",
        "iou_min",
        "mae",
        "flicker",
        "refr",
        "hskip",
        "decision"
    );
    for r in rows {
        s += &format!(
            "{:<18} {:<30} {:>6} {:>9.1} {:>6.2}x {:>7.3} {:>8.4} {:>7.4} {:>7.4} {:>7.4} {:>5} {:>5} {:>5.2} ms\n",
            r.clip,
            r.setting,
            r.frames,
            r.ms,
            r.speedup,
            r.active,
            r.iou_mean,
            r.iou_min,
            r.mae,
            r.flicker,
            r.refreshes,
            r.head_skipped,
            r.decision_ms
        );
    }
    let mut clips: Vec<(&str, usize, usize)> = rows.iter().map(|r| (r.clip.as_str(), r.ambiguous, r.frames)).collect();
    clips.dedup_by(|a, b| a.0 == b.0);
    let listed: Vec<String> = clips.iter().map(|(c, a, n)| format!("{c} {a} of {n}")).collect();
    s += &format!(
        "# ambiguous frames (>= {:.0}% of the full model's scores within {} of the threshold: any change flips \
         their masks, so they drag iou_mean/iou_min; the mae still counts): {}\n",
        100.0 * super::bench::AMBIGUOUS_SHARE,
        super::bench::AMBIGUOUS_MARGIN,
        listed.join(", ")
    );
    s
}

pub fn write_csv(rows: &[VideoRow], path: &Path) -> Result<()> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut s = String::from(
        "clip,setting,ms_per_frame,speedup,active_fraction,iou_mean,iou_min,mae_mean,flicker,frames,refreshes,head_skipped,decision_ms,ambiguous_frames\n",
    );
    for r in rows {
        s += &format!(
            "{},{},{:.2},{:.4},{:.4},{:.5},{:.5},{:.5},{:.5},{},{},{},{:.3},{}\n",
            r.clip,
            r.setting,
            r.ms,
            r.speedup,
            r.active,
            r.iou_mean,
            r.iou_min,
            r.mae,
            r.flicker,
            r.frames,
            r.refreshes,
            r.head_skipped,
            r.decision_ms,
            r.ambiguous
        );
    }
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

/// The CPU model name (for the table's title line).
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}
