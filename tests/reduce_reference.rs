//! Every CPU reducer against a slow, obviously-correct reference written here (plain loops, f64,
//! the direct distance formula, no GEMM) on seeded random tokens, plus invariants, tie-breaking
//! determinism, hand-computed window cases and a no-allocation-when-warm check.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ailurus::reduce::ailurus::{jitter, AilurusReducer};
use ailurus::reduce::grid::GridReducer;
use ailurus::reduce::tome::TomeReducer;
use ailurus::reduce::{build, unfold, AilurusConfig, ReduceConfig, Reducer, Reduction};

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

// ---------------------------------------------------------------- data

/// splitmix64 -> uniform in [-1, 1).
fn uniform(s: &mut u64) -> f32 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

fn iid(n: usize, c: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n * c).map(|_| uniform(&mut s) * 2.0 + 0.5).collect()
}

/// Voronoi regions of a few seeds (one base vector each) plus noise: like ViT features.
fn regions(h: usize, w: usize, c: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let seeds: Vec<(f32, f32, Vec<f32>)> = (0..6)
        .map(|_| {
            let y = (uniform(&mut s) + 1.0) * h as f32 / 2.0;
            let x = (uniform(&mut s) + 1.0) * w as f32 / 2.0;
            (y, x, (0..c).map(|_| uniform(&mut s) * 3.0).collect())
        })
        .collect();
    let mut t = Vec::with_capacity(h * w * c);
    for i in 0..h * w {
        let (y, x) = ((i / w) as f32, (i % w) as f32);
        let d = |p: &(f32, f32, Vec<f32>)| (p.0 - y).powi(2) + (p.1 - x).powi(2);
        let near = seeds.iter().min_by(|a, b| d(a).total_cmp(&d(b))).unwrap();
        t.extend(near.2.iter().map(|&v| v + 0.4 * uniform(&mut s)));
    }
    t
}

/// Tokens drawn from a palette of 3 vectors: many exact duplicates.
fn palette(n: usize, c: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let pal: Vec<Vec<f32>> = (0..3).map(|_| (0..c).map(|_| uniform(&mut s)).collect()).collect();
    (0..n).flat_map(|_| pal[((uniform(&mut s) + 1.0) * 1.5) as usize % 3].clone()).collect()
}

// ---------------------------------------------------------------- shared checks

fn cheb(i: usize, j: usize, w: usize) -> usize {
    let (yi, xi, yj, xj) = (i / w, i % w, j / w, j % w);
    yi.abs_diff(yj).max(xi.abs_diff(xj))
}

fn row(t: &[f32], c: usize, i: usize) -> &[f32] {
    &t[i * c..(i + 1) * c]
}

/// Member means and counts of an assignment, in f64.
fn ref_means(t: &[f32], c: usize, assign: &[usize], m: usize) -> (Vec<f64>, Vec<f64>) {
    let mut sum = vec![0.0f64; m * c];
    let mut cnt = vec![0.0f64; m];
    for (i, &a) in assign.iter().enumerate() {
        cnt[a] += 1.0;
        for k in 0..c {
            sum[a * c + k] += t[i * c + k] as f64;
        }
    }
    for a in 0..m {
        for k in 0..c {
            sum[a * c + k] /= cnt[a];
        }
    }
    (sum, cnt)
}

/// Invariants of every reduction, then merged/sizes/unfold against the f64 member means.
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

// ---------------------------------------------------------------- ailurus reference

#[derive(Clone, Copy)]
struct Knobs {
    k: usize,
    r: usize,
    delta_window: Option<usize>,
    spatial: bool,
}

impl Knobs {
    fn config(&self) -> AilurusConfig {
        AilurusConfig {
            k: self.k,
            radius: self.r,
            delta: if self.delta_window.is_some() { "window" } else { "global" }.into(),
            delta_radius: self.delta_window.unwrap_or(8),
            fallback: if self.spatial { "spatial" } else { "global" }.into(),
        }
    }
}

fn ref_dist(t: &[f32], c: usize, i: usize, j: usize) -> f64 {
    if i == j {
        return 0.0;
    }
    let s: f64 = row(t, c, i).iter().zip(row(t, c, j)).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    (s / c as f64).sqrt()
}

/// rho_i = exp(-mean of the k smallest D^2 over the window of i).
fn ref_rho(t: &[f32], c: usize, (h, w): (usize, usize), kn: Knobs) -> Vec<f64> {
    (0..h * w)
        .map(|i| {
            let mut d2: Vec<f64> =
                (0..h * w).filter(|&j| cheb(i, j, w) <= kn.r).map(|j| ref_dist(t, c, i, j).powi(2)).collect();
            d2.sort_by(f64::total_cmp);
            let kk = kn.k.min(d2.len());
            (-(d2[..kk].iter().sum::<f64>() / kk as f64)).exp()
        })
        .collect()
}

/// The spec's order: key_i = rho_i + 1e-6 u(i) (f32, as the spec defines it), higher first,
/// ties to the lower index.
fn ref_order(rho: &[f32]) -> Vec<usize> {
    let key: Vec<f32> = rho.iter().enumerate().map(|(i, &r)| r + 1e-6 * jitter(i)).collect();
    let mut order: Vec<usize> = (0..rho.len()).collect();
    order.sort_by(|&a, &b| key[b].total_cmp(&key[a]).then(a.cmp(&b)));
    order
}

/// delta for a given density order (j is higher than i iff it comes earlier).
fn ref_delta(t: &[f32], c: usize, (h, w): (usize, usize), kn: Knobs, order: &[usize]) -> Vec<f64> {
    let n = h * w;
    let mut pos = vec![0; n];
    for (p, &i) in order.iter().enumerate() {
        pos[i] = p;
    }
    (0..n)
        .map(|i| {
            let higher = |j: usize| pos[j] < pos[i];
            let mut cand: Vec<usize> = match kn.delta_window {
                Some(dr) => (0..n).filter(|&j| cheb(i, j, w) <= dr && higher(j)).collect(),
                None => vec![],
            };
            if cand.is_empty() {
                cand = (0..n).filter(|&j| higher(j)).collect();
            }
            if cand.is_empty() {
                (0..n).map(|j| ref_dist(t, c, i, j)).fold(0.0, f64::max)
            } else {
                cand.iter().map(|&j| ref_dist(t, c, i, j)).fold(f64::INFINITY, f64::min)
            }
        })
        .collect()
}

/// The m best scores (ties: lower index), ascending.
fn ref_top(score: &[f64], m: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..score.len()).collect();
    idx.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    let mut top = idx[..m.min(score.len())].to_vec();
    top.sort();
    top
}

/// Cluster id of every token for the given centres, by the spec's assignment rule.
fn ref_assign(t: &[f32], c: usize, (h, w): (usize, usize), kn: Knobs, centers: &[usize]) -> Vec<usize> {
    let nearest = |ids: &mut dyn Iterator<Item = usize>, f: &dyn Fn(usize) -> f64| {
        let mut best: Option<(usize, f64)> = None;
        for id in ids {
            let v = f(centers[id]);
            if best.is_none_or(|(_, bv)| v < bv) {
                best = Some((id, v));
            }
        }
        best.map(|b| b.0)
    };
    (0..h * w)
        .map(|i| {
            if let Some(id) = centers.iter().position(|&ct| ct == i) {
                return id;
            }
            let dist = |ct: usize| ref_dist(t, c, i, ct);
            let inside = &mut (0..centers.len()).filter(|&id| cheb(i, centers[id], w) <= kn.r);
            if let Some(id) = nearest(inside, &dist) {
                return id;
            }
            let sp =
                |ct: usize| ((ct / w) as f64 - (i / w) as f64).powi(2) + ((ct % w) as f64 - (i % w) as f64).powi(2);
            nearest(&mut (0..centers.len()), if kn.spatial { &sp } else { &dist }).unwrap()
        })
        .collect()
}

/// The whole spec in one go (f64 rho rounded to f32 for the key).
fn ref_ailurus(t: &[f32], c: usize, g: (usize, usize), m: usize, kn: Knobs) -> (Vec<usize>, Vec<usize>) {
    let rho = ref_rho(t, c, g, kn);
    let order = ref_order(&rho.iter().map(|&r| r as f32).collect::<Vec<_>>());
    let delta = ref_delta(t, c, g, kn, &order);
    let score: Vec<f64> = rho.iter().zip(&delta).map(|(r, d)| r * d).collect();
    let centers = ref_top(&score, m);
    let assign = ref_assign(t, c, g, kn, &centers);
    (centers, assign)
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
    for i in 0..n {
        assert!((r.rho()[i] as f64 - rho[i]).abs() < 1e-5, "{what}: rho[{i}] {} vs {}", r.rho()[i], rho[i]);
    }
    // Order: exactly the spec's order of the implementation's rho.
    let order: Vec<usize> = r.order().iter().map(|&o| o as usize).collect();
    assert_eq!(order, ref_order(r.rho()), "{what}: order");
    // Delta for that order: D^2 within the cancellation error, a few 2^-23 (|x|^2 + |y|^2) / C.
    let delta = ref_delta(t, c, g, kn, &order);
    let scale = (0..n).map(|i| row(t, c, i).iter().map(|&v| (v as f64).powi(2)).sum::<f64>()).fold(0.0, f64::max);
    let tol_d2 = 1e-6 * (1.0 + scale / c as f64);
    for i in 0..n {
        let d = r.delta()[i] as f64;
        assert!((d * d - delta[i] * delta[i]).abs() < tol_d2, "{what}: delta[{i}] {d} vs {}", delta[i]);
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
    for i in 0..n {
        let (got, exp) = (out.assign[i] as usize, want[i]);
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
    let mut r = AilurusReducer::new(&AilurusConfig::default());
    let mut out = Reduction::default();
    r.reduce(&t, c, (h, w), m, &mut out).unwrap();
    assert_eq!(out.centers, (0..m as u32).collect::<Vec<_>>());
    for i in 0..h * w {
        let want = if i < m { i } else { (0..m).find(|&id| cheb(i, id, w) <= 2).unwrap_or(0) } as u32;
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

// ---------------------------------------------------------------- tome reference

/// ToMe rounds on f64 copies, exactly as documented in `reduce::tome`.
fn ref_tome(t: &[f32], c: usize, n0: usize, m: usize) -> (Vec<usize>, Vec<usize>) {
    // (value, size, members); the list stays in ascending smallest-member order.
    let mut cur: Vec<(Vec<f64>, f64, Vec<usize>)> =
        (0..n0).map(|i| (row(t, c, i).iter().map(|&v| v as f64).collect(), 1.0, vec![i])).collect();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    while cur.len() > m {
        let n = cur.len();
        let a: Vec<usize> = (0..n).step_by(2).collect();
        let b: Vec<usize> = (1..n).step_by(2).collect();
        let cos = |p: usize, q: usize| {
            let (x, y) = (&cur[p].0, &cur[q].0);
            x.iter().zip(y).map(|(u, v)| u * v).sum::<f64>() / (norm(x) * norm(y))
        };
        let best: Vec<(usize, f64)> = a
            .iter()
            .map(|&p| {
                let mut bq = 0;
                for q in 1..b.len() {
                    if cos(p, b[q]) > cos(p, b[bq]) {
                        bq = q;
                    }
                }
                (bq, cos(p, b[bq]))
            })
            .collect();
        let r = (n - m).min(a.len());
        let mut byscore: Vec<usize> = (0..a.len()).collect();
        byscore.sort_by(|&x, &y| best[y].1.total_cmp(&best[x].1).then(x.cmp(&y)));
        let chosen = &byscore[..r];
        let mut next: Vec<(Vec<f64>, f64, Vec<usize>)> = Vec::new();
        for (pi, &p) in a.iter().enumerate() {
            if !chosen.contains(&pi) {
                next.push(cur[p].clone());
            }
        }
        for (qi, &q) in b.iter().enumerate() {
            let mut sum: Vec<f64> = cur[q].0.iter().map(|v| v * cur[q].1).collect();
            let (mut size, mut members) = (cur[q].1, cur[q].2.clone());
            for (pi, &p) in a.iter().enumerate() {
                if chosen.contains(&pi) && best[pi].0 == qi {
                    sum.iter_mut().zip(&cur[p].0).for_each(|(s, v)| *s += v * cur[p].1);
                    size += cur[p].1;
                    members.extend(&cur[p].2);
                }
            }
            next.push((sum.iter().map(|s| s / size).collect(), size, members));
        }
        next.sort_by_key(|e| *e.2.iter().min().unwrap());
        cur = next;
    }
    let mut assign = vec![0; n0];
    for (id, e) in cur.iter().enumerate() {
        for &i in &e.2 {
            assign[i] = id;
        }
    }
    (assign, cur.iter().map(|e| *e.2.iter().min().unwrap()).collect())
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
