//! The calibration table (format, errors, interpolation), `calibrate` over a fake engine, and
//! the `[budget]` config keys.

use std::time::Duration;

use crate::support::{FakeEngine, FakeLane};
use ailurus::budget::calibration::{calibrate, calibration_settings};
use ailurus::budget::{m_grid, BudgetConfig};
use ailurus::budget::{CalibError, CalibrationTable};
use ailurus::config::Config;
use ailurus::engine::Setting;
use ailurus::frame::Frame;

#[test]
fn shipped_table_covers_the_default_ladder_and_round_trips() {
    let t = CalibrationTable::shipped();
    let cfg = BudgetConfig::default();
    for &s in &cfg.sizes {
        let n = ((s / 14) * (s / 14)) as usize;
        assert_eq!(t.fidelity(s, n).map(|f| f.0 > 0.0), Some(true), "{s}");
        assert!(t.cost_curve(s).is_some());
    }
    assert_eq!(t.fidelity(448, 1024), Some((1.0, 0.0)), "448 unreduced is the reference");
    let back = CalibrationTable::parse(&t.to_csv("a comment\nover two lines"), "x").unwrap();
    assert_eq!(back.rows.len(), t.rows.len());
    for (a, b) in back.rows.iter().zip(&t.rows) {
        assert_eq!((a.input_size, a.m, a.n_tokens), (b.input_size, b.m, b.n_tokens));
        assert!((a.cost_ms - b.cost_ms).abs() < 0.06 && (a.iou - b.iou).abs() < 1e-4);
    }
}

#[test]
fn parse_errors_name_the_file_line_and_field() {
    let cases = [
        (
            "input_size,m,n_tokens,cost_ms,iou,mae\n448,512,1024,abc,0.9,0.1\n",
            "t.csv line 2: cost_ms: \"abc\" is not a number",
        ),
        ("# c\n448,512,1024,10\n", "t.csv line 2: 4 fields, expected 6"),
        ("448,2048,1024,10,0.9,0.1\n", "t.csv line 1: needs 0 < m <= n_tokens"),
        ("448,512,1024,10,1.5,0.1\n", "t.csv line 1: needs 0 < m <= n_tokens, cost_ms > 0 and iou <= 1"),
        ("448,x,1024,10,0.9,0.1\n", "t.csv line 1: m: \"x\" is not a whole number"),
        ("# nothing\n", "calibration table t.csv: no rows"),
    ];
    for (text, want) in cases {
        let e = CalibrationTable::parse(text, "t.csv").unwrap_err();
        assert!(e.to_string().contains(want), "{e} lacks {want}");
    }
    let e = CalibrationTable::load(std::path::Path::new("/nonexistent/cal.csv")).unwrap_err();
    assert!(matches!(e, CalibError::Io { .. }) && e.to_string().contains("/nonexistent/cal.csv"));
}

#[test]
fn missing_file_falls_back_to_the_shipped_table_but_a_broken_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cal.csv");
    assert_eq!(CalibrationTable::load_or_shipped(&path).unwrap().origin, "<shipped default>");
    std::fs::write(&path, "448,1,1\n").unwrap();
    assert!(CalibrationTable::load_or_shipped(&path).is_err());
    let t = CalibrationTable::parse(crate::support::TABLE, "t").unwrap();
    t.write(&path, "written by a test").unwrap();
    let back = CalibrationTable::load_or_shipped(&path).unwrap();
    assert_eq!(back.rows, t.rows);
    assert!(std::fs::read_to_string(&path).unwrap().starts_with("# written by a test\n"));
}

#[test]
fn fidelity_interpolates_in_m_and_clamps() {
    let t = CalibrationTable::parse(crate::support::TABLE, "t").unwrap();
    assert_eq!(t.fidelity(56, 16), Some((1.0, 0.0)));
    let (iou, mae) = t.fidelity(56, 12).unwrap();
    assert!((iou - 0.95).abs() < 1e-12 && (mae - 0.025).abs() < 1e-12);
    assert_eq!(t.fidelity(56, 2), Some((0.8, 0.08)), "below the first row: clamped");
    assert_eq!(t.fidelity(57, 16), None);
}

#[test]
fn calibrate_measures_fidelity_against_the_highest_setting() {
    let eng = std::sync::Arc::new(FakeEngine::new(Duration::ZERO));
    let frames: Vec<Frame> = (0..3).map(|i| Frame::new(i, 20, 10)).collect();
    let cfg = BudgetConfig { sizes: vec![56, 28], m_min: 4, m_max: 16, m_step: 4, ..BudgetConfig::default() };
    let settings = calibration_settings(&cfg, eng.sizes(), true, 3);
    assert_eq!(
        settings,
        vec![
            Setting { input_size: 56, m: 4 },
            Setting { input_size: 56, m: 8 },
            Setting { input_size: 56, m: 16 },
            Setting { input_size: 28, m: 4 },
        ]
    );
    let mut calls = 0;
    let t = calibrate(&mut FakeLane(eng.clone()), &*eng, &frames, &settings, &mut |_, _| calls += 1).unwrap();
    assert_eq!(calls, 2 + 3 + 4 * 3, "warm-up per size, references, then every setting x frame");
    let row = |s: u32, m: usize| *t.rows.iter().find(|r| r.input_size == s && r.m == m).unwrap();
    // The fake keeps size/56 * M/N of the mask's pixels salient: IoU = that fraction.
    assert_eq!(row(56, 16).iou, 1.0);
    assert_eq!(row(56, 16).mae, 0.0);
    for (s, m, frac) in [(56, 8, 0.5), (56, 4, 0.25), (28, 4, 0.5)] {
        let r = row(s, m);
        assert!((r.iou - frac).abs() < 0.02, "{s}/{m}: {r:?}");
        assert!((r.mae - (1.0 - frac)).abs() < 0.02, "{s}/{m}: {r:?}");
        assert!(r.cost_ms > 0.0);
    }
    // Without reduction only M = N is measured.
    assert_eq!(calibration_settings(&cfg, eng.sizes(), false, 3).len(), 2);
}

#[test]
fn m_grid_snaps_to_the_step_and_adds_n() {
    let c = BudgetConfig { m_min: 100, m_max: 1024, m_step: 64, ..BudgetConfig::default() };
    assert_eq!(m_grid(&c, 400, true), vec![128, 192, 256, 320, 384, 400]);
    let c = BudgetConfig { m_min: 100, m_max: 300, m_step: 64, ..BudgetConfig::default() };
    assert_eq!(m_grid(&c, 400, true), vec![128, 192, 256]);
    assert_eq!(m_grid(&c, 400, false), vec![400]);
}

#[test]
fn default_config_has_the_budget_on_and_bad_keys_are_named() {
    let cfg = Config::embedded_default().unwrap();
    assert!(cfg.budget.enabled);
    assert_eq!(cfg.budget, BudgetConfig::default(), "configs/default.toml and BudgetConfig::default agree");
    let bad = "[budget]\nsizes = [448, 448]\nm_min = 0\nm_max = 0\nmargin = 1.5\npercentile = 0\n";
    let e = Config::from_str(bad, "bad.toml", std::path::Path::new(".")).unwrap_err().to_string();
    for want in ["[budget] sizes", "[budget] m_min", "[budget] margin", "[budget] percentile"] {
        assert!(e.contains(want), "{e} lacks {want}");
    }
    let e = Config::from_str("[budget]\nsize = [1]\n", "typo.toml", std::path::Path::new(".")).unwrap_err();
    assert!(e.to_string().contains("size"), "{e}");
    let p = Config::from_str("[pipeline]\nsink_queue = 0\n", "p.toml", std::path::Path::new(".")).unwrap_err();
    assert!(p.to_string().contains("[pipeline] sink_queue"), "{p}");
}
