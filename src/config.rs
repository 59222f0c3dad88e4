//! The TOML configuration: schema, the embedded default, and two-phase compilation.
//!
//! Phase 1 parses the TOML into `Config` (serde, `deny_unknown_fields` everywhere, so a typo is an
//! error naming the key). Phase 2, `Config::validate`, checks values and returns EVERY problem at
//! once, each naming the file and the key (`[sink.http] port: 80000 is not a port`). The stage
//! config structs live next to their stage; this module only composes them.

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::problems::{Problem, Problems};

/// The documented default config, compiled into the binary.
pub const DEFAULT_TOML: &str = include_str!("../configs/default.toml");

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub model: crate::model::ModelConfig,
    #[serde(default)]
    pub reduce: crate::reduce::ReduceConfig,
    #[serde(default)]
    pub reuse: crate::reuse::ReuseConfig,
    #[serde(default)]
    pub source: crate::source::SourceConfig,
    #[serde(default)]
    pub sink: crate::sink::SinksConfig,
    #[serde(default)]
    pub budget: crate::budget::BudgetConfig,
    #[serde(default)]
    pub pipeline: crate::pipeline::PipelineConfig,
    /// Where the config came from (file path or "<embedded default>"); set by the loader.
    #[serde(skip)]
    pub origin: String,
    /// Directory that relative paths in the config are resolved against.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {}", one_line(.source))]
    Parse {
        path: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("config {path}: {} problem(s): {}", .problems.len(), .problems.iter().map(|p| format!("{}: {}", p.key, p.msg)).collect::<Vec<_>>().join("; "))]
    Invalid { path: String, problems: Vec<Problem> },
}

fn one_line(e: &toml::de::Error) -> String {
    // toml's Display is multi-line (with a source excerpt); keep the message and the line number.
    let msg = e.message().to_string();
    match e.span() {
        Some(_) => {
            let text = e.to_string();
            let loc = text.lines().next().unwrap_or("").trim().to_string();
            format!("{loc}: {msg}")
        }
        None => msg,
    }
}

impl Config {
    /// The embedded default, parsed and validated (relative paths resolve against the cwd).
    pub fn embedded_default() -> Result<Config, ConfigError> {
        Self::from_str(DEFAULT_TOML, "<embedded default>", Path::new("."))
    }

    /// Load and validate a config file. Relative paths inside resolve against the current
    /// directory (like a command line), not the file's folder.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::from_str(&text, &path.display().to_string(), Path::new("."))
    }

    /// Parse and validate TOML text.
    pub fn from_str(text: &str, origin: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: origin.to_string(), source: Box::new(e) })?;
        cfg.origin = origin.to_string();
        cfg.base_dir = base_dir.to_path_buf();
        let problems = cfg.validate();
        if !problems.0.is_empty() {
            return Err(ConfigError::Invalid { path: origin.to_string(), problems: problems.0 });
        }
        Ok(cfg)
    }

    /// Phase 2: all value checks, every problem collected.
    pub fn validate(&self) -> Problems {
        let mut p = Problems::default();
        self.model.validate(&mut p);
        self.reduce.validate(&mut p);
        self.reuse.validate(&mut p);
        self.source.validate(&mut p);
        self.sink.validate(&mut p);
        self.budget.validate(&mut p);
        self.pipeline.validate(&mut p);
        p
    }

    /// Resolve a path from the config against its base directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid_and_matches_struct_defaults() {
        let cfg = Config::embedded_default().unwrap();
        let mut plain: Config = toml::from_str("").unwrap();
        plain.origin = cfg.origin.clone();
        plain.base_dir = cfg.base_dir.clone();
        assert_eq!(cfg, plain, "configs/default.toml documents exactly the built-in defaults");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let e = Config::from_str("[sink.files]\nenabeld = true\n", "x.toml", Path::new(".")).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("x.toml") && s.contains("enabeld"), "{s}");
        assert!(!s.contains('\n'), "one line: {s}");
    }

    #[test]
    fn all_problems_are_collected() {
        let e = Config::from_str("[model]\ninput_size = 1\ndevice = \"tpu\"\n", "y.toml", Path::new(".")).unwrap_err();
        match e {
            ConfigError::Invalid { problems, .. } => {
                let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
                assert_eq!(keys, ["[model] input_size", "[model] device"]);
            }
            other => panic!("expected Invalid, got {other}"),
        }
    }
}
