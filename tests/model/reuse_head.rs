//! The reuse path's own head (issue #19, `src/reuse/head/`): its full run equals the tract head
//! plan (tiny model, and the real one at 224 and 448 where fetched); a partial run after a
//! change of one token, a block, border and corner tokens equals a full run on the same tokens;
//! identical tokens recompute nothing; a reuse lane with the own head equals one with the tract
//! head plan.

use crate::common;

use std::path::PathBuf;
use std::sync::Arc;

use ailurus::engine::StageTimes;
use ailurus::model::Segmenter;
use ailurus::reuse::head::{HeadCache, HeadExec, HeadStats, HeadWeights};
use ailurus::reuse::{ReuseConfig, ReuseModel};

use common::{max_abs_diff, uniform};

fn model(manifest: &std::path::Path, sizes: &[u32]) -> Arc<ReuseModel> {
    let opts = super::reuse::options(sizes);
    let seg = Arc::new(Segmenter::load(manifest, &opts).unwrap());
    Arc::new(ReuseModel::new(seg).unwrap())
}

fn tiny() -> PathBuf {
    common::root().join("tests/data/tiny_vit.toml")
}

/// The own head's full run on fresh caches.
fn full_run(w: &Arc<HeadWeights>, toks: &[f32], grid: (usize, usize), size: u32) -> Vec<f32> {
    let (mut exec, mut cache, mut out) = (HeadExec::new(w.clone()), HeadCache::default(), Vec::new());
    let st = exec.run(&mut cache, toks, 1, grid, size, true, &mut out).unwrap();
    assert!(st.full && st.macs_fraction == 1.0 && st.out_fraction == 1.0);
    out
}

/// Largest difference relative to `want`'s largest magnitude (at least 1).
fn rel_diff(want: &[f32], got: &[f32]) -> f32 {
    max_abs_diff(want, got) / want.iter().fold(1f32, |m, x| m.max(x.abs()))
}

fn own_vs_tract(manifest: &std::path::Path, sizes: &[u32]) {
    let m = model(manifest, sizes);
    let w = m.head_weights().expect("the model's head parses").clone();
    for &s in sizes {
        let grid = m.grid(s).unwrap();
        let toks = uniform((1 + grid.0 * grid.1) * w.width, s as u64);
        let want = m.tract_head(s, &toks).unwrap();
        let got = full_run(&w, &toks, grid, s);
        let d = rel_diff(&want, &got);
        eprintln!("{}: own head vs tract head plan at {s}: {d:.2e}", manifest.display());
        assert!(d <= 1e-4, "{s} px: own head differs from the tract head plan by {d}");
    }
}

#[test]
fn own_head_full_run_equals_the_tract_head_plan_on_the_tiny_model() {
    own_vs_tract(&tiny(), &[56, 224]);
}

#[test]
fn real_model_own_head_full_run_equals_the_tract_head_plan() {
    let Some(manifest) = common::real_manifest() else {
        return;
    };
    own_vs_tract(&manifest, &[224, 448]);
}

/// The token changes of the partial-run tests on an `h x w` grid (name, tokens).
fn changes(h: usize, w: usize) -> Vec<(&'static str, Vec<(usize, usize)>)> {
    let block: Vec<_> = (3..9).flat_map(|y| (2..7).map(move |x| (y, x))).collect();
    vec![
        ("one token", vec![(h / 2, w / 2)]),
        ("a block", block),
        ("border tokens", vec![(0, w / 2), (h - 1, w - 1 - w / 3), (h / 3, 0), (h / 2 + 1, w - 1)]),
        ("corners", vec![(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]),
        ("one token again", vec![(h / 2, w / 2)]),
        ("all tokens", (0..h).flat_map(|y| (0..w).map(move |x| (y, x))).collect()),
    ]
}

/// Apply the changes one after the other (each frame builds on the last): each partial run must
/// equal a full run on the same tokens, and recompute less than all for the small changes.
fn partial_equals_full(w: &Arc<HeadWeights>, grid: (usize, usize), size: u32, full_above: f32) {
    let (c, (h, wd)) = (w.width, grid);
    let mut toks = uniform((1 + h * wd) * c, 7);
    let (mut exec, mut cache, mut out) = (HeadExec::new(w.clone()), HeadCache::default(), Vec::new());
    exec.full_above = full_above;
    exec.run(&mut cache, &toks, 1, grid, size, false, &mut out).unwrap();
    for (k, (name, set)) in changes(h, wd).into_iter().enumerate() {
        let delta = uniform(c, 100 + k as u64);
        for &(y, x) in &set {
            toks[(1 + y * wd + x) * c..][..c].iter_mut().zip(&delta).for_each(|(t, d)| *t += d);
        }
        // The cls token is not the head's input: changing it changes nothing.
        toks[0] += 1.0;
        let st = exec.run(&mut cache, &toks, 1, grid, size, false, &mut out).unwrap();
        let want = full_run(w, &toks, grid, size);
        let d = rel_diff(&want, &out);
        eprintln!("{grid:?} at {size}, full_above {full_above}, {name}: {st:?}, |partial - full| {d:.2e}");
        assert!(d <= 1e-5, "{grid:?} {name} (full_above {full_above}): partial differs from full by {d}");
        assert_eq!(st.changed_tokens, set.len(), "{name}");
        assert!(!st.full);
        if set.len() < 8 {
            assert!(st.macs_fraction > 0.0 && st.macs_fraction < 0.6, "{name}: {st:?}");
            assert!(st.out_fraction > 0.0 && st.out_fraction < 0.5, "{name}: {st:?}");
        }
    }
}

#[test]
fn partial_head_equals_the_full_head_on_a_three_layer_head() {
    // Grid sides not multiples of the tile, not square; with and without the whole-layer
    // fallback.
    let w = Arc::new(HeadWeights::synthetic(12, &[10, 8, 6], 2, false, 3));
    for full_above in [0.5, 1.0] {
        partial_equals_full(&w, (20, 13), 150, full_above);
    }
    let w = Arc::new(HeadWeights::synthetic(12, &[10, 8, 6], 1, true, 4));
    partial_equals_full(&w, (17, 17), 224, 1.0);
}

#[test]
fn real_model_partial_head_equals_the_full_head_at_224() {
    let Some(manifest) = common::real_manifest() else {
        return;
    };
    let m = model(&manifest, &[224]);
    partial_equals_full(m.head_weights().unwrap(), m.grid(224).unwrap(), 224, 1.0);
}

#[test]
fn identical_tokens_recompute_nothing() {
    let w = Arc::new(HeadWeights::synthetic(12, &[10, 8], 1, true, 5));
    let (grid, size) = ((9, 11), 100);
    let toks = uniform((1 + 99) * 12, 9);
    let (mut exec, mut cache, mut out) = (HeadExec::new(w.clone()), HeadCache::default(), Vec::new());
    assert!(exec.run(&mut cache, &toks, 1, grid, size, false, &mut out).unwrap().full, "empty cache: full run");
    // A sentinel in the output: nothing may be written.
    out.iter_mut().for_each(|v| *v = -7.0);
    let st = exec.run(&mut cache, &toks, 1, grid, size, false, &mut out).unwrap();
    assert_eq!(st, HeadStats::default());
    assert!(!st.ran());
    assert!(out.iter().all(|&v| v == -7.0));
    // A refresh forces a full run; so does another size.
    assert!(exec.run(&mut cache, &toks, 1, grid, size, true, &mut out).unwrap().full);
    assert!(out.iter().all(|&v| v != -7.0));
    assert!(exec.run(&mut cache, &toks, 1, grid, 112, false, &mut out).unwrap().full);
    assert_eq!(out.len(), 112 * 112);
}

/// A reuse lane with the own head (exact: `head_threshold` 0) against one with the tract head
/// plan, over frames with small changes at a threshold above 0 (so the own head runs partially).
fn lane_own_vs_tract(manifest: &std::path::Path, s: u32, frames: usize, tol: f32) {
    let m = model(manifest, &[s]);
    let cfg = ReuseConfig {
        enabled: true,
        threshold: 0.05,
        refresh_every: 0,
        refresh_iou: 0.0,
        refresh_above: 1.0,
        scene_cut: 1e9,
        head_threshold: 0.0,
        ..ReuseConfig::default()
    };
    let (mut own, mut tract) = (m.lane(cfg.clone()).unwrap(), m.lane(cfg).unwrap());
    tract.set_own_head(false);
    let mut x = common::noise_image(s, 11);
    let n = s as usize / 14;
    let (mut partial, mut a, mut b) = (0, Vec::new(), Vec::new());
    for f in 0..frames {
        let (row, col) = ((3 * f + 1) % n, (5 * f + 2) % n);
        for ch in 0..3 {
            for yy in row * 14..(row + 1) * 14 {
                for xx in col * 14..(col + 1) * 14 {
                    x[(ch * s as usize + yy) * s as usize + xx] += 0.7;
                }
            }
        }
        let r = own.infer(&x, s, &mut StageTimes::default(), &mut a).unwrap().clone();
        tract.infer(&x, s, &mut StageTimes::default(), &mut b).unwrap();
        partial += (r.head.ran() && !r.head.full) as usize;
        let d = max_abs_diff(&b, &a);
        eprintln!("{} at {s}, frame {f}: {:?}, |own - tract| {d:.2e}", manifest.display(), r.head);
        assert!(d <= tol, "frame {f}: the own head's lane differs from the tract head's by {d}");
    }
    assert!(partial > 0, "no frame ran the head partially");
}

#[test]
fn a_reuse_lane_with_the_own_head_equals_one_with_the_tract_head_plan() {
    lane_own_vs_tract(&tiny(), 224, 6, 1e-5);
}

#[test]
fn real_model_reuse_lane_with_the_own_head_equals_one_with_the_tract_head_plan() {
    let Some(manifest) = common::real_manifest() else {
        return;
    };
    lane_own_vs_tract(&manifest, 448, 3, 1e-4);
}

/// The bf16 variant (`[model] precision = "bf16"`): partial equals full in bf16 too, and bf16 is
/// within its rounding of f32.
#[test]
fn partial_head_equals_the_full_head_in_bf16() {
    let f32_head = Arc::new(HeadWeights::synthetic(24, &[16, 12, 8], 1, false, 6));
    let w = Arc::new(f32_head.with_bf16_taps());
    partial_equals_full(&w, (19, 14), 160, 1.0);
    let toks = uniform((1 + 19 * 14) * 24, 8);
    let (a, b) = (full_run(&f32_head, &toks, (19, 14), 160), full_run(&w, &toks, (19, 14), 160));
    let d = rel_diff(&a, &b);
    eprintln!("bf16 vs f32 head: {d:.2e}");
    assert!(d > 0.0 && d < 2e-2, "bf16 vs f32: {d}");
}

/// `head_threshold`: tokens that moved less than the gate keep their cached value (the output is
/// the full head on the cached grid), those that moved more are taken and recomputed.
#[test]
fn the_head_gate_keeps_small_changes_out() {
    let w = Arc::new(HeadWeights::synthetic(12, &[10, 8], 1, false, 12));
    let (grid, size, c) = ((12, 10), 96, 12);
    let old = uniform((1 + 120) * c, 13);
    let (mut exec, mut cache, mut out) = (HeadExec::new(w.clone()), HeadCache::default(), Vec::new());
    exec.gate = 0.1;
    exec.run(&mut cache, &old, 1, grid, size, false, &mut out).unwrap();
    let mut new = old.clone();
    let (small, big) = (1 + 3 * 10 + 4, 1 + 8 * 10 + 7);
    // Token `small` moves by 1% (kept out), token `big` by 50% (taken).
    new[small * c..][..c].iter_mut().for_each(|v| *v *= 1.01);
    new[big * c..][..c].iter_mut().for_each(|v| *v *= 1.5);
    let st = exec.run(&mut cache, &new, 1, grid, size, false, &mut out).unwrap();
    assert_eq!(st.changed_tokens, 1);
    let mut seen = old.clone();
    seen[big * c..][..c].copy_from_slice(&new[big * c..][..c]);
    let d = rel_diff(&full_run(&w, &seen, grid, size), &out);
    assert!(d <= 1e-5, "gated head vs full head on the cached grid: {d}");
    assert!(rel_diff(&full_run(&w, &new, grid, size), &out) > 1e-5, "the small change was kept out");
    // The small change accumulates against the cached value: at 10% (1.01^10) it is taken.
    for _ in 0..9 {
        new[small * c..][..c].iter_mut().for_each(|v| *v *= 1.01);
    }
    assert_eq!(exec.run(&mut cache, &new, 1, grid, size, false, &mut out).unwrap().changed_tokens, 1);
    assert!(rel_diff(&full_run(&w, &new, grid, size), &out) <= 1e-5);
}
