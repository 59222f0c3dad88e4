//! The calibration table (measured cost and fidelity of each setting on one device) and the
//! measuring loop behind `ailurus calibrate`.
//!
//! Owns the CSV format, the shipped default table (configs/calibration-default.csv, used when
//! no calibration file exists) and the measuring loop, which is generic over `&mut dyn Engine`.
//! Fidelity is agreement with the highest setting (largest size, no reduction): mask IoU and
//! score MAE at frame resolution. Must not decide what to run: that is `budget.rs`.

use std::path::Path;

use super::BudgetConfig;
use crate::engine::{Engine, EngineError, FrameIo, Setting, SizeInfo};
use crate::frame::Frame;
use crate::model::io::FrameRunner;

/// The table shipped with the binary: estimates for the default model on a 2-core x86 CPU.
pub const DEFAULT_CSV: &str = include_str!("../../configs/calibration-default.csv");
const HEADER: &str = "input_size,m,n_tokens,cost_ms,iou,mae";

/// One measured setting.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalibRow {
    pub input_size: u32,
    pub m: usize,
    pub n_tokens: usize,
    /// Preprocess + inference, median over the sample frames.
    pub cost_ms: f64,
    /// Mean mask IoU against the highest setting (1 = identical).
    pub iou: f64,
    /// Mean absolute score difference against the highest setting (0 = identical).
    pub mae: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationTable {
    pub rows: Vec<CalibRow>,
    /// The file it came from, or "<shipped default>".
    pub origin: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    #[error("calibration table {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("calibration table {path} line {line}: {msg}")]
    Parse { path: String, line: usize, msg: String },
    #[error("calibration table {path}: no rows")]
    Empty { path: String },
}

impl CalibrationTable {
    /// Parse the CSV text (`#` comments, the header line, then one row per setting).
    pub fn parse(text: &str, origin: &str) -> Result<CalibrationTable, CalibError> {
        let mut rows = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') || line.replace(' ', "") == HEADER {
                continue;
            }
            let bad = |msg: String| CalibError::Parse { path: origin.to_string(), line: i + 1, msg };
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            if f.len() != 6 {
                return Err(bad(format!("{} fields, expected 6 ({HEADER})", f.len())));
            }
            let num = |k: usize| -> Result<f64, CalibError> {
                let v: f64 = f[k].parse().map_err(|_| bad(format!("{}: {:?} is not a number", field(k), f[k])))?;
                if !v.is_finite() || v < 0.0 {
                    return Err(bad(format!("{}: {v} must be finite and >= 0", field(k))));
                }
                Ok(v)
            };
            let int = |k: usize| -> Result<usize, CalibError> {
                f[k].parse().map_err(|_| bad(format!("{}: {:?} is not a whole number", field(k), f[k])))
            };
            let row = CalibRow {
                input_size: int(0)? as u32,
                m: int(1)?,
                n_tokens: int(2)?,
                cost_ms: num(3)?,
                iou: num(4)?,
                mae: num(5)?,
            };
            if row.m == 0 || row.n_tokens == 0 || row.m > row.n_tokens || row.cost_ms <= 0.0 || row.iou > 1.0 {
                return Err(bad("needs 0 < m <= n_tokens, cost_ms > 0 and iou <= 1".into()));
            }
            rows.push(row);
        }
        if rows.is_empty() {
            return Err(CalibError::Empty { path: origin.to_string() });
        }
        Ok(CalibrationTable { rows, origin: origin.to_string() })
    }

    pub fn load(path: &Path) -> Result<CalibrationTable, CalibError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| CalibError::Io { path: shown.clone(), source })?;
        Self::parse(&text, &shown)
    }

    pub fn shipped() -> CalibrationTable {
        Self::parse(DEFAULT_CSV, "<shipped default>").expect("the shipped calibration table parses")
    }

    /// The table at `path`, or the shipped one when no file is there (one log line). A file
    /// that exists but does not parse is an error.
    pub fn load_or_shipped(path: &Path) -> Result<CalibrationTable, CalibError> {
        if path.exists() {
            return Self::load(path);
        }
        log::info!(
            "no calibration table at {}: using the shipped defaults (run `ailurus calibrate` on this device)",
            path.display()
        );
        Ok(Self::shipped())
    }

    pub fn to_csv(&self, comment: &str) -> String {
        let mut s = String::new();
        for l in comment.lines() {
            s += &format!("# {l}\n");
        }
        s += HEADER;
        s.push('\n');
        for r in &self.rows {
            s += &format!("{},{},{},{:.1},{:.4},{:.5}\n", r.input_size, r.m, r.n_tokens, r.cost_ms, r.iou, r.mae);
        }
        s
    }

    /// Write atomically (temp file + rename).
    pub fn write(&self, path: &Path, comment: &str) -> Result<(), CalibError> {
        let io = |source| CalibError::Io { path: path.display().to_string(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("csv.tmp");
        std::fs::write(&tmp, self.to_csv(comment)).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Rows of one size, by increasing M.
    pub fn rows_for(&self, size: u32) -> Vec<CalibRow> {
        let mut v: Vec<CalibRow> = self.rows.iter().copied().filter(|r| r.input_size == size).collect();
        v.sort_by_key(|r| r.m);
        v
    }

    pub fn sizes(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.rows.iter().map(|r| r.input_size).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// (IoU, MAE) at `size` and `m`, linear in M between the rows of that size (clamped at the
    /// ends). None when the size is not in the table.
    pub fn fidelity(&self, size: u32, m: usize) -> Option<(f64, f64)> {
        let rows = self.rows_for(size);
        let m = m as f64;
        let first = rows.first()?;
        if m <= first.m as f64 {
            return Some((first.iou, first.mae));
        }
        for w in rows.windows(2) {
            let (a, b) = (w[0], w[1]);
            if m <= b.m as f64 {
                let t = (m - a.m as f64) / ((b.m - a.m) as f64).max(1e-9);
                return Some((a.iou + t * (b.iou - a.iou), a.mae + t * (b.mae - a.mae)));
            }
        }
        let last = rows.last()?;
        Some((last.iou, last.mae))
    }

    /// The cost curve of one size in u = M / N (see `budget::cost`).
    pub fn cost_curve(&self, size: u32) -> Option<super::cost::Quadratic> {
        let pts: Vec<(f64, f64)> =
            self.rows_for(size).iter().map(|r| (r.m as f64 / r.n_tokens as f64, r.cost_ms)).collect();
        super::cost::Quadratic::fit(&pts)
    }
}

fn field(k: usize) -> &'static str {
    ["input_size", "m", "n_tokens", "cost_ms", "iou", "mae"][k]
}

/// The settings `calibrate` measures: per ladder size, `points` values of M spread over
/// [m_min, m_max] (snapped to m_step), plus M = N when allowed. Only M = N without reduction.
pub fn calibration_settings(cfg: &BudgetConfig, sizes: &[SizeInfo], reducing: bool, points: usize) -> Vec<Setting> {
    let mut out = Vec::new();
    for s in sizes.iter().filter(|s| cfg.sizes.contains(&s.input_size)) {
        let grid = super::m_grid(cfg, s.n_tokens, reducing);
        let k = points.max(1).min(grid.len());
        let mut picked: Vec<usize> =
            (0..k).map(|i| grid[if k == 1 { grid.len() - 1 } else { i * (grid.len() - 1) / (k - 1) }]).collect();
        picked.dedup();
        out.extend(picked.into_iter().map(|m| Setting { input_size: s.input_size, m }));
    }
    out
}

/// Run every setting on every frame: cost (median preprocess + inference) and fidelity against
/// the highest setting (largest size, M = N). `progress(done, total)` after each run.
pub fn calibrate(
    engine: &mut dyn Engine,
    io: &dyn FrameIo,
    frames: &[Frame],
    settings: &[Setting],
    progress: &mut dyn FnMut(usize, usize),
) -> Result<CalibrationTable, EngineError> {
    let sizes = engine.sizes().to_vec();
    let top = sizes.iter().max_by_key(|s| s.input_size).ok_or(EngineError::NoPlan(0))?;
    let reference = Setting { input_size: top.input_size, m: top.n_tokens };
    let total = frames.len() * (settings.len() + 1) + sizes.len();
    let mut done = 0;
    let mut run = FrameRunner::default();
    let mut mask = Default::default();
    // One untimed run per size first: the first call of a plan pays for its allocations.
    if let Some(f) = frames.first() {
        for s in &sizes {
            run.run(io, engine, f, Setting { input_size: s.input_size, m: s.n_tokens }, &mut mask)?;
            done += 1;
            progress(done, total);
        }
    }
    let mut refs = Vec::with_capacity(frames.len());
    for f in frames {
        run.run(io, engine, f, reference, &mut mask)?;
        refs.push(mask.clone());
        done += 1;
        progress(done, total);
    }
    let mut rows = Vec::new();
    for &s in settings {
        let n = sizes.iter().find(|i| i.input_size == s.input_size).ok_or(EngineError::NoPlan(s.input_size))?.n_tokens;
        let (mut costs, mut iou, mut mae) = (Vec::new(), 0.0, 0.0);
        for (f, r) in frames.iter().zip(&refs) {
            run.run(io, engine, f, s, &mut mask)?;
            costs.push((run.times.preprocess + run.times.inference()).as_secs_f64() * 1e3);
            iou += crate::eval::iou(&mask.classes, &r.classes);
            mae += crate::eval::mae(&mask.scores, &r.scores);
            done += 1;
            progress(done, total);
        }
        costs.sort_by(f64::total_cmp);
        let k = frames.len().max(1) as f64;
        rows.push(CalibRow {
            input_size: s.input_size,
            m: s.m.min(n),
            n_tokens: n,
            cost_ms: costs.get(costs.len() / 2).copied().unwrap_or(f64::NAN),
            iou: iou / k,
            mae: mae / k,
        });
    }
    Ok(CalibrationTable { rows, origin: "<measured>".into() })
}
