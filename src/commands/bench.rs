//! `ailurus bench`: every strategy on the same real photos in one run, against the unreduced
//! model (`none` at the reference size) and against simply running at a lower input
//! resolution (`lowres`). Prints one table, writes it as CSV, and draws the Pareto picture.
//!
//! Owns the sweep, the fidelity metrics and the table; it must not change how the runtime
//! infers (it drives a `SegmenterLane` and the model's `Io` exactly as `run` does, through the
//! library's single-frame runner).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use ailurus::config::Config;
use ailurus::engine::Setting;
use ailurus::frame::{Frame, Mask};
use ailurus::model::io::{FrameRunner, Io};
use ailurus::model::{Segmenter, SegmenterLane, SegmenterOptions};
use ailurus::reduce::Strategy;

use super::bench_table::{format_ambiguous, format_table, photo_csv_path, write_csv, write_photo_csv, write_plot};

/// What to sweep.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The reference input size (`none` runs here; fidelity is measured against it).
    pub size: u32,
    /// Photos to use (at most this many, from the photo list).
    pub photos: Vec<PathBuf>,
    /// Reducing strategies to sweep.
    pub strategies: Vec<Strategy>,
    /// Cluster counts as fractions of N at the reference size (e.g. 0.5 = 512 of 1024).
    pub m_list: Vec<usize>,
    /// Cut points for the main sweep.
    pub cuts: Vec<usize>,
    /// Extra cut points measured for `ailurus` at one M.
    pub extra_cuts: Vec<usize>,
    /// Smaller input sizes at which reduction is combined with the lower resolution.
    pub combo_sizes: Vec<u32>,
    /// `lowres` sizes.
    pub lowres: Vec<u32>,
    /// Measure proportional attention off too.
    pub bias_off: bool,
    /// Timed repetitions per photo (the first, warm-up run is not timed).
    pub reps: usize,
    /// Put ONNX Runtime ("ort") in a peer table, at these thread counts.
    pub peer: Option<String>,
    pub peer_threads: Vec<usize>,
    /// The peer table's reduced setting: the fastest with at least this mask IoU against
    /// unreduced.
    pub peer_min_iou: f64,
    /// Precisions of the ailurus rows in the peer table (`[model] precision`).
    pub peer_precisions: Vec<ailurus::model::bf16::Precision>,
    /// Rounds of the peer table (ailurus, then ONNX Runtime, again and again): each row is the
    /// median round's.
    pub peer_rounds: usize,
    /// A fine-tuned manifest (same model plus a `[delta]`): its `ailurus` rows are added as
    /// `ailurus-ft`, measured against the stock reference on the same photos.
    pub finetuned: Option<PathBuf>,
}

/// One row of the table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub strategy: String,
    pub cut: usize,
    pub size: u32,
    pub m: usize,
    pub n: usize,
    pub bias: bool,
    /// Whole frame: preprocess + model + postprocess.
    pub ms: f64,
    /// The model alone (normalised input tensor -> raw output: stem, reduce, middle, head).
    pub infer_ms: f64,
    pub speedup: f64,
    /// Ideal speed-up: stem, head, pre/post at this size fixed, middle scaled by M/N.
    pub ideal: f64,
    /// Share of frame time in clustering + merge + unfold.
    pub reduce_share: f64,
    pub stem_ms: f64,
    pub middle_ms: f64,
    pub head_ms: f64,
    pub iou: f64,
    /// The worst photo's mask IoU against unreduced.
    pub iou_min: f64,
    /// Mask IoU against unreduced per photo, in photo order (empty for the reference).
    pub ious: Vec<f64>,
    pub mae: f64,
    /// MAE of the scores against unreduced per photo.
    pub maes: Vec<f64>,
    pub gt_iou: f64,
    pub pareto: bool,
}

/// The sweep's rows, and per photo the share of the reference's scores near the threshold.
pub struct Sweep {
    pub rows: Vec<Row>,
    pub ambiguous: Vec<f64>,
}

/// A reference photo counts as ambiguous when this share of its scores lies within
/// `AMBIGUOUS_MARGIN` of the threshold (the rule and the margin are written under the table).
pub const AMBIGUOUS_SHARE: f64 = 0.5;
pub const AMBIGUOUS_MARGIN: f32 = 0.05;

pub(super) struct Photo {
    pub(super) frame: Frame,
    gt: Option<Vec<u8>>,
}

/// Reference outputs at the reference size.
pub(super) struct Reference {
    pub(super) masks: Vec<Mask>,
}

pub(super) fn load_photos(paths: &[PathBuf]) -> Result<Vec<Photo>> {
    paths
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let frame = ailurus::source::folder::load_frame(p, i as u64)?;
            let gt = match ailurus::eval::find_for(p) {
                Some(g) => Some(
                    ailurus::eval::load_foreground(&g, frame.width, frame.height)
                        .with_context(|| format!("ground truth {}", g.display()))?,
                ),
                None => None,
            };
            Ok(Photo { frame, gt })
        })
        .collect()
}

/// Time and score one setting on every photo.
#[allow(clippy::too_many_arguments)]
pub(super) fn measure(
    lane: &mut SegmenterLane,
    photos: &[Photo],
    setting: Setting,
    reps: usize,
    reference: Option<&Reference>,
    keep_masks: bool,
) -> Result<(Row, Vec<Mask>)> {
    let io = Io::of(lane.segmenter().manifest());
    let mut fr = FrameRunner::default();
    let mut masks = Vec::new();
    let (mut total, mut reduce, mut stem, mut middle, mut head, mut infer) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let (mut ious, mut maes, mut gts) = (vec![], vec![], vec![]);
    let mut timed = 0usize;
    let mut m_used = setting.m;
    for (pi, ph) in photos.iter().enumerate() {
        let mut mask = Mask::default();
        for rep in 0..=reps {
            let t0 = Instant::now();
            fr.run(&io, lane, &ph.frame, setting, &mut mask)?;
            let dt = t0.elapsed();
            let times = fr.times;
            m_used = fr.m_used;
            let model_time = times.inference();
            if rep > 0 || reps == 0 {
                total += dt;
                reduce += times.reduce;
                stem += times.stem;
                infer += model_time;
                middle += times.middle;
                head += times.head;
                timed += 1;
            }
        }
        if let Some(r) = reference {
            ious.push(ailurus::eval::iou(&mask.classes, &r.masks[pi].classes));
            maes.push(ailurus::eval::mae(&mask.scores, &r.masks[pi].scores));
        }
        if let Some(gt) = &ph.gt {
            gts.push(ailurus::eval::iou_fg_bg(&mask.classes, gt).0);
        }
        if keep_masks {
            masks.push(mask);
        }
    }
    let mean = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let k = timed.max(1) as f64;
    let row = Row {
        size: setting.input_size,
        m: m_used,
        ms: total.as_secs_f64() * 1e3 / k,
        infer_ms: infer.as_secs_f64() * 1e3 / k,
        reduce_share: reduce.as_secs_f64() / total.as_secs_f64().max(1e-12),
        stem_ms: stem.as_secs_f64() * 1e3 / k,
        middle_ms: middle.as_secs_f64() * 1e3 / k,
        head_ms: head.as_secs_f64() * 1e3 / k,
        iou: if reference.is_some() { mean(&ious) } else { 1.0 },
        iou_min: if reference.is_some() { ious.iter().copied().fold(1.0, f64::min) } else { 1.0 },
        ious,
        mae: if reference.is_some() { mean(&maes) } else { 0.0 },
        maes,
        gt_iou: mean(&gts),
        ..Default::default()
    };
    Ok((row, masks))
}

/// `fixed`: the Ms measured on this segmenter, each given a fixed-shape middle plan (as the
/// runtime does for its configured M) when `[model] fixed_middle` is on.
pub(super) fn build(cfg: &Config, sizes: &[u32], cut: usize, bias: bool, fixed: &[usize]) -> Result<SegmenterLane> {
    build_from(cfg, &cfg.resolve(&cfg.model.manifest), sizes, cut, bias, fixed)
}

fn build_from(
    cfg: &Config,
    manifest: &Path,
    sizes: &[u32],
    cut: usize,
    bias: bool,
    fixed: &[usize],
) -> Result<SegmenterLane> {
    let mut reduce = cfg.reduce.clone();
    reduce.cut = cut;
    reduce.proportional_attention = bias;
    let on = cfg.model.fixed_middle;
    let opts = SegmenterOptions {
        sizes: sizes.to_vec(),
        reduce,
        with_full: false,
        verify_sha256: true,
        fixed_middle: if on { fixed.to_vec() } else { Vec::new() },
        fixed_unreduced: on,
        device: cfg.model.device.get(),
    };
    Ok(std::sync::Arc::new(Segmenter::load(manifest, &opts)?).lane()?)
}

pub(super) fn with_strategy(lane: &mut SegmenterLane, cfg: &Config, strategy: Strategy) {
    let mut r = cfg.reduce.clone();
    r.strategy = strategy.into();
    // `[reduce] device` applies to the strategy the kernels implement (ailurus); the baselines
    // always run on the CPU.
    let on_device = if strategy == Strategy::Ailurus { ailurus::reduce::build_on_device(&r).ok() } else { None };
    lane.set_reducer(on_device.unwrap_or_else(|| ailurus::reduce::build(&r)));
}

/// Tokens at an input size.
fn n_at(size: u32, patch: u32) -> usize {
    ((size / patch) as usize).pow(2)
}

/// Run the sweep and return the table.
pub fn run(cfg: &Config, o: &BenchOptions) -> Result<Sweep> {
    ailurus::model::configure_cpu(&cfg.model);
    let photos = load_photos(&o.photos)?;
    anyhow::ensure!(!photos.is_empty(), "bench: no photos");
    let manifest = ailurus::model::Manifest::load(&cfg.resolve(&cfg.model.manifest))?;
    let patch = manifest.tokens.patch;
    let n_ref = n_at(o.size, patch);
    let mut sizes: Vec<u32> = vec![o.size];
    sizes.extend(o.combo_sizes.iter().chain(&o.lowres).copied());
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    sizes.dedup();
    let main_cut = cfg.reduce.cut;
    let blocks = manifest.num_blocks();
    let mut rows = Vec::new();
    let progress = |what: &str| log::info!("bench: {what}");

    // Reference + lowres, on a segmenter with the main cut and bias on.
    let mut seg = build(cfg, &sizes, main_cut, true, &[])?;
    progress(&format!("none at {} (reference)", o.size));
    let (mut r0, ref_masks) =
        measure(&mut seg, &photos, Setting { input_size: o.size, m: usize::MAX }, o.reps, None, true)?;
    let reference = Reference { masks: ref_masks };
    let th = manifest.output.threshold;
    let ambiguous =
        reference.masks.iter().map(|m| ailurus::eval::ambiguous_share(&m.scores, th, AMBIGUOUS_MARGIN)).collect();
    r0.strategy = "none".into();
    r0.cut = 0;
    r0.n = n_ref;
    rows.push(r0.clone());
    let none_ms = r0.ms;
    // Per-size unreduced cost (for the ideal bound).
    let mut none_at: BTreeMap<u32, Row> = BTreeMap::new();
    none_at.insert(o.size, r0.clone());
    for &s in &o.lowres {
        progress(&format!("lowres {s}"));
        let (mut r, _) =
            measure(&mut seg, &photos, Setting { input_size: s, m: usize::MAX }, o.reps, Some(&reference), false)?;
        r.strategy = "lowres".into();
        r.n = n_at(s, patch);
        none_at.insert(s, r.clone());
        rows.push(r);
    }
    for &s in &o.combo_sizes {
        if let std::collections::btree_map::Entry::Vacant(slot) = none_at.entry(s) {
            let (mut r, _) =
                measure(&mut seg, &photos, Setting { input_size: s, m: usize::MAX }, o.reps, Some(&reference), false)?;
            r.strategy = "lowres".into();
            r.n = n_at(s, patch);
            slot.insert(r.clone());
            rows.push(r);
        }
    }
    drop(seg);

    let mut cuts: Vec<usize> = o.cuts.iter().chain(&o.extra_cuts).copied().collect();
    cuts.sort_unstable();
    cuts.dedup();
    for &cut in &cuts {
        for bias in [true, false] {
            if !bias && !o.bias_off {
                continue;
            }
            let main = o.cuts.contains(&cut);
            if !main && !bias {
                continue;
            }
            let plan = |strategy: Strategy| -> Vec<Setting> {
                let mut settings = Vec::new();
                if strategy == Strategy::Grid {
                    // Grid pooling has one natural M per size (2x2 windows).
                    settings.push(Setting { input_size: o.size, m: n_ref / 4 });
                    if main {
                        for &s in &o.combo_sizes {
                            settings.push(Setting { input_size: s, m: n_at(s, patch) / 4 });
                        }
                    }
                } else if main {
                    settings.extend(o.m_list.iter().map(|&m| Setting { input_size: o.size, m }));
                    if bias {
                        for &s in &o.combo_sizes {
                            let n = n_at(s, patch);
                            for frac in [0.5, 0.75] {
                                settings.push(Setting { input_size: s, m: (n as f64 * frac).round() as usize });
                            }
                        }
                    }
                } else if strategy == Strategy::Ailurus {
                    let m = o.m_list.iter().copied().min_by_key(|&m| m.abs_diff(n_ref / 2)).unwrap_or(n_ref / 2);
                    settings.push(Setting { input_size: o.size, m });
                }
                settings
            };
            let mut fixed: Vec<usize> = o.strategies.iter().flat_map(|&s| plan(s)).map(|st| st.m).collect();
            fixed.sort_unstable();
            fixed.dedup();
            let mut seg = build(cfg, &sizes, cut, bias, &fixed)?;
            for &strategy in &o.strategies {
                with_strategy(&mut seg, cfg, strategy);
                for st in plan(strategy) {
                    progress(&format!("{strategy} a={cut} {}px M={} bias={}", st.input_size, st.m, bias));
                    let (mut r, _) = measure(&mut seg, &photos, st, o.reps, Some(&reference), false)?;
                    r.strategy = strategy.to_string();
                    r.cut = cut;
                    r.bias = bias;
                    r.n = n_at(st.input_size, patch);
                    rows.push(r);
                }
            }
        }
    }
    if let Some(ft) = &o.finetuned {
        let mut settings: Vec<Setting> = o.m_list.iter().map(|&m| Setting { input_size: o.size, m }).collect();
        for &s in &o.combo_sizes {
            let n = n_at(s, patch);
            for frac in [0.5, 0.75] {
                settings.push(Setting { input_size: s, m: (n as f64 * frac).round() as usize });
            }
        }
        let mut fixed: Vec<usize> = settings.iter().map(|st| st.m).collect();
        fixed.sort_unstable();
        fixed.dedup();
        let mut seg = build_from(cfg, ft, &sizes, main_cut, true, &fixed)?;
        with_strategy(&mut seg, cfg, Strategy::Ailurus);
        for st in settings {
            progress(&format!("ailurus-ft a={main_cut} {}px M={}", st.input_size, st.m));
            let (mut r, _) = measure(&mut seg, &photos, st, o.reps, Some(&reference), false)?;
            r.strategy = "ailurus-ft".into();
            r.cut = main_cut;
            r.bias = true;
            r.n = n_at(st.input_size, patch);
            rows.push(r);
        }
    }
    // Speed-ups, ideal bounds, Pareto front.
    for r in rows.iter_mut() {
        r.speedup = none_ms / r.ms;
        let base = &none_at[&r.size];
        // The unreduced middle ran blocks main_cut..L; a row cut at a runs L - a blocks on M of
        // N tokens (linear in tokens: the bound ignores attention's quadratic term).
        let per_block = base.middle_ms / blocks.saturating_sub(main_cut).max(1) as f64;
        let ideal_ms = if r.strategy == "none" || r.strategy == "lowres" {
            base.ms
        } else {
            let reduced = blocks.saturating_sub(r.cut) as f64;
            base.ms - per_block * reduced * (1.0 - r.m as f64 / r.n as f64)
        };
        r.ideal = none_ms / ideal_ms;
    }
    let snapshot: Vec<(f64, f64)> = rows.iter().map(|r| (r.speedup, r.iou)).collect();
    for (i, r) in rows.iter_mut().enumerate() {
        r.pareto = !snapshot.iter().enumerate().any(|(j, &(s, f))| {
            j != i && s >= snapshot[i].0 && f >= snapshot[i].1 && (s > snapshot[i].0 || f > snapshot[i].1)
        });
    }
    Ok(Sweep { rows, ambiguous })
}

/// The peer table (`--peer ort`): ailurus unreduced and at its fastest setting with mask IoU
/// >= `--peer-min-iou` (from `rows`) against ONNX Runtime, per thread count.
pub fn run_peer(cfg: &Config, o: &BenchOptions, rows: &[Row]) -> Result<super::peer::PeerTable> {
    let photos = load_photos(&o.photos)?;
    let reduced = super::peer::pick_reduced(rows, o.size, o.peer_min_iou);
    let rounds = super::peer::Rounds { n: o.peer_rounds, threads: &o.peer_threads, reps: o.reps };
    super::peer::run_rounds(cfg, &photos, &o.photos, o.size, reduced.as_ref(), rounds, &o.peer_precisions)
}

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    config: super::ConfigArg,
    /// Reference input size (the unreduced model here is what fidelity is measured against).
    #[arg(long, default_value_t = 448)]
    size: u32,
    /// Photo folders (all images in each; VOC layouts use JPEGImages/ and their ground truth)
    /// or single photo files.
    #[arg(long, value_delimiter = ',', default_value = ".cache/photos,.cache/voc")]
    photos: Vec<PathBuf>,
    /// Use at most this many photos (spread over the folders).
    #[arg(long, default_value_t = 8)]
    max_photos: usize,
    #[arg(long, value_delimiter = ',', default_value = "ailurus,tome,grid", value_parser = super::parse_strategy)]
    strategies: Vec<Strategy>,
    /// Cluster counts at the reference size.
    #[arg(long, value_delimiter = ',', default_value = "128,256,384,512,768")]
    m: Vec<usize>,
    /// Cut points for the full sweep.
    #[arg(long, value_delimiter = ',', default_value = "3")]
    cuts: Vec<usize>,
    /// Extra cut points, measured for ailurus at M ~ N/2 ("none" for none).
    #[arg(long, default_value = "1,2,4", value_parser = super::list::<usize>)]
    extra_cuts: super::List<usize>,
    /// Smaller input sizes combined with reduction (M = N/2 and 3N/4 there; "none" for none).
    #[arg(long, default_value = "392,336", value_parser = super::list::<u32>)]
    combo: super::List<u32>,
    /// Input sizes for the lowres baseline ("none" for none).
    #[arg(long, default_value = "392,336,280,224", value_parser = super::list::<u32>)]
    lowres: super::List<u32>,
    /// Also measure every reducer with proportional attention off.
    #[arg(long)]
    bias_off: bool,
    /// Also run a peer on the same photos and print a peer table: "ort" (ONNX Runtime's full
    /// model through tools/ort_bench.py) against ailurus unreduced and at its fastest setting
    /// with mask IoU >= --peer-min-iou against unreduced.
    #[arg(long, value_parser = ["ort"])]
    peer: Option<String>,
    /// The fidelity floor of the peer table's reduced setting: the fastest swept setting with
    /// at least this mean mask IoU against unreduced (none reaches it: the most faithful one).
    #[arg(long, default_value_t = 0.97, value_parser = parse_iou)]
    peer_min_iou: f64,
    /// Thread counts for the peer table (both engines).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    peer_threads: Vec<usize>,
    /// Rounds of the peer table: ailurus and ONNX Runtime measured in turn this many times, each
    /// row the median round's, with the range of its ratio to ONNX Runtime over the rounds (a
    /// VM's speed drifts between the two engines' turns).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=20))]
    peer_rounds: u64,
    /// Precisions of the ailurus rows of the peer table ("f32", "bf16", "f16"): each is timed at every
    /// thread count, with mask IoU against the f32 unreduced masks; one the CPU lacks is skipped
    /// with a log line.
    #[arg(long, value_delimiter = ',', default_value = "f32", value_parser = super::parse_precision)]
    precisions: Vec<ailurus::model::bf16::Precision>,
    /// Timed repetitions per photo after one warm-up run.
    #[arg(long, default_value_t = 1)]
    reps: usize,
    #[arg(long, default_value = "out/bench.csv")]
    csv: PathBuf,
    /// A fine-tuned model manifest (models/vit_s_focus_ft.toml): adds its `ailurus` rows
    /// (`ailurus-ft`), scored against the stock model's reference on the same photos.
    #[arg(long)]
    finetuned: Option<PathBuf>,
    /// `--video` and its knobs (commands/video.rs).
    #[command(flatten)]
    video: super::video::VideoArgs,
}

/// Up to `max` photos, round-robin over the folders (so a small budget still sees every kind
/// of photo).
fn pick_photos(cfg: &Config, folders: &[PathBuf], max: usize) -> Result<Vec<PathBuf>> {
    let lists: Vec<Vec<PathBuf>> = folders
        .iter()
        .map(|d| {
            let p = cfg.resolve(d);
            if p.is_file() {
                Ok(vec![p])
            } else {
                super::eval::eval_images(&p)
            }
        })
        .collect::<Result<_, _>>()?;
    let mut photos = Vec::new();
    for i in 0.. {
        let before = photos.len();
        for l in &lists {
            if let Some(p) = l.get(i) {
                if photos.len() < max {
                    photos.push(p.clone());
                }
            }
        }
        if photos.len() == before || photos.len() >= max {
            break;
        }
    }
    Ok(photos)
}

/// `ailurus bench`: the table, its CSV and plot, and the peer table with `--peer`.
pub fn command(b: Args) -> Result<()> {
    let cfg = b.config.load()?;
    if !b.video.video.is_empty() {
        return super::video::command(&cfg, &b.video, &b.csv, b.size);
    }
    let opts = BenchOptions {
        size: b.size,
        photos: pick_photos(&cfg, &b.photos, b.max_photos)?,
        strategies: b.strategies,
        m_list: b.m,
        cuts: b.cuts,
        extra_cuts: b.extra_cuts.0,
        combo_sizes: b.combo.0,
        lowres: b.lowres.0,
        bias_off: b.bias_off,
        reps: b.reps,
        peer: b.peer.clone(),
        peer_threads: b.peer_threads.clone(),
        peer_min_iou: b.peer_min_iou,
        peer_precisions: b.precisions,
        peer_rounds: b.peer_rounds as usize,
        finetuned: b.finetuned.map(|f| cfg.resolve(&f)),
    };
    let Sweep { rows, ambiguous } = run(&cfg, &opts)?;
    print!("{}", format_table(&rows));
    print!("{}", format_ambiguous(&opts.photos, &ambiguous));
    write_csv(&rows, &b.csv)?;
    let per_photo = photo_csv_path(&b.csv);
    write_photo_csv(&rows, &opts.photos, &ambiguous, &per_photo)?;
    let plot = b.csv.with_extension("png");
    write_plot(&rows, &plot)?;
    println!("table written to {}, per photo to {}, plot to {}", b.csv.display(), per_photo.display(), plot.display());
    if opts.peer.is_some() {
        let peer = run_peer(&cfg, &opts, &rows)?;
        print!("{}", super::peer::format(&peer, opts.size, opts.photos.len()));
    }
    Ok(())
}

/// An IoU in [0, 1] (`--peer-min-iou`).
fn parse_iou(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not an IoU between 0 and 1")),
    }
}
