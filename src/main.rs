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
#[command(
    name = "ailurus",
    version,
    about = "ViT segmentation at the edge, sped up by AiluRus token clustering"
)]
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
        Err(ConfigError::Invalid {
            path: format!("{} + command-line overrides", cfg.origin),
            problems: p.0,
        })
    }
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Run { config, frames } => {
            let mut cfg = load_config(&config)?;
            if let Some(n) = frames {
                cfg.pipeline.max_frames = n;
            }
            let stop = Arc::new(AtomicBool::new(false));
            for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
                signal_hook::flag::register(sig, stop.clone())?;
            }
            ailurus::app::run(&cfg, stop)
        }
        Cmd::Segment {
            config,
            ov,
            images,
            out,
        } => {
            let mut cfg = load_config(&config)?;
            apply(&mut cfg, &ov)?;
            ailurus::app::segment(&cfg, &images, &out)
        }
        Cmd::Eval { config, ov, dir } => {
            let mut cfg = load_config(&config)?;
            apply(&mut cfg, &ov)?;
            ailurus::app::eval(&cfg, &dir)
        }
        Cmd::Calibrate {
            config,
            images,
            out,
            frames,
            points,
        } => {
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
                || e.downcast_ref::<ModelError>().is_some();
            eprintln!("ailurus: error: {e}");
            ExitCode::from(if startup { 2 } else { 1 })
        }
    }
}
