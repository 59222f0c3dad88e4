//! `ailurus bench --peer ort`: ONNX Runtime on the full model, on the same photos, in the same
//! run, next to ailurus unreduced and ailurus at its best reduced setting, at 1 and 2 threads.
//!
//! ONNX Runtime runs through `tools/ort_bench.py` in the project's venv (tools/setup_python.sh),
//! which writes its timings as JSON; this module runs it and reads that file. Ratios are
//! throughput ratios (ORT ms / ailurus ms) at an equal thread count.
//!
//! "ailurus xN" is the throughput mode: N frames in flight, one per core, each on one thread
//! (so no matmul is split across cores). Its ms/frame is wall time per frame (throughput) and
//! "lat" the mean latency of one frame, which is about N times longer.
//!
//! Both engines are timed on the same work: the model alone, from the normalised input tensor
//! to the raw output (ONNX Runtime's `session.run`; ailurus's stem, reduction, middle and head).
//! ailurus's own pre/post-processing (resize + normalise, upsample + threshold) is printed on a
//! line of its own: the ORT script does its preprocessing in numpy outside the timed call, so
//! counting ours in would compare unequal work.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::bench::{build, measure, with_strategy, Photo, Reference, Row};
use ailurus::config::Config;
use ailurus::engine::FrameIo;
use ailurus::engine::{Setting, StageTimes};
use ailurus::model::bf16::Precision;
use ailurus::model::{Io, SegmenterLane};
use ailurus::reduce::Strategy;

/// The peer table: its rows, ONNX Runtime's version, and ailurus's pre/post-processing time per
/// frame (1 thread; not in the rows, see the module doc).
#[derive(Debug, Clone)]
pub struct PeerTable {
    pub rows: Vec<PeerRow>,
    pub ort_version: String,
    pub prepost_ms: f64,
    /// The precisions measured, each with the kernel its linear layers ran on.
    pub precisions: Vec<(Precision, String)>,
    /// How many rounds the rows are the median of ([`median_of`]).
    pub rounds: usize,
}

/// One ailurus or ONNX Runtime line of the peer table.
#[derive(Debug, Clone)]
pub struct PeerRow {
    pub engine: String,
    pub threads: usize,
    pub setting: String,
    pub ms: f64,
    /// Fidelity against ailurus' own unreduced output (1.0 for the unreduced rows).
    pub iou: f64,
    pub mae: f64,
    /// Over several rounds: the lowest and highest ratio of ONNX Runtime's time at the same
    /// thread count to this row's, each within one round.
    pub ratio_range: Option<(f64, f64)>,
}

#[derive(Deserialize)]
struct OrtDoc {
    onnxruntime: String,
    results: Vec<OrtResult>,
}

#[derive(Deserialize)]
struct OrtResult {
    size: u32,
    threads: usize,
    part: String,
    #[serde(default)]
    mean_ms: f64,
}

/// The venv's python (tools/setup_python.sh), else `python3`.
fn python(cfg: &Config) -> PathBuf {
    let venv = cfg.resolve(Path::new(".cache/venv/bin/python"));
    if venv.is_file() {
        venv
    } else {
        PathBuf::from("python3")
    }
}

/// Run ONNX Runtime's full model on `photos` at `size` with each thread count.
fn run_ort(
    cfg: &Config,
    photos: &[PathBuf],
    size: u32,
    threads: &[usize],
    cut: usize,
) -> Result<(String, Vec<PeerRow>)> {
    let script = cfg.resolve(Path::new("tools/ort_bench.py"));
    let json = std::env::temp_dir().join(format!("ailurus-ort-{}.json", std::process::id()));
    let mut cmd = Command::new(python(cfg));
    cmd.arg(&script).arg("--sizes").arg(size.to_string()).arg("--cut").arg(cut.to_string());
    cmd.arg("--threads").args(threads.iter().map(|t| t.to_string()));
    cmd.arg("--photos").args(photos).arg("--json").arg(&json);
    log::info!("bench: ONNX Runtime peer: {cmd:?}");
    let out =
        cmd.output().with_context(|| format!("running {} (tools/setup_python.sh installs it)", script.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        bail!("{}: {}", script.display(), err.lines().last().unwrap_or("failed"));
    }
    let doc: OrtDoc = serde_json::from_slice(&std::fs::read(&json).with_context(|| json.display().to_string())?)
        .with_context(|| format!("{}: not ort_bench JSON", json.display()))?;
    let _ = std::fs::remove_file(&json);
    let rows = doc
        .results
        .iter()
        .filter(|r| r.part == "full" && r.size == size)
        .map(|r| PeerRow {
            engine: "onnxruntime".into(),
            threads: r.threads,
            setting: "full model".into(),
            ms: r.mean_ms,
            iou: f64::NAN,
            mae: f64::NAN,
            ratio_range: None,
        })
        .collect();
    Ok((doc.onnxruntime, rows))
}

/// The reduced setting to put against ONNX Runtime: the fastest `ailurus` row at the reference
/// size with mask IoU >= `min_iou`, else the most faithful one.
pub fn pick_reduced(rows: &[Row], size: u32, min_iou: f64) -> Option<Row> {
    let ours = rows.iter().filter(|r| r.strategy == Strategy::Ailurus.to_string() && r.size == size && r.bias);
    let fast = ours.clone().filter(|r| r.iou >= min_iou).min_by(|a, b| a.ms.total_cmp(&b.ms));
    fast.or_else(|| ours.max_by(|a, b| a.iou.total_cmp(&b.iou))).cloned()
}

/// Measure ailurus unreduced and at `reduced` with each thread count, at each of `precisions`
/// (`[model] precision`; fidelity of the bf16 and f16 rows against the f32 unreduced masks of the same
/// run), then ONNX Runtime.
#[allow(clippy::too_many_arguments)]
fn run(
    cfg: &Config,
    photos: &[Photo],
    paths: &[PathBuf],
    size: u32,
    reduced: Option<&Row>,
    threads: &[usize],
    reps: usize,
    precisions: &[Precision],
) -> Result<PeerTable> {
    let mut rows = Vec::new();
    let mut prepost = Vec::new();
    let cut = reduced.map(|r| r.cut).unwrap_or(cfg.reduce.cut);
    let mut reference: Option<Reference> = None;
    let mut measured = Vec::new();
    for (i, &want) in precisions.iter().enumerate() {
        let used = ailurus::model::bf16::set_precision(want);
        if used != want {
            log::warn!("bench: peer, precision {want} skipped: this CPU runs it as {used}");
            continue;
        }
        // The f32 rows carry no suffix (the table's usual rows); others name their precision.
        let tag = if want == Precision::F32 { String::new() } else { format!(", {want}") };
        let linear = ailurus::model::isa::kernels().into_iter().find(|(f, _)| *f == "linear").map(|(_, k)| k);
        measured.push((want, linear.unwrap_or_default()));
        let mut v = Variant { cfg, photos, size, reduced, threads, reps, cut, tag: &tag };
        let masks = v.measure(reference.as_ref(), &mut rows, if i == 0 { Some(&mut prepost) } else { None })?;
        reference = reference.or(masks);
    }
    ailurus::model::bf16::set_precision(cfg.model.precision.get());
    ailurus::model::set_threads(cfg.model.threads);
    let (version, ort) = run_ort(cfg, paths, size, threads, cut)?;
    rows.extend(ort);
    let prepost_ms = if prepost.is_empty() { f64::NAN } else { prepost.iter().sum::<f64>() / prepost.len() as f64 };
    Ok(PeerTable { rows, ort_version: version, prepost_ms, precisions: measured, rounds: 1 })
}

/// How often and how the peer table is measured: `n` rounds ([`median_of`]), at these thread
/// counts, `reps` timed repetitions per photo.
pub struct Rounds<'a> {
    pub n: usize,
    pub threads: &'a [usize],
    pub reps: usize,
}

/// [`run`] `rounds.n` times in turn (ailurus, then ONNX Runtime, again), as one table
/// ([`median_of`]).
pub(super) fn run_rounds(
    cfg: &Config,
    photos: &[Photo],
    paths: &[PathBuf],
    size: u32,
    reduced: Option<&Row>,
    rounds: Rounds,
    precisions: &[Precision],
) -> Result<PeerTable> {
    let mut tables = Vec::with_capacity(rounds.n);
    for round in 0..rounds.n {
        if rounds.n > 1 {
            log::info!("bench: peer, round {} of {}", round + 1, rounds.n);
        }
        tables.push(run(cfg, photos, paths, size, reduced, rounds.threads, rounds.reps, precisions)?);
    }
    median_of(tables)
}

/// One table from several rounds of the same rows in the same order (`ailurus bench
/// --peer-rounds`): each row is the median round's measurement (the lower median for an even
/// count), with the range of its ratio to ONNX Runtime's time at its thread count in the same
/// round, so that a drift of the machine's speed between the two engines' turns shows.
pub fn median_of(mut rounds: Vec<PeerTable>) -> Result<PeerTable> {
    if rounds.len() <= 1 {
        return rounds.pop().context("no peer round");
    }
    let mut out = rounds[0].clone();
    out.rounds = rounds.len();
    for (i, row) in out.rows.iter_mut().enumerate() {
        let mut per = Vec::with_capacity(rounds.len());
        for t in &rounds {
            let r = t
                .rows
                .get(i)
                .filter(|r| r.engine == row.engine && r.threads == row.threads)
                .context("peer rounds measured different rows")?;
            let ort = t.rows.iter().find(|o| o.engine == "onnxruntime" && o.threads == r.threads).map(|o| o.ms);
            per.push((r.ms, ort.map_or(f64::NAN, |o| o / r.ms), r));
        }
        per.sort_by(|a, b| a.0.total_cmp(&b.0));
        let ratios: Vec<f64> = per.iter().map(|p| p.1).filter(|r| r.is_finite()).collect();
        let range = (row.engine != "onnxruntime" && !ratios.is_empty()).then(|| {
            (ratios.iter().copied().fold(f64::MAX, f64::min), ratios.iter().copied().fold(f64::MIN, f64::max))
        });
        *row = PeerRow { ratio_range: range, ..per[(per.len() - 1) / 2].2.clone() };
    }
    let mut prepost: Vec<f64> = rounds.iter().map(|t| t.prepost_ms).collect();
    prepost.sort_by(f64::total_cmp);
    out.prepost_ms = prepost[(prepost.len() - 1) / 2];
    Ok(out)
}

/// The ailurus rows of one precision (its plans are built by `measure`, after
/// `bf16::set_precision`).
struct Variant<'a> {
    cfg: &'a Config,
    photos: &'a [Photo],
    size: u32,
    reduced: Option<&'a Row>,
    threads: &'a [usize],
    reps: usize,
    cut: usize,
    /// Appended to each row's setting (", bf16").
    tag: &'a str,
}

impl Variant<'_> {
    /// Unreduced and reduced rows per thread count, then throughput mode. Fidelity is against
    /// `reference` when given (the f32 unreduced masks), else against this variant's own
    /// unreduced masks at the first thread count, which are returned.
    fn measure(
        &mut self,
        reference: Option<&Reference>,
        rows: &mut Vec<PeerRow>,
        mut prepost: Option<&mut Vec<f64>>,
    ) -> Result<Option<Reference>> {
        let (cfg, photos, size, tag) = (self.cfg, self.photos, self.size, self.tag);
        let fixed: Vec<usize> = self.reduced.map(|r| vec![r.m]).unwrap_or_default();
        let mut seg = build(cfg, &[size], self.cut, true, &fixed)?;
        with_strategy(&mut seg, cfg, Strategy::Ailurus);
        let mut own: Option<Reference> = None;
        for &t in self.threads {
            ailurus::model::set_threads(t);
            log::info!("bench: peer, ailurus none{tag} at {size}px, {t} thread(s)");
            let against = reference.or(own.as_ref());
            let setting = Setting { input_size: size, m: usize::MAX };
            let (base, masks) = measure(&mut seg, photos, setting, self.reps, against, against.is_none())?;
            if let Some(p) = prepost.as_deref_mut().filter(|_| t == 1) {
                p.push(base.ms - base.infer_ms);
            }
            let (iou, mae) = if against.is_some() { (base.iou, base.mae) } else { (1.0, 0.0) };
            rows.push(PeerRow {
                engine: "ailurus".into(),
                threads: t,
                setting: format!("none{tag}"),
                ms: base.infer_ms,
                iou,
                mae,
                ratio_range: None,
            });
            if own.is_none() && against.is_none() {
                own = Some(Reference { masks });
            }
            if let Some(r) = self.reduced {
                log::info!("bench: peer, ailurus a={} M={}{tag} at {size}px, {t} thread(s)", r.cut, r.m);
                let against = reference.or(own.as_ref());
                let (row, _) =
                    measure(&mut seg, photos, Setting { input_size: size, m: r.m }, self.reps, against, false)?;
                rows.push(PeerRow {
                    engine: "ailurus".into(),
                    threads: t,
                    setting: format!("ailurus a={} M={}{tag}", r.cut, r.m),
                    ms: row.infer_ms,
                    iou: row.iou,
                    mae: row.mae,
                    ratio_range: None,
                });
            }
        }
        // Throughput mode: one frame per core, each on one thread (frame-level parallelism).
        let lanes = self.threads.iter().copied().max().unwrap_or(1);
        if lanes > 1 {
            // One segmenter (plans and weights once), one lane per frame in flight, as `run` does.
            let mut segs = vec![seg];
            for _ in 1..lanes {
                segs.push(segs[0].segmenter().lane()?);
            }
            for s in &mut segs {
                with_strategy(s, cfg, Strategy::Ailurus);
            }
            let mut settings = vec![(format!("none{tag}"), usize::MAX)];
            if let Some(r) = self.reduced {
                settings.push((format!("ailurus a={} M={}{tag}", r.cut, r.m), r.m));
            }
            for (name, m) in settings {
                log::info!("bench: peer, {lanes} frames in parallel x 1 thread, {name}");
                let (ms, latency) =
                    lanes_throughput(&mut segs, photos, Setting { input_size: size, m }, self.reps.max(1))?;
                let base = rows.iter().find(|r| r.threads == 1 && r.setting == name);
                rows.push(PeerRow {
                    engine: format!("ailurus x{lanes}"),
                    threads: lanes,
                    setting: format!("{name} (lat {latency:.0})"),
                    ms,
                    iou: base.map(|b| b.iou).unwrap_or(f64::NAN),
                    mae: base.map(|b| b.mae).unwrap_or(f64::NAN),
                    ratio_range: None,
                });
            }
        }
        Ok(own)
    }
}

/// `segs.len()` frames at once, one per segmenter, each on one thread: returns (wall ms per
/// frame, i.e. the throughput, and the mean per-frame latency in ms). Every lane runs every
/// photo `reps` times after one untimed warm-up pass.
fn lanes_throughput(segs: &mut [SegmenterLane], photos: &[Photo], setting: Setting, reps: usize) -> Result<(f64, f64)> {
    use tract_linalg::multithread::{multithread_tract_scope, Executor};
    let barrier = std::sync::Barrier::new(segs.len());
    // The model alone, as the single-lane rows and ONNX Runtime are timed: every lane
    // preprocesses the photos once, untimed.
    let io = Io::of(segs[0].segmenter().manifest());
    let inputs: Vec<Vec<f32>> = photos
        .iter()
        .map(|ph| {
            let mut input = Vec::new();
            io.preprocess(&ph.frame, setting.input_size, &mut Default::default(), &mut input);
            input
        })
        .collect();
    let run_lane = |seg: &mut SegmenterLane, timed: bool| -> Result<Vec<f64>> {
        let (mut raw, mut times) = (Vec::new(), StageTimes::default());
        let mut lat = Vec::new();
        for _ in 0..if timed { reps } else { 1 } {
            for input in &inputs {
                let t0 = std::time::Instant::now();
                seg.run_parts(input, setting, &mut times, &mut raw)?;
                lat.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(lat)
    };
    let (wall, lat) = std::thread::scope(|sc| -> Result<(f64, Vec<f64>)> {
        let handles: Vec<_> = segs
            .iter_mut()
            .map(|seg| {
                let (barrier, run_lane) = (&barrier, &run_lane);
                sc.spawn(move || {
                    multithread_tract_scope(Executor::SingleThread, || -> Result<(std::time::Instant, Vec<f64>)> {
                        run_lane(seg, false)?;
                        barrier.wait();
                        let t0 = std::time::Instant::now();
                        Ok((t0, run_lane(seg, true)?))
                    })
                })
            })
            .collect();
        let mut start = None::<std::time::Instant>;
        let mut lat = Vec::new();
        for h in handles {
            let (t0, l) = h.join().map_err(|_| anyhow::anyhow!("a bench lane panicked"))??;
            start = Some(start.map_or(t0, |s| s.min(t0)));
            lat.extend(l);
        }
        let wall = start.map(|s| s.elapsed().as_secs_f64() * 1e3).unwrap_or(0.0);
        Ok((wall, lat))
    })?;
    let frames = lat.len().max(1) as f64;
    Ok((wall / frames, lat.iter().sum::<f64>() / frames))
}

/// The peer table: ms/frame, FPS, and throughput against ONNX Runtime at the same thread count.
pub fn format(table: &PeerTable, size: u32, n_photos: usize) -> String {
    let (rows, ort_version) = (&table.rows, &table.ort_version);
    let runs = match table.rounds {
        0 | 1 => "one run".to_string(),
        r => format!("{r} rounds (each row the median round's; range: its ratio to ONNX Runtime in each round)"),
    };
    let mut s = format!(
        "peer: ailurus vs ONNX Runtime {ort_version} (full model), {size}px, the same {n_photos} photos, {runs}\n"
    );
    s += &format!("# {}\n", ailurus::model::isa::machine_line());
    let p: Vec<String> = table.precisions.iter().map(|(p, k)| format!("{p} (linear layers on {k})")).collect();
    s += &format!("# precisions: {}; IoU/MAE against ailurus f32 unreduced\n", p.join(", "));
    s += &format!(
        "times: the model alone for both (input tensor -> raw output); ailurus pre/post adds {:.1} ms/frame\n",
        table.prepost_ms
    );
    let ranged = table.rounds > 1;
    s += &format!(
        "{:<12} {:>3} {:<32} {:>9} {:>6} {:>12} {:>7} {:>7}{}\n",
        "engine",
        "thr",
        "setting",
        "ms/frame",
        "FPS",
        "vs ORT (thr)",
        "IoU",
        "MAE",
        if ranged { format!(" {:>11}", "range") } else { String::new() }
    );
    let mut threads: Vec<usize> = rows.iter().map(|r| r.threads).collect();
    threads.sort_unstable();
    threads.dedup();
    for t in threads {
        let ort = rows.iter().find(|r| r.engine == "onnxruntime" && r.threads == t).map(|r| r.ms);
        for r in rows.iter().filter(|r| r.threads == t) {
            let ratio = ort.map(|o| format!("{:.2}x", o / r.ms)).unwrap_or_else(|| "-".into());
            let fid = |v: f64, p: usize| if v.is_nan() { "-".to_string() } else { format!("{v:.p$}") };
            let range = match (ranged, r.ratio_range) {
                (false, _) => String::new(),
                (true, Some((lo, hi))) => format!(" {:>11}", format!("{lo:.2}-{hi:.2}x")),
                (true, None) => format!(" {:>11}", "-"),
            };
            s += &format!(
                "{:<12} {:>3} {:<32} {:>9.1} {:>6.2} {:>12} {:>7} {:>7}{range}\n",
                r.engine,
                r.threads,
                r.setting,
                r.ms,
                1e3 / r.ms,
                ratio,
                fid(r.iou, 3),
                fid(r.mae, 4)
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(engine: &str, threads: usize, setting: &str, ms: f64) -> PeerRow {
        PeerRow { engine: engine.into(), threads, setting: setting.into(), ms, iou: 1.0, mae: 0.0, ratio_range: None }
    }

    fn table(ours: f64, lat: f64, ort: f64) -> PeerTable {
        PeerTable {
            rows: vec![
                row("ailurus x2", 2, &format!("none (lat {lat})"), ours),
                row("onnxruntime", 2, "full model", ort),
            ],
            ort_version: "1.32.0".into(),
            prepost_ms: lat / 100.0,
            precisions: vec![],
            rounds: 1,
        }
    }

    #[test]
    fn rounds_give_each_row_its_median_round_and_the_ratio_range() {
        // Ratios per round: 500/400 = 1.25, 450/300 = 1.5, 600/500 = 1.2.
        let t = median_of(vec![table(400.0, 800.0, 500.0), table(300.0, 600.0, 450.0), table(500.0, 1000.0, 600.0)])
            .unwrap();
        assert_eq!(t.rounds, 3);
        // The median round of each row, whole (its latency in the setting comes with it).
        assert_eq!((t.rows[0].ms, t.rows[0].setting.as_str()), (400.0, "none (lat 800)"));
        assert_eq!(t.rows[1].ms, 500.0);
        let (lo, hi) = t.rows[0].ratio_range.unwrap();
        assert!((lo - 1.2).abs() < 1e-12 && (hi - 1.5).abs() < 1e-12, "{lo} {hi}");
        assert_eq!(t.rows[1].ratio_range, None);
        assert_eq!(t.prepost_ms, 8.0);
        let text = format(&t, 448, 8);
        assert!(text.contains("3 rounds") && text.contains("1.20-1.50x"), "{text}");
        // Even counts take the lower median; one round is returned as it is.
        let t = median_of(vec![table(400.0, 1.0, 500.0), table(300.0, 1.0, 450.0)]).unwrap();
        assert_eq!(t.rows[0].ms, 300.0);
        let one = median_of(vec![table(400.0, 1.0, 500.0)]).unwrap();
        assert_eq!((one.rounds, one.rows[0].ratio_range), (1, None));
        assert!(format(&one, 448, 8).contains("one run"));
        assert!(median_of(vec![]).is_err());
    }

    #[test]
    fn rounds_with_different_rows_are_refused() {
        let mut b = table(300.0, 1.0, 450.0);
        b.rows.swap(0, 1);
        assert!(median_of(vec![table(400.0, 1.0, 500.0), b]).is_err());
    }
}
