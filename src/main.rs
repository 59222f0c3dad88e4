//! The `ailurus` command line: parse arguments, then one call per verb into `commands/`.

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ailurus::app::StartError;
use ailurus::config::ConfigError;
use ailurus::model::ModelError;
use ailurus::source::SourceError;

#[derive(Parser)]
#[command(name = "ailurus", version, about = "ViT segmentation at the edge, sped up by AiluRus token clustering")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Stream frames from the configured source through the model to the sinks.
    Run(commands::run::Args),
    /// List the V4L2 cameras with their formats, sizes and frame rates.
    Devices,
    /// Save N frames from the configured source to a stream file (raw as delivered from a
    /// camera), to replay later with [source] kind = "stream".
    Record(commands::misc::RecordArgs),
    /// Segment image files: mask and overlay PNGs into --out; IoU against ground truth if found.
    Segment(commands::segment::Args),
    /// Evaluate a folder of images (VOC layout or plain, optional ground truth): IoU vs ground
    /// truth, agreement with the unreduced model, FPS.
    Eval(commands::eval::Args),
    /// Sweep strategies, cluster counts, cut points and input sizes on the same real photos:
    /// speed against the unreduced model, fidelity against it and against ground truth.
    Bench(Box<commands::bench::Args>),
    /// Time tract's stem, middle and head per op kind (where does the time go?).
    Profile(commands::profile::Args),
    /// Measure the cost and fidelity of every [budget] setting on sample images and write the
    /// calibration table the budget controller uses (once per device).
    Calibrate(commands::calibrate::Args),
    /// Validate a config file (every problem is listed); exit 2 when invalid.
    CheckConfig { file: PathBuf },
    /// Print the embedded default config.
    DefaultConfig,
    /// Propose a manifest for an ONNX ViT (block tensors, final norm, patch, width, prefix,
    /// output kind); warnings go to stderr and into the TOML as comments. Exit 2 on a bad file.
    Inspect { model: PathBuf },
}

fn dispatch(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Run(a) => commands::run::command(a),
        Cmd::Devices => commands::misc::devices(),
        Cmd::Record(a) => commands::misc::record(a),
        Cmd::Segment(a) => commands::segment::command(a),
        Cmd::Eval(a) => commands::eval::command(a),
        Cmd::Bench(a) => commands::bench::command(*a),
        Cmd::Profile(a) => commands::profile::command(a),
        Cmd::Calibrate(a) => commands::calibrate::command(a),
        Cmd::CheckConfig { file } => commands::misc::check_config(file),
        Cmd::DefaultConfig => commands::misc::default_config(),
        Cmd::Inspect { model } => commands::misc::inspect(model),
    }
}

/// Start-up errors (bad config, bad model, a device that cannot be opened) and commands that
/// skipped inputs exit 2; anything else 1.
fn exit_code(e: &anyhow::Error) -> u8 {
    let startup = e.downcast_ref::<ConfigError>().is_some()
        || e.downcast_ref::<ModelError>().is_some()
        || e.downcast_ref::<commands::Skipped>().is_some()
        || e.downcast_ref::<StartError>().is_some_and(StartError::is_startup)
        || e.downcast_ref::<SourceError>().is_some_and(|s| !s.is_frame_fault());
    if startup {
        2
    } else {
        1
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match dispatch(Cli::parse().cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ailurus: error: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}
