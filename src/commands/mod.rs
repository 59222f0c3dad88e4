//! The binary's verbs, one module each, over the library. Shared here: the config arguments,
//! the command-line overrides, the progress bar, and the "some inputs were skipped" outcome.

pub mod bench;
mod bench_table;
pub mod calibrate;
pub mod eval;
pub mod misc;
mod peer;
mod plot;
pub mod profile;
pub mod run;
pub mod segment;
mod video;

use std::path::PathBuf;

use ailurus::config::{Config, ConfigError};
use ailurus::reduce::Strategy;

#[derive(clap::Args, Clone)]
pub struct ConfigArg {
    /// Config file (TOML); without it the embedded default (configs/default.toml) is used.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    pub fn load(&self) -> Result<Config, ConfigError> {
        match &self.config {
            Some(p) => Config::load(p),
            None => Config::embedded_default(),
        }
    }
}

#[derive(clap::Args, Clone)]
pub struct Overrides {
    /// Override [model] input_size.
    #[arg(long)]
    size: Option<u32>,
    /// Override [reduce] strategy (ailurus, tome, grid, none).
    #[arg(long, value_parser = parse_strategy)]
    strategy: Option<Strategy>,
    /// Override [reduce] m.
    #[arg(long)]
    m: Option<usize>,
    /// Override [reduce] cut.
    #[arg(long)]
    cut: Option<usize>,
}

/// A `[reduce] strategy` name on the command line.
pub fn parse_strategy(s: &str) -> Result<Strategy, String> {
    use ailurus::choice::Named;
    Strategy::from_name(s).ok_or_else(|| format!("{s:?} is not {}", Strategy::expected()))
}

/// The config of `arg` with the overrides applied, validated again (every problem at once).
pub fn config_with(arg: &ConfigArg, ov: &Overrides) -> Result<Config, ConfigError> {
    let mut cfg = arg.load()?;
    if let Some(s) = ov.size {
        cfg.model.input_size = s;
    }
    if let Some(s) = ov.strategy {
        cfg.reduce.strategy = s.into();
    }
    if let Some(m) = ov.m {
        cfg.reduce.m = m;
    }
    if let Some(a) = ov.cut {
        cfg.reduce.cut = a;
    }
    let p = cfg.validate();
    if p.0.is_empty() {
        Ok(cfg)
    } else {
        Err(ConfigError::Invalid { path: format!("{} + command-line overrides", cfg.origin), problems: p.0 })
    }
}

/// A command finished what it could but skipped inputs because of errors (each was logged):
/// exit 2, as ripgrep does.
#[derive(Debug, thiserror::Error)]
#[error("{skipped} of {total} input(s) skipped because of errors (see above)")]
pub struct Skipped {
    pub skipped: usize,
    pub total: usize,
}

/// Ok, or `Skipped` when any input was skipped.
pub fn skipped(skipped: usize, total: usize) -> anyhow::Result<()> {
    if skipped == 0 {
        Ok(())
    } else {
        Err(Skipped { skipped, total }.into())
    }
}

/// A progress bar on stderr (drawn only when stderr is a terminal: indicatif hides it
/// otherwise).
pub fn progress(total: usize, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total as u64);
    let style = indicatif::ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("#-");
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

/// A comma-separated list flag that may also be "none" (empty).
#[derive(Debug, Clone)]
pub struct List<T>(pub Vec<T>);

pub fn list<T: std::str::FromStr>(s: &str) -> Result<List<T>, String>
where
    T::Err: std::fmt::Display,
{
    if s.trim().is_empty() || s.trim() == "none" {
        return Ok(List(Vec::new()));
    }
    s.split(',').map(|v| v.trim().parse::<T>().map_err(|e| format!("{v:?}: {e}"))).collect::<Result<_, _>>().map(List)
}

/// A `[model] precision` name on the command line.
pub fn parse_precision(s: &str) -> Result<ailurus::model::bf16::Precision, String> {
    use ailurus::choice::Named;
    use ailurus::model::bf16::Precision;
    Precision::from_name(s).ok_or_else(|| format!("{s:?} is not {}", Precision::expected()))
}
