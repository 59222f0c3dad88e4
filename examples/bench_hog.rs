//! The latency-budget controller against a real model on the CPU, with a one-core busy "hog"
//! thread started mid-run. Records input size, M and latency per frame; writes a CSV and a
//! plot PNG, and prints a table per phase.
//!
//! ```text
//! cargo run --release --example bench_hog -- --sizes 448,392,336,280 --target-ms 2000 \
//!     --before-s 60 --after-s 120 --out out/bench-hog
//! cargo run --release --example bench_hog -- --compare-overlap 20   # overlap on vs off
//! ```
//! Not a test: timings depend on the machine and whatever else runs on it.

#[path = "bench_hog/plot.rs"]
mod plot;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ailurus::budget::Controller;
use ailurus::config::Config;
use ailurus::sink::{Output, Sink, SinkError};
use anyhow::Result;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Config file (default: the embedded default).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Input-size ladder.
    #[arg(long, value_delimiter = ',', default_value = "448,392,336,280")]
    sizes: Vec<u32>,
    #[arg(long, default_value_t = 2000.0)]
    target_ms: f64,
    /// Seconds before the hog starts, and with it.
    #[arg(long, default_value_t = 60.0)]
    before_s: f64,
    #[arg(long, default_value_t = 120.0)]
    after_s: f64,
    /// Busy threads to start (1 = one core of this 2-core machine).
    #[arg(long, default_value_t = 1)]
    hogs: usize,
    #[arg(long, default_value = "out/bench-hog")]
    out: PathBuf,
    /// Instead of the hog run: N frames at the config's fixed setting with overlap on, then off.
    #[arg(long)]
    compare_overlap: Option<u64>,
}

/// One published frame.
#[derive(Debug, Clone, Copy)]
struct Row {
    t_s: f64,
    seq: u64,
    size: u32,
    m: usize,
    latency_ms: f64,
    load: f64,
}

/// A sink that records every output (and the controller's load factor at that moment).
struct Recorder {
    t0: Instant,
    rows: Arc<Mutex<Vec<Row>>>,
    ctl: Arc<OnceLock<Arc<Mutex<Controller>>>>,
}

impl Sink for Recorder {
    fn name(&self) -> &'static str {
        "recorder"
    }

    fn publish(&mut self, out: &Output) -> Result<(), SinkError> {
        let load = self.ctl.get().map(|c| c.lock().unwrap().status().load).unwrap_or(f64::NAN);
        self.rows.lock().unwrap().push(Row {
            t_s: (out.frame.captured + out.latency).duration_since(self.t0).as_secs_f64(),
            seq: out.frame.seq,
            size: out.input_size,
            m: out.m,
            latency_ms: out.latency.as_secs_f64() * 1e3,
            load,
        });
        Ok(())
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1]
}

/// Run the pipeline for `secs` (or `frames`), with `hog_at` seconds in starting the hogs.
fn run(cfg: &Config, secs: f64, hog_at: Option<f64>, hogs: usize) -> Result<(Vec<Row>, f64)> {
    let t0 = Instant::now();
    let rows = Arc::new(Mutex::new(Vec::new()));
    let ctl = Arc::new(OnceLock::new());
    let rec = Recorder { t0, rows: rows.clone(), ctl: ctl.clone() };
    let stop = Arc::new(AtomicBool::new(false));
    let (p, _) = ailurus::app::start(cfg, stop.clone(), vec![Box::new(rec)], &Default::default())?;
    let _ = ctl.set(p.controller());
    let ready = t0.elapsed().as_secs_f64();
    let hog_stop = Arc::new(AtomicBool::new(false));
    let mut hog_threads = Vec::new();
    let mut hog_t = f64::NAN;
    while t0.elapsed().as_secs_f64() < ready + secs && !p.is_finished() {
        if let Some(at) = hog_at {
            if hog_threads.is_empty() && t0.elapsed().as_secs_f64() >= ready + at {
                hog_t = t0.elapsed().as_secs_f64();
                eprintln!("[{hog_t:.1}s] starting {hogs} hog thread(s); load average {}", loadavg());
                for _ in 0..hogs {
                    let f = hog_stop.clone();
                    hog_threads.push(std::thread::spawn(move || {
                        let mut x = 1u64;
                        while !f.load(Ordering::Relaxed) {
                            for _ in 0..10_000 {
                                x = std::hint::black_box(
                                    x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407),
                                );
                            }
                        }
                    }));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    p.stop();
    p.wait()?;
    hog_stop.store(true, Ordering::Relaxed);
    for h in hog_threads {
        let _ = h.join();
    }
    let rows = rows.lock().unwrap().clone();
    Ok((rows, hog_t))
}

struct Phase<'a> {
    name: &'a str,
    rows: Vec<Row>,
    secs: f64,
}

fn table(phases: &[Phase], target: f64) {
    println!(
        "| phase | frames | FPS | latency p50 ms | p95 ms | max ms | misses | input sizes (frames) | M (median) |\n|---|---|---|---|---|---|---|---|---|"
    );
    for ph in phases {
        let lat: Vec<f64> = ph.rows.iter().map(|r| r.latency_ms).collect();
        let misses = lat.iter().filter(|&&l| l > target).count();
        let mut sizes: Vec<(u32, usize)> = Vec::new();
        for r in &ph.rows {
            match sizes.iter_mut().find(|(s, _)| *s == r.size) {
                Some(e) => e.1 += 1,
                None => sizes.push((r.size, 1)),
            }
        }
        sizes.sort_by_key(|s| std::cmp::Reverse(s.0));
        let ms: Vec<f64> = ph.rows.iter().map(|r| r.m as f64).collect();
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.0} | {:.0} | {} ({:.0}%) | {} | {:.0} |",
            ph.name,
            ph.rows.len(),
            ph.rows.len() as f64 / ph.secs.max(1e-9),
            quantile(&lat, 0.5),
            quantile(&lat, 0.95),
            quantile(&lat, 1.0),
            misses,
            100.0 * misses as f64 / ph.rows.len().max(1) as f64,
            sizes.iter().map(|(s, n)| format!("{s}:{n}")).collect::<Vec<_>>().join(" "),
            quantile(&ms, 0.5),
        );
    }
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let a = Args::parse();
    let mut cfg = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::embedded_default()?,
    };
    cfg.sink.files.enabled = false;
    cfg.source.kind = "folder".into();
    cfg.source.fps = 0.0;
    cfg.source.looping = true;
    cfg.pipeline.log_every_s = 15.0;
    std::fs::create_dir_all(&a.out)?;
    if let Some(n) = a.compare_overlap {
        cfg.budget.enabled = false;
        println!("overlap comparison: {}px fixed, {n} frames each, load average {}", cfg.model.input_size, loadavg());
        println!("| overlap | frames | FPS | e2e p50 ms | e2e p95 ms |\n|---|---|---|---|---|");
        for overlap in [true, false, true, false] {
            cfg.pipeline.overlap = overlap;
            cfg.pipeline.max_frames = n;
            let t = Instant::now();
            let (rows, _) = run(&cfg, 1e9, None, 0)?;
            let secs = t.elapsed().as_secs_f64();
            // FPS over the frames after the first (plan warm-up).
            let span = rows.last().map(|r| r.t_s).unwrap_or(0.0) - rows.first().map(|r| r.t_s).unwrap_or(0.0);
            let lat: Vec<f64> = rows.iter().skip(1).map(|r| r.latency_ms).collect();
            println!(
                "| {overlap} | {} | {:.3} | {:.0} | {:.0} |",
                rows.len(),
                (rows.len().saturating_sub(1)) as f64 / span.max(1e-9),
                quantile(&lat, 0.5),
                quantile(&lat, 0.95)
            );
            let _ = secs;
        }
        println!("load average after: {}", loadavg());
        return Ok(());
    }
    cfg.budget.enabled = true;
    cfg.budget.sizes = a.sizes.clone();
    cfg.budget.target_ms = a.target_ms;
    let problems = cfg.validate();
    anyhow::ensure!(problems.0.is_empty(), "config: {:?}", problems.0);
    println!(
        "hog bench: sizes {:?}, target {:.0} ms p{}, {:.0}s then {} hog(s) for {:.0}s; load average {}",
        a.sizes,
        a.target_ms,
        cfg.budget.percentile,
        a.before_s,
        a.hogs,
        a.after_s,
        loadavg()
    );
    let (rows, hog_t) = run(&cfg, a.before_s + a.after_s, Some(a.before_s), a.hogs)?;
    println!("load average at the end: {}", loadavg());
    let csv = a.out.join("bench_hog.csv");
    let mut text = String::from("t_s,seq,input_size,m,latency_ms,miss,hog,load_factor\n");
    for r in &rows {
        text += &format!(
            "{:.3},{},{},{},{:.1},{},{},{:.3}\n",
            r.t_s,
            r.seq,
            r.size,
            r.m,
            r.latency_ms,
            (r.latency_ms > a.target_ms) as u8,
            (r.t_s >= hog_t) as u8,
            r.load
        );
    }
    std::fs::write(&csv, text)?;
    let png = a.out.join("bench_hog.png");
    let pts: Vec<plot::Point> =
        rows.iter().map(|r| plot::Point { t: r.t_s, latency_ms: r.latency_ms, size: r.size, m: r.m }).collect();
    plot::draw(&pts, a.target_ms, hog_t, &a.sizes).save(&png)?;
    let t_first = rows.first().map(|r| r.t_s).unwrap_or(0.0);
    let t_end = rows.last().map(|r| r.t_s).unwrap_or(0.0);
    let settle = 20.0;
    let pick = |lo: f64, hi: f64| rows.iter().copied().filter(|r| r.t_s >= lo && r.t_s < hi).collect::<Vec<_>>();
    let phases = [
        Phase { name: "before hog", rows: pick(t_first, hog_t), secs: hog_t - t_first },
        Phase { name: "hog, first 20 s", rows: pick(hog_t, hog_t + settle), secs: settle },
        Phase { name: "hog, settled", rows: pick(hog_t + settle, f64::INFINITY), secs: t_end - hog_t - settle },
    ];
    table(&phases, a.target_ms);
    println!("wrote {} and {}", csv.display(), png.display());
    Ok(())
}
