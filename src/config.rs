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
    /// `[streams.NAME]`: several named sources in one process (each table is a whole
    /// `[source]`); empty: the one `[source]`.
    #[serde(default)]
    pub streams: std::collections::BTreeMap<String, crate::source::SourceConfig>,
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
        self.validate_streams(&mut p);
        self.sink.validate(&mut p);
        self.budget.validate(&mut p);
        self.pipeline.validate(&mut p);
        p
    }

    /// `[streams.*]`: names fit paths, topics and labels; each table is checked as a `[source]`,
    /// its problems named `[streams.NAME...]`.
    fn validate_streams(&self, p: &mut Problems) {
        if self.streams.is_empty() {
            p.check(self.source.target_ms.is_none(), "source", "target_ms", || {
                "is for [streams.NAME] tables; one source keeps [budget] target_ms".into()
            });
            return;
        }
        p.check(self.source == crate::source::SourceConfig::default(), "source", "kind", || {
            "[source] is not used when [streams.*] lists the sources: move it into a [streams.NAME] table".into()
        });
        for (name, src) in &self.streams {
            let ok = (1..=32).contains(&name.len())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            p.check(ok, &format!("streams.{name}"), "name", || {
                "a stream name is 1-32 of a-z A-Z 0-9 _ - (it becomes a folder, a topic level and a label)".into()
            });
            let mut own = Problems::default();
            src.validate(&mut own);
            for mut problem in own.0 {
                problem.key = problem.key.replacen("[source", &format!("[streams.{name}"), 1);
                p.0.push(problem);
            }
        }
    }

    /// The sources to run, named: the `[streams.*]` tables in name order, or the one `[source]`
    /// with the empty name.
    pub fn sources(&self) -> Vec<(String, &crate::source::SourceConfig)> {
        if self.streams.is_empty() {
            vec![(String::new(), &self.source)]
        } else {
            self.streams.iter().map(|(n, s)| (n.clone(), s)).collect()
        }
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
    fn streams_are_named_sources_checked_like_source() {
        let text = "[streams.front]\nkind = \"gstreamer\"\n[streams.front.gstreamer]\nuri = \"rtsp://a/1\"\n\
                    [streams.back]\nkind = \"synthetic\"\n";
        let cfg = Config::from_str(text, "s.toml", Path::new(".")).unwrap();
        let names: Vec<String> = cfg.sources().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["back", "front"]);
        let bad = "[streams.\"a b\"]\nkind = \"gstreamer\"\n[streams.c]\nfps = -1.0\n[source]\nkind = \"v4l\"\n";
        let e = Config::from_str(bad, "s.toml", Path::new(".")).unwrap_err().to_string();
        for key in ["[streams.a b] name", "[streams.a b.gstreamer] uri", "[streams.c] fps", "[source] kind"] {
            assert!(e.contains(key), "{key} in {e}");
        }
        let one = Config::from_str("", "o.toml", Path::new(".")).unwrap();
        assert_eq!(one.sources().len(), 1);
        assert_eq!(one.sources()[0].0, "");
    }

    #[test]
    fn a_stream_may_have_its_own_latency_target() {
        let text = "[streams.a]\nkind = \"synthetic\"\ntarget_ms = 120.0\n[streams.b]\nkind = \"synthetic\"\n";
        let cfg = Config::from_str(text, "t.toml", Path::new(".")).unwrap();
        assert_eq!(cfg.streams["a"].target_ms, Some(120.0));
        assert_eq!(cfg.streams["b"].target_ms, None, "default: [budget] target_ms");
        let bad = "[streams.a]\nkind = \"synthetic\"\ntarget_ms = -5.0\n[streams.b]\ntarget_ms = 0.0\n";
        let e = Config::from_str(bad, "t.toml", Path::new(".")).unwrap_err().to_string();
        for key in ["[streams.a] target_ms", "[streams.b] target_ms"] {
            assert!(e.contains(key), "{key} in {e}");
        }
        let one = Config::from_str("[source]\ntarget_ms = 100.0\n", "t.toml", Path::new(".")).unwrap_err();
        assert!(one.to_string().contains("[source] target_ms"), "{one}");
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
