//! Every CPU reducer against a slow, obviously-correct reference (tests/reduce/refs.rs: plain
//! loops, f64, the direct distance formula, no GEMM) on seeded random tokens, plus invariants,
//! tie-breaking determinism, hand-computed window cases and a no-allocation-when-warm check; and
//! `ailurus` bit for bit against the CUDA side's reference of the arithmetic contract
//! (tests/reduce/cuda_reference.rs), so the CPU and GPU reducers give identical results.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use crate::refs;

/// The CUDA side's CPU reference of the arithmetic contract (kernels/ailurus.cu).
use crate::cuda_reference as contract;

use ailurus::reduce::ailurus::AilurusReducer;
use ailurus::reduce::grid::GridReducer;
use ailurus::reduce::tome::TomeReducer;
use ailurus::reduce::{build, unfold, AilurusConfig, ReduceConfig, Reducer, Reduction};
use refs::*;

// ---------------------------------------------------------------- allocation counter

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
}

// SAFETY: forwards to the system allocator; only counts calls on the current thread.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        count();
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        count();
        System.alloc_zeroed(l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, size: usize) -> *mut u8 {
        count();
        System.realloc(p, l, size)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> usize {
    ALLOCS.with(|a| a.get())
}

// ---------------------------------------------------------------- shared checks

fn check_output(what: &str, t: &[f32], c: usize, n: usize, out: &Reduction) {
    let m = out.m;
    assert_eq!(out.c, c, "{what}: c");
    assert!(m >= 1 || n == 0, "{what}: m = 0");
    assert_eq!(out.assign.len(), n, "{what}: assign length");
    assert_eq!(out.centers.len(), m, "{what}: centers length");
    assert_eq!(out.sizes.len(), m, "{what}: sizes length");
    assert!(out.merged.len() >= m * c, "{what}: merged length");
    assert!(out.assign.iter().all(|&a| (a as usize) < m), "{what}: assign out of range");
    assert!(out.centers.windows(2).all(|p| p[0] < p[1]), "{what}: centres not ascending");
    for (id, &ctr) in out.centers.iter().enumerate() {
        assert_eq!(out.assign[ctr as usize] as usize, id, "{what}: centre {ctr} not in its cluster {id}");
    }
    let assign: Vec<usize> = out.assign.iter().map(|&a| a as usize).collect();
    let (means, cnt) = ref_means(t, c, &assign, m);
    assert!(cnt.iter().all(|&s| s >= 1.0), "{what}: empty cluster");
    assert_eq!(out.sizes.iter().map(|&s| s as f64).sum::<f64>(), n as f64, "{what}: sizes sum");
    for a in 0..m {
        assert_eq!(out.sizes[a] as f64, cnt[a], "{what}: size of {a}");
        for k in 0..c {
            let (got, want) = (out.merged[a * c + k] as f64, means[a * c + k]);
            assert!((got - want).abs() <= 1e-5 * want.abs().max(1.0), "{what}: merged[{a}][{k}] {got} vs {want}");
        }
    }
    let mut full = vec![0.0f32; n * c];
    unfold(&out.merged, c, &out.assign, &mut full);
    for i in 0..n {
        assert_eq!(row(&full, c, i), row(&out.merged, c, out.assign[i] as usize), "{what}: unfold {i}");
    }
}

/// The grids of the reference sweeps: (h, w), including 1 x N and non-square.
const GRIDS: &[(usize, usize)] = &[(1, 1), (1, 9), (1, 40), (7, 1), (5, 8), (9, 6), (12, 12), (16, 20)];

fn budgets(n: usize) -> Vec<usize> {
    let mut ms = vec![1, 2, 5, n / 2, n.saturating_sub(1), n, n + 3];
    ms.retain(|&m| m >= 1);
    ms.sort();
    ms.dedup();
    ms
}

/// Stage by stage against the reference. Each stage is checked exactly on the implementation's
/// own inputs (order of its rho, top-M of its scores, assignment to its centres); where f32
/// and f64 can disagree (the |x|^2 + |y|^2 - 2 x.y cancellation), a different decision is only
/// accepted when the f64 values it chose between are within the measured f32 error.
fn compare_ailurus(what: &str, t: &[f32], c: usize, g: (usize, usize), m: usize, kn: Knobs) {
    let n = g.0 * g.1;
    let mut r = AilurusReducer::new(&kn.config());
    let mut out = Reduction::default();
    r.reduce(t, c, g, m, &mut out).unwrap();
    check_output(what, t, c, n, &out);
    assert_eq!(out.m, m.min(n), "{what}: m");
    if m >= n {
        assert_eq!(out.assign, (0..n as u32).collect::<Vec<_>>(), "{what}: M >= N is the identity");
        assert_eq!(&out.merged[..n * c], t, "{what}: identity merged");
        return;
    }
    // Density: within f32 error.
    let rho = ref_rho(t, c, g, kn);
    for (i, (&got, &want)) in r.rho().iter().zip(&rho).enumerate() {
        assert!((got as f64 - want).abs() < 1e-5, "{what}: rho[{i}] {} vs {}", got, want);
    }
    // Order: exactly the spec's order of the implementation's rho.
    let order: Vec<usize> = r.order().iter().map(|&o| o as usize).collect();
    assert_eq!(order, ref_order(r.rho()), "{what}: order");
    // Delta for that order: D^2 within the f32 error of |x|^2 + |y|^2 - 2 x.y with sequential
    // sums (the contract): about 2^-24 sqrt(C) (|x|^2 + |y|^2) / C, with a margin of 4.
    let delta = ref_delta(t, c, g, kn, &order);
    let scale = (0..n).map(|i| row(t, c, i).iter().map(|&v| (v as f64).powi(2)).sum::<f64>()).fold(0.0, f64::max);
    let tol_d2 = 6e-8 * 4.0 * (2.0 + (c as f64).sqrt()) * 2.0 * (1.0 + scale / c as f64);
    for (i, &want) in delta.iter().enumerate() {
        let d = r.delta()[i] as f64;
        assert!((d * d - want * want).abs() < tol_d2, "{what}: delta[{i}] {d} vs {}", want);
        assert_eq!(r.score()[i], r.rho()[i] * r.delta()[i], "{what}: score[{i}]");
    }
    // Centres: exactly the top M of the implementation's scores; against the f64 scores, a
    // swap only between scores closer than their measured errors.
    let centers: Vec<usize> = out.centers.iter().map(|&x| x as usize).collect();
    let own: Vec<f64> = r.score().iter().map(|&s| s as f64).collect();
    assert_eq!(centers, ref_top(&own, m), "{what}: centres vs own scores");
    let score: Vec<f64> = rho.iter().zip(&delta).map(|(r, d)| r * d).collect();
    let want = ref_top(&score, m);
    let err = |i: usize| (own[i] - score[i]).abs() + 1e-7;
    for &u in want.iter().filter(|u| !centers.contains(u)) {
        for &ch in centers.iter().filter(|ch| !want.contains(ch)) {
            assert!(
                score[u] - score[ch] <= err(u) + err(ch),
                "{what}: centre {ch} instead of {u} ({} vs {})",
                score[ch],
                score[u]
            );
        }
    }
    // Assignment to the implementation's centres: a different centre only at a near-tie.
    let want = ref_assign(t, c, g, kn, &centers);
    for (i, &exp) in want.iter().enumerate() {
        let got = out.assign[i] as usize;
        if got != exp {
            let (dg, de) = (ref_dist(t, c, i, centers[got]), ref_dist(t, c, i, centers[exp]));
            let both_inside = cheb(i, centers[got], g.1) <= kn.r && cheb(i, centers[exp], g.1) <= kn.r;
            let global_fallback = !kn.spatial && !centers.iter().any(|&ct| cheb(i, ct, g.1) <= kn.r);
            assert!(
                (both_inside || global_fallback) && (dg * dg - de * de).abs() < 2.0 * tol_d2,
                "{what}: token {i} joined {got} (D {dg}) instead of {exp} (D {de})"
            );
        }
    }
}

const KNOBS: &[Knobs] = &[
    Knobs { k: 5, r: 2, delta_window: None, spatial: false },
    Knobs { k: 3, r: 1, delta_window: None, spatial: true },
    Knobs { k: 9, r: 3, delta_window: Some(2), spatial: false },
    Knobs { k: 1, r: 1, delta_window: Some(4), spatial: true },
];

#[test]
fn ailurus_matches_the_reference_on_random_tokens() {
    let mut seed = 1;
    for &g in GRIDS {
        let n = g.0 * g.1;
        for c in [1, 3, 8, 24] {
            for (ki, &kn) in KNOBS.iter().enumerate() {
                for (di, t) in [regions(g.0, g.1, c, seed), iid(n, c, seed + 7)].iter().enumerate() {
                    seed += 1;
                    for m in budgets(n) {
                        let what = format!("ailurus {g:?} c={c} knobs#{ki} data#{di} m={m}");
                        compare_ailurus(&what, t, c, g, m, kn);
                    }
                }
            }
        }
    }
}

#[test]
fn ailurus_is_bit_identical_to_the_cuda_contract_reference() {
    // tests/reduce/cuda_reference.rs follows the arithmetic contract of kernels/ailurus.cu line by line
    // (the GPU is checked against it); the CPU reducer must give the same bits, ties included:
    // quantised and blocky inputs make exact ties in distances, densities and scores.
    let params = [
        contract::Params::default(),
        contract::Params { windowed: true, delta_radius: 3, ..Default::default() },
        contract::Params { spatial: true, k: 1, r: 1, ..Default::default() },
        contract::Params { k: 9, r: 3, ..Default::default() },
        contract::Params { spread: 0, ..Default::default() },
        contract::Params { spread: 3, spatial: true, r: 1, ..Default::default() },
    ];
    let mut cases = 0;
    for (gi, &g) in [(1, 1), (1, 9), (7, 1), (5, 8), (12, 10), (16, 16)].iter().enumerate() {
        let n = g.0 * g.1;
        for (ci, &c) in [1usize, 13, 40].iter().enumerate() {
            for (di, &(smooth, levels, blocks)) in
                [(0.0, 0, 1), (0.8, 0, 1), (0.5, 4, 1), (0.7, 0, 3)].iter().enumerate()
            {
                let seed = (gi * 100 + ci * 10 + di) as u64;
                let x = contract::blocky_tokens(seed, g, c, smooth, levels, blocks);
                for (pi, &p) in params.iter().enumerate() {
                    for m in [1, 7, n / 2, n - 1, n] {
                        let m = m.max(1);
                        let what = format!("{g:?} c={c} data#{di} params#{pi} m={m}");
                        let want = contract::reference(&x, c, g, m, p);
                        let mut r = AilurusReducer::new(&contract_cfg(p));
                        let mut out = Reduction::default();
                        r.reduce(&x, c, g, m, &mut out).unwrap();
                        let got = contract::RefOut {
                            centers: out.centers.clone(),
                            assign: out.assign.clone(),
                            sizes: out.sizes.clone(),
                            merged: out.merged[..out.m * c].to_vec(),
                            rho: want.rho.clone(),
                            delta: want.delta.clone(),
                        };
                        contract::compare(&got, &want, 0.0).unwrap_or_else(|e| panic!("{what}: {e}"));
                        assert_eq!(bits(&got.merged), bits(&want.merged), "{what}: merged bits");
                        if m < n {
                            assert_eq!(bits(r.rho()), bits(&want.rho), "{what}: rho bits");
                            assert_eq!(bits(r.delta()), bits(&want.delta), "{what}: delta bits");
                        }
                        cases += 1;
                    }
                }
            }
        }
    }
    assert!(cases > 400);
    // And at model size: C = 384, a 24 x 20 grid.
    let (g, c) = ((24, 20), 384);
    let x = contract::tokens(9, g, c, 0.6, 0);
    for m in [1, 120, 240] {
        let want = contract::reference(&x, c, g, m, contract::Params::default());
        let mut r = AilurusReducer::new(&AilurusConfig::default());
        let mut out = Reduction::default();
        r.reduce(&x, c, g, m, &mut out).unwrap();
        assert_eq!((&out.centers, &out.assign, &out.sizes), (&want.centers, &want.assign, &want.sizes), "m={m}");
        assert_eq!((bits(r.rho()), bits(r.delta())), (bits(&want.rho), bits(&want.delta)), "m={m}");
    }
}

#[test]
fn spread_keeps_a_centre_in_every_block_and_the_best_scores_besides() {
    // 20 x 24 tokens, spread 2: 120 blocks of 2 x 2. At M >= 120 every block holds a centre; at
    // M = 60 the blocks grow to 3 x 3 (7 x 8 = 56 <= 60) and every 3 x 3 block holds one.
    let (g, c) = ((20, 24), 16);
    let x = contract::tokens(4, g, c, 0.7, 0);
    let mut r = AilurusReducer::new(&AilurusConfig { spread: 2, ..AilurusConfig::default() });
    let mut out = Reduction::default();
    for (m, side) in [(400, 2), (120, 2), (119, 3), (60, 3)] {
        assert_eq!(ailurus::reduce::spread_block(2, g, m), side, "m={m}");
        r.reduce(&x, c, g, m, &mut out).unwrap();
        assert_eq!(out.centers.len(), m);
        let score = r.score();
        let mut forced = vec![false; g.0 * g.1];
        for by in (0..g.0).step_by(side) {
            for bx in (0..g.1).step_by(side) {
                let cells: Vec<usize> = (by..(by + side).min(g.0))
                    .flat_map(|y| (bx..(bx + side).min(g.1)).map(move |x| y * g.1 + x))
                    .collect();
                // The block's best score (ties: lower index) is the centre it keeps.
                let best = *cells.iter().max_by(|&&a, &&b| score[a].total_cmp(&score[b]).then(b.cmp(&a))).unwrap();
                forced[best] = true;
            }
        }
        // The other centres are the best scores among the rest.
        let mut rest: Vec<u32> = (0..(g.0 * g.1) as u32).filter(|&i| !forced[i as usize]).collect();
        rest.sort_by(|&a, &b| score[b as usize].total_cmp(&score[a as usize]).then(a.cmp(&b)));
        let k = m - forced.iter().filter(|&&f| f).count();
        let mut want: Vec<u32> =
            (0..(g.0 * g.1) as u32).filter(|&i| forced[i as usize]).chain(rest[..k].iter().copied()).collect();
        want.sort_unstable();
        assert_eq!(out.centers, want, "m={m}");
    }
    // Off (0): the plain top-M, as the paper.
    let mut plain = AilurusReducer::new(&AilurusConfig { spread: 0, ..AilurusConfig::default() });
    plain.reduce(&x, c, g, 100, &mut out).unwrap();
    let mut top: Vec<u32> = (0..(g.0 * g.1) as u32).collect();
    top.sort_by(|&a, &b| plain.score()[b as usize].total_cmp(&plain.score()[a as usize]).then(a.cmp(&b)));
    top.truncate(100);
    top.sort_unstable();
    assert_eq!(out.centers, top);
}

fn contract_cfg(p: contract::Params) -> AilurusConfig {
    AilurusConfig {
        k: p.k,
        radius: p.r,
        delta: if p.windowed { "window" } else { "global" }.into(),
        delta_radius: p.delta_radius,
        fallback: if p.spatial { "spatial" } else { "global" }.into(),
        spread: p.spread,
    }
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn ailurus_matches_the_reference_at_model_size() {
    // One ViT-like case: C = 384 (not a multiple of the tile), 24 x 20 grid, every budget kind.
    let (g, c) = ((24, 20), 384);
    let t = regions(g.0, g.1, c, 99);
    for m in [1, 7, 240, 479] {
        compare_ailurus(&format!("ailurus model-size m={m}"), &t, c, g, m, KNOBS[0]);
    }
    let t = iid(g.0 * g.1, 100, 5);
    compare_ailurus("ailurus c=100 window", &t, 100, g, 60, KNOBS[2]);
}

#[test]
fn ailurus_density_window_is_exactly_radius_r() {
    // 1 x 7, C = 1, k large: rho_i averages D^2 over |j - i| <= r exactly. Off by one either way
    // changes every value below.
    let v = [0.0f32, 1.0, 3.0, 6.0, 10.0, 15.0, 21.0];
    let cfg = AilurusConfig { k: 100, radius: 2, ..AilurusConfig::default() };
    let mut r = AilurusReducer::new(&cfg);
    r.density_peaks(&v, 1, (1, 7)).unwrap();
    for i in 0..7usize {
        let js: Vec<usize> = (i.saturating_sub(2)..=(i + 2).min(6)).collect();
        let mean = js.iter().map(|&j| (v[j] as f64 - v[i] as f64).powi(2)).sum::<f64>() / js.len() as f64;
        let want = (-mean).exp();
        // f32 relative error of exp(-x) is about x * 2^-24; x reaches 52 here.
        assert!((r.rho()[i] as f64 - want).abs() < 2e-5 * want, "rho[{i}] {} vs {want}", r.rho()[i]);
    }
    // k counts self: k = 2 on a 2-D grid picks self plus the single nearest neighbour.
    let t = [0.0f32, 0.5, 3.0, 0.25, 9.0, 9.0];
    let cfg = AilurusConfig { k: 2, radius: 1, ..AilurusConfig::default() };
    let mut r = AilurusReducer::new(&cfg);
    r.density_peaks(&t, 1, (2, 3)).unwrap();
    assert!((r.rho()[0] - (-(0.25f32 * 0.25) / 2.0).exp()).abs() < 1e-7, "rho[0] = {}", r.rho()[0]);
    assert!((r.rho()[4] - 1.0).abs() < 1e-7 && (r.rho()[5] - 1.0).abs() < 1e-7);
}

#[test]
fn ailurus_assignment_window_is_exactly_radius_r() {
    // 1 x 10, C = 1, r = 2, k = 3, M = 2. Token 8 is the density peak, token 1 the second peak
    // of the other group: centres {1, 8}. Token 3 (value near centre 8) is at grid distance
    // exactly 2 from centre 1: inside, so it joins 1 (a window of 1 would send it to 8).
    // Token 5 is at distance 3 from centre 8: outside, so it falls back; the global fallback
    // sends it to centre 1 by value (a window of 3 would give 8), the spatial one to 8.
    let t = [-0.02f32, 0.0, 0.02, 0.98, 0.45, 0.03, 0.55, 1.02, 1.0, 0.985];
    for (fallback, want) in
        [("global", [0u32, 0, 0, 0, 0, 0, 1, 1, 1, 1]), ("spatial", [0u32, 0, 0, 0, 0, 1, 1, 1, 1, 1])]
    {
        let cfg = AilurusConfig { k: 3, radius: 2, fallback: fallback.into(), ..AilurusConfig::default() };
        let mut r = AilurusReducer::new(&cfg);
        let mut out = Reduction::default();
        r.reduce(&t, 1, (1, 10), 2, &mut out).unwrap();
        assert_eq!(out.centers, vec![1, 8], "{fallback}: centres");
        assert_eq!(out.assign, want, "{fallback}: assignment");
        let kn = Knobs { k: 3, r: 2, delta_window: None, spatial: fallback == "spatial" };
        let (_, reference) = ref_ailurus(&t, 1, (1, 10), 2, kn);
        assert_eq!(reference, want.iter().map(|&a| a as usize).collect::<Vec<_>>(), "{fallback}: reference");
    }
}

#[test]
fn ailurus_identical_tokens_follow_the_tie_rules() {
    // All tokens equal: every D is exactly 0, so every score is 0 and the centres are the M
    // lowest indices; each token joins the lowest-id centre in its window, else (global
    // fallback, all distances 0) centre 0.
    let (h, w, c, m) = (6, 7, 10, 5);
    let t: Vec<f32> = (0..h * w).flat_map(|_| (0..c).map(|k| k as f32 * 0.37 - 1.0)).collect();
    // The paper's plain top-M (with `spread` the coverage blocks' first tokens come first; the
    // contract test covers that).
    let cfg = AilurusConfig { spread: 0, ..AilurusConfig::default() };
    let mut r = AilurusReducer::new(&cfg);
    let mut out = Reduction::default();
    r.reduce(&t, c, (h, w), m, &mut out).unwrap();
    assert_eq!(out.centers, (0..m as u32).collect::<Vec<_>>());
    for i in 0..h * w {
        let want = if i < m { i } else { (0..m).find(|&id| cheb(i, id, w) <= cfg.radius).unwrap_or(0) } as u32;
        assert_eq!(out.assign[i], want, "token {i}");
    }
    assert!(r.delta().iter().all(|&d| d == 0.0));
}

#[test]
fn ailurus_duplicates_are_deterministic_and_valid() {
    for (seed, &g) in GRIDS.iter().enumerate() {
        let n = g.0 * g.1;
        let t = palette(n, 6, seed as u64);
        for &kn in KNOBS {
            let mut reused = AilurusReducer::new(&kn.config());
            for m in budgets(n) {
                let mut a = Reduction::default();
                let mut b = Reduction::default();
                reused.reduce(&t, 6, g, m, &mut a).unwrap();
                AilurusReducer::new(&kn.config()).reduce(&t, 6, g, m, &mut b).unwrap();
                let what = format!("ailurus duplicates {g:?} m={m}");
                check_output(&what, &t, 6, n, &a);
                assert_eq!((&a.assign, &a.centers, &a.merged), (&b.assign, &b.centers, &b.merged), "{what}");
            }
        }
    }
}

#[test]
fn ailurus_m_equal_n_is_the_identity() {
    let t = regions(5, 6, 7, 3);
    let mut out = Reduction::default();
    AilurusReducer::new(&AilurusConfig::default()).reduce(&t, 7, (5, 6), 30, &mut out).unwrap();
    assert_eq!((out.m, out.sizes.clone()), (30, vec![1.0; 30]));
    assert_eq!(out.assign, (0..30).collect::<Vec<u32>>());
    assert_eq!(out.centers, (0..30).collect::<Vec<u32>>());
    assert_eq!(out.merged, t);
}

#[test]
fn tome_matches_the_reference_on_random_tokens() {
    let mut seed = 500;
    for &g in GRIDS {
        let n = g.0 * g.1;
        // C >= 4: with C = 1 every cosine is +-1, and with C = 2 near-ties (cos ~ 1 - 1e-7) are
        // common enough for f32 and f64 to match differently.
        for c in [4, 9, 33] {
            for t in [regions(g.0, g.1, c, seed), iid(n, c, seed + 1)] {
                seed += 2;
                let mut reused = TomeReducer::default();
                for m in budgets(n) {
                    let what = format!("tome {g:?} c={c} m={m}");
                    let mut out = Reduction::default();
                    reused.reduce(&t, c, g, m, &mut out).unwrap();
                    check_output(&what, &t, c, n, &out);
                    assert_eq!(out.m, m.min(n), "{what}: m");
                    let (assign, centers) = ref_tome(&t, c, n, m.min(n));
                    assert_eq!(out.assign.iter().map(|&a| a as usize).collect::<Vec<_>>(), assign, "{what}");
                    assert_eq!(out.centers.iter().map(|&a| a as usize).collect::<Vec<_>>(), centers, "{what}");
                }
            }
        }
    }
}

#[test]
fn tome_exact_ties_follow_the_tie_rules() {
    // Sign vectors in C = 4: every cosine is exactly one of -1, -1/2, 0, 1/2, 1 in f32 and in
    // f64 alike, so best matches (ties: lower B) and the merge order (ties: lower A) are
    // decided by the tie rules alone. One round (M >= N/2) keeps the values exact.
    for (seed, &g) in GRIDS.iter().enumerate() {
        let n = g.0 * g.1;
        let mut s = 77 + seed as u64;
        let t: Vec<f32> = (0..n * 4).map(|_| if uniform(&mut s) < 0.0 { -1.0 } else { 1.0 }).collect();
        for m in [n - 1, n.saturating_sub(2), n / 2 + 1, n / 2] {
            if m == 0 || m >= n {
                continue;
            }
            let mut out = Reduction::default();
            TomeReducer::default().reduce(&t, 4, g, m, &mut out).unwrap();
            check_output(&format!("tome signs {g:?} m={m}"), &t, 4, n, &out);
            let (assign, centers) = ref_tome(&t, 4, n, m);
            assert_eq!(out.assign.iter().map(|&a| a as usize).collect::<Vec<_>>(), assign, "{g:?} m={m}");
            assert_eq!(out.centers.iter().map(|&a| a as usize).collect::<Vec<_>>(), centers, "{g:?} m={m}");
        }
    }
}

#[test]
fn tome_duplicates_are_deterministic_and_valid() {
    let (g, c) = ((9, 6), 5);
    let t = palette(54, c, 11);
    for m in budgets(54) {
        let mut a = Reduction::default();
        let mut b = Reduction::default();
        TomeReducer::default().reduce(&t, c, g, m, &mut a).unwrap();
        TomeReducer::default().reduce(&t, c, g, m, &mut b).unwrap();
        check_output(&format!("tome duplicates m={m}"), &t, c, 54, &a);
        assert_eq!((&a.assign, &a.merged), (&b.assign, &b.merged));
    }
}

// ---------------------------------------------------------------- grid reference

#[test]
fn grid_matches_the_reference() {
    for (si, &g) in GRIDS.iter().enumerate() {
        let (h, w) = g;
        let n = h * w;
        let c = 3;
        let t = iid(n, c, 900 + si as u64);
        for m in budgets(n) {
            let what = format!("grid {g:?} m={m}");
            let mut out = Reduction::default();
            GridReducer.reduce(&t, c, g, m, &mut out).unwrap();
            check_output(&what, &t, c, n, &out);
            if m >= n {
                assert_eq!(out.assign, (0..n as u32).collect::<Vec<_>>(), "{what}");
                continue;
            }
            let s = (2..).find(|&s: &usize| h.div_ceil(s) * w.div_ceil(s) <= m).unwrap();
            assert!(s == 2 || h.div_ceil(s - 1) * w.div_ceil(s - 1) > m, "{what}: s not minimal");
            let want: Vec<u32> = (0..n).map(|i| ((i / w / s) * w.div_ceil(s) + (i % w) / s) as u32).collect();
            assert_eq!(out.assign, want, "{what}");
            assert_eq!(out.m, h.div_ceil(s) * w.div_ceil(s), "{what}");
            assert!(out.m <= m, "{what}: over budget");
        }
    }
}

// ---------------------------------------------------------------- all strategies

#[test]
fn build_returns_every_configured_strategy() {
    for name in ["ailurus", "tome", "grid", "none"] {
        let r = build(&ReduceConfig { strategy: name.into(), ..ReduceConfig::default() });
        assert_eq!(r.name(), name);
    }
}

#[test]
fn shape_errors_name_the_reducer() {
    for name in ["ailurus", "tome", "grid"] {
        let mut r = build(&ReduceConfig { strategy: name.into(), ..ReduceConfig::default() });
        let err = r.reduce(&[0.0; 10], 2, (2, 3), 2, &mut Reduction::default()).unwrap_err();
        assert!(err.to_string().contains(name), "{err}");
        assert!(r.reduce(&[], 0, (0, 3), 2, &mut Reduction::default()).is_err());
    }
}

#[test]
fn a_warm_reducer_does_not_allocate() {
    let (g, c) = ((12, 15), 40);
    let n = g.0 * g.1;
    let strategies: Vec<(&str, Box<dyn Reducer>)> = vec![
        ("ailurus", Box::new(AilurusReducer::new(&KNOBS[0].config()))),
        ("ailurus window/spatial", Box::new(AilurusReducer::new(&KNOBS[3].config()))),
        ("ailurus window/global", Box::new(AilurusReducer::new(&KNOBS[2].config()))),
        ("tome", Box::new(TomeReducer::default())),
        ("grid", Box::new(GridReducer)),
        ("none", build(&ReduceConfig { strategy: "none".into(), ..ReduceConfig::default() })),
    ];
    // Different data on the warm call: data-dependent paths (fallbacks, rounds) must not grow.
    let warm = regions(g.0, g.1, c, 1);
    let datasets = [iid(n, c, 2), palette(n, c, 3), regions(g.0, g.1, c, 4)];
    for (name, mut r) in strategies {
        for m in [1, 9, n / 2, n] {
            let mut out = Reduction::default();
            r.reduce(&warm, c, g, m, &mut out).unwrap();
            for t in &datasets {
                let before = allocs();
                r.reduce(t, c, g, m, &mut out).unwrap();
                assert_eq!(allocs() - before, 0, "{name} m={m}: allocated when warm");
            }
        }
    }
}
