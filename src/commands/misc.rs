//! The small verbs: `devices`, `record`, `check-config`, `default-config`, `inspect`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;

use super::ConfigArg;
use ailurus::config::{Config, DEFAULT_TOML};

#[derive(clap::Args)]
pub struct RecordArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Number of frames to save.
    #[arg(long, default_value_t = 100)]
    frames: u64,
    /// Output file.
    #[arg(long, short)]
    out: PathBuf,
}

/// `ailurus devices`: the V4L2 cameras with their formats, sizes and frame rates.
pub fn devices() -> Result<()> {
    print!("{}", ailurus::source::list_devices_text());
    Ok(())
}

/// `ailurus record`: save frames from the configured source to a stream file.
pub fn record(a: RecordArgs) -> Result<()> {
    let cfg = a.config.load()?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let summary = ailurus::source::record::record(&cfg.source, &cfg.base_dir, a.frames, &a.out, stop)?;
    println!("{summary}");
    Ok(())
}

/// `ailurus check-config FILE`: every problem listed; exit 2 when invalid.
pub fn check_config(file: PathBuf) -> Result<()> {
    Config::load(&file)?;
    println!("{}: ok", file.display());
    Ok(())
}

/// `ailurus default-config`: the embedded default.
pub fn default_config() -> Result<()> {
    print!("{DEFAULT_TOML}");
    Ok(())
}

/// `ailurus inspect MODEL.onnx`: a proposed manifest; warnings to stderr and into the TOML.
pub fn inspect(model: PathBuf) -> Result<()> {
    let found = ailurus::model::inspect::inspect(&model)?;
    for w in &found.warnings {
        eprintln!("ailurus: warning: {w}");
    }
    print!("{}", found.to_toml(&model));
    Ok(())
}
