//! The `ailurus` command line: parse arguments, load the config, call into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;
use clap::{Parser, Subcommand};

use ailurus::config::{Config, ConfigError};
use ailurus::model::ModelError;

#[derive(Parser)]
#[command(name = "ailurus", version, about = "ViT segmentation at the edge, sped up by AiluRus token clustering")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// Config file (TOML); without it the embedded default (configs/default.toml) is used.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(clap::Args, Clone)]
struct Overrides {
    /// Override [model] input_size.
    #[arg(long)]
    size: Option<u32>,
    /// Override [reduce] strategy (ailurus, tome, grid, none).
    #[arg(long)]
    strategy: Option<String>,
    /// Override [reduce] m.
    #[arg(long)]
    m: Option<usize>,
    /// Override [reduce] cut.
    #[arg(long)]
    cut: Option<usize>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Stream frames from the configured source through the model to the sinks.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Stop after this many frames (overrides [pipeline] max_frames).
        #[arg(long)]
        frames: Option<u64>,
        /// Play a recorded stream at its recorded rate (sets [source] realtime).
        #[arg(long)]
        realtime: bool,
    },
    /// List the V4L2 cameras with their formats, sizes and frame rates.
    Devices,
    /// Save N frames from the configured source to a stream file (raw as delivered from a
    /// camera), to replay later with [source] kind = "stream".
    Record {
        #[command(flatten)]
        config: ConfigArg,
        /// Number of frames to save.
        #[arg(long, default_value_t = 100)]
        frames: u64,
        /// Output file.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Segment image files: mask and overlay PNGs into --out; IoU against ground truth if found.
    Segment {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        ov: Overrides,
        #[arg(required = true)]
        images: Vec<PathBuf>,
        #[arg(long, default_value = "out/segment")]
        out: PathBuf,
    },
    /// Evaluate a folder of images (VOC layout or plain, optional ground truth): IoU vs ground
    /// truth, agreement with the unreduced model, FPS.
    Eval {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        ov: Overrides,
        dir: PathBuf,
    },
    /// Sweep strategies, cluster counts, cut points and input sizes on the same real photos:
    /// speed against the unreduced model, fidelity against it and against ground truth.
    Bench(BenchArgs),
    /// Time tract's stem, middle and head per op kind (where does the time go?).
    Profile {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        ov: Overrides,
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Also list the slowest nodes with their GFLOP/s and tract's kernel choice.
        #[arg(long)]
        nodes: bool,
    },
    /// Measure the cost and fidelity of every [budget] setting on sample images and write the
    /// calibration table the budget controller uses (once per device).
    Calibrate {
        #[command(flatten)]
        config: ConfigArg,
        /// Folder of sample images (default: [source] path).
        #[arg(long)]
        images: Option<PathBuf>,
        /// Where to write the table (default: [budget] calibration).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Sample images to use.
        #[arg(long, default_value_t = 3)]
        frames: usize,
        /// Values of M measured per input size (the controller interpolates between them).
        #[arg(long, default_value_t = 4)]
        points: usize,
    },
    /// Validate a config file (every problem is listed); exit 2 when invalid.
    CheckConfig { file: PathBuf },
    /// Print the embedded default config.
    DefaultConfig,
    /// Propose a manifest for an ONNX ViT (block tensors, final norm, patch, width, prefix,
    /// output kind); warnings go to stderr and into the TOML as comments. Exit 2 on a bad file.
    Inspect { model: PathBuf },
}

#[derive(clap::Args)]
struct BenchArgs {
    #[command(flatten)]
    config: ConfigArg,
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
    #[arg(long, value_delimiter = ',', default_value = "ailurus,tome,grid")]
    strategies: Vec<String>,
    /// Cluster counts at the reference size.
    #[arg(long, value_delimiter = ',', default_value = "128,256,384,512,768")]
    m: Vec<usize>,
    /// Cut points for the full sweep.
    #[arg(long, value_delimiter = ',', default_value = "3")]
    cuts: Vec<usize>,
    /// Extra cut points, measured for ailurus at M ~ N/2 ("none" for none).
    #[arg(long, default_value = "1,2,4", value_parser = list::<usize>)]
    extra_cuts: List<usize>,
    /// Smaller input sizes combined with reduction (M = N/2 and 3N/4 there; "none" for none).
    #[arg(long, default_value = "392,336", value_parser = list::<u32>)]
    combo: List<u32>,
    /// Input sizes for the lowres baseline ("none" for none).
    #[arg(long, default_value = "392,336,280,224", value_parser = list::<u32>)]
    lowres: List<u32>,
    /// Also measure every reducer with proportional attention off.
    #[arg(long)]
    bias_off: bool,
    /// Also run a peer on the same photos and print a peer table: "ort" (ONNX Runtime's full
    /// model through tools/ort_bench.py) against ailurus unreduced and at its fastest setting
    /// with mask IoU >= 0.97 against unreduced.
    #[arg(long, value_parser = ["ort"])]
    peer: Option<String>,
    /// Thread counts for the peer table (both engines).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    peer_threads: Vec<usize>,
    /// Timed repetitions per photo after one warm-up run.
    #[arg(long, default_value_t = 1)]
    reps: usize,
    #[arg(long, default_value = "out/bench.csv")]
    csv: PathBuf,
    /// A fine-tuned model manifest (models/vit_s_focus_ft.toml): adds its `ailurus` rows
    /// (`ailurus-ft`), scored against the stock model's reference on the same photos.
    #[arg(long)]
    finetuned: Option<PathBuf>,
}

fn load_config(arg: &ConfigArg) -> Result<Config, ConfigError> {
    match &arg.config {
        Some(p) => Config::load(p),
        None => Config::embedded_default(),
    }
}

fn apply(cfg: &mut Config, ov: &Overrides) -> Result<(), ConfigError> {
    if let Some(s) = ov.size {
        cfg.model.input_size = s;
    }
    if let Some(s) = &ov.strategy {
        cfg.reduce.strategy = s.clone();
    }
    if let Some(m) = ov.m {
        cfg.reduce.m = m;
    }
    if let Some(a) = ov.cut {
        cfg.reduce.cut = a;
    }
    let p = cfg.validate();
    if p.0.is_empty() {
        Ok(())
    } else {
        Err(ConfigError::Invalid { path: format!("{} + command-line overrides", cfg.origin), problems: p.0 })
    }
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Run { config, frames, realtime } => {
            let mut cfg = load_config(&config)?;
            if let Some(n) = frames {
                cfg.pipeline.max_frames = n;
            }
            cfg.source.realtime |= realtime;
            ailurus::app::run(&cfg, config.config.clone())
        }
        Cmd::Segment { config, ov, images, out } => {
            let mut cfg = load_config(&config)?;
            apply(&mut cfg, &ov)?;
            ailurus::app::segment(&cfg, &images, &out)
        }
        Cmd::Eval { config, ov, dir } => {
            let mut cfg = load_config(&config)?;
            apply(&mut cfg, &ov)?;
            ailurus::app::eval(&cfg, &dir)
        }
        Cmd::Bench(b) => {
            let cfg = load_config(&b.config)?;
            let mut photos = Vec::new();
            let lists: Vec<Vec<PathBuf>> = b
                .photos
                .iter()
                .map(|d| {
                    let p = cfg.resolve(d);
                    if p.is_file() {
                        Ok(vec![p])
                    } else {
                        ailurus::app::eval_images(&p)
                    }
                })
                .collect::<Result<_, _>>()?;
            // Round-robin over the folders so a small budget still sees every kind of photo.
            for i in 0.. {
                let before = photos.len();
                for l in &lists {
                    if let Some(p) = l.get(i) {
                        if photos.len() < b.max_photos {
                            photos.push(p.clone());
                        }
                    }
                }
                if photos.len() == before || photos.len() >= b.max_photos {
                    break;
                }
            }
            let opts = ailurus::bench::BenchOptions {
                size: b.size,
                photos,
                strategies: b.strategies,
                m_list: b.m,
                cuts: b.cuts,
                extra_cuts: b.extra_cuts.0,
                combo_sizes: b.combo.0,
                lowres: b.lowres.0,
                bias_off: b.bias_off,
                reps: b.reps,
                csv: Some(b.csv.clone()),
                plot: None,
                peer: b.peer.clone(),
                peer_threads: b.peer_threads.clone(),
                finetuned: b.finetuned.map(|f| cfg.resolve(&f)),
            };
            let rows = ailurus::bench::run(&cfg, &opts)?;
            print!("{}", ailurus::bench::format_table(&rows));
            ailurus::bench::write_csv(&rows, &b.csv)?;
            let plot = b.csv.with_extension("png");
            ailurus::bench::write_plot(&rows, &plot)?;
            println!("table written to {}, plot to {}", b.csv.display(), plot.display());
            if opts.peer.is_some() {
                let peer = ailurus::bench::run_peer(&cfg, &opts, &rows)?;
                print!("{}", ailurus::bench::peer::format(&peer, opts.size, opts.photos.len()));
            }
            Ok(())
        }
        Cmd::Profile { config, ov, reps, nodes } => {
            let mut cfg = load_config(&config)?;
            apply(&mut cfg, &ov)?;
            ailurus::model::configure_cpu(&cfg.model);
            let man = ailurus::model::Manifest::load(&cfg.resolve(&cfg.model.manifest))?;
            let parts = ailurus::profile::run(&man, cfg.model.input_size, cfg.reduce.cut, cfg.reduce.m, reps)?;
            print!("{}", ailurus::profile::format(&parts));
            if nodes {
                print!("{}", ailurus::profile::format_nodes(&parts));
            }
            Ok(())
        }
        Cmd::Devices => {
            print!("{}", ailurus::source::list_devices_text());
            Ok(())
        }
        Cmd::Record { config, frames, out } => {
            let cfg = load_config(&config)?;
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, stop.clone())?;
            }
            let summary = ailurus::source::record::record(&cfg.source, &cfg.base_dir, frames, &out, stop)?;
            println!("{summary}");
            Ok(())
        }
        Cmd::Calibrate { config, images, out, frames, points } => {
            let cfg = load_config(&config)?;
            let images = images.unwrap_or_else(|| cfg.resolve(&cfg.source.path));
            ailurus::calibrate::command(&cfg, &images, out, frames, points)
        }
        Cmd::CheckConfig { file } => {
            Config::load(&file)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Cmd::DefaultConfig => {
            print!("{}", ailurus::config::DEFAULT_TOML);
            Ok(())
        }
        Cmd::Inspect { model } => {
            let found = ailurus::model::inspect::inspect(&model)?;
            for w in &found.warnings {
                eprintln!("ailurus: warning: {w}");
            }
            print!("{}", found.to_toml(&model));
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Start-up errors (bad config, bad model) exit 2; anything else 1.
            let startup = e.downcast_ref::<ConfigError>().is_some()
                || e.downcast_ref::<ModelError>().is_some()
                || e.downcast_ref::<ailurus::source::SourceError>().is_some_and(|s| !s.is_frame_fault());
            eprintln!("ailurus: error: {e}");
            ExitCode::from(if startup { 2 } else { 1 })
        }
    }
}

/// A comma-separated list flag that may also be "none" (empty).
#[derive(Debug, Clone)]
struct List<T>(Vec<T>);

fn list<T: std::str::FromStr>(s: &str) -> Result<List<T>, String>
where
    T::Err: std::fmt::Display,
{
    if s.trim().is_empty() || s.trim() == "none" {
        return Ok(List(Vec::new()));
    }
    s.split(',').map(|v| v.trim().parse::<T>().map_err(|e| format!("{v:?}: {e}"))).collect::<Result<_, _>>().map(List)
}
