//! The slow, obviously-correct references of `reduce_reference.rs` (plain loops, f64, the
//! direct distance formula, no GEMM) and its seeded data generators.

use ailurus::reduce::ailurus::jitter;
use ailurus::reduce::AilurusConfig;

// ---------------------------------------------------------------- data

/// splitmix64 -> uniform in [-1, 1).
pub fn uniform(s: &mut u64) -> f32 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

pub fn iid(n: usize, c: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n * c).map(|_| uniform(&mut s) * 2.0 + 0.5).collect()
}

/// Voronoi regions of a few seeds (one base vector each) plus noise: like ViT features.
pub fn regions(h: usize, w: usize, c: usize, seed: u64) -> Vec<f32> {
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
pub fn palette(n: usize, c: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    let pal: Vec<Vec<f32>> = (0..3).map(|_| (0..c).map(|_| uniform(&mut s)).collect()).collect();
    (0..n).flat_map(|_| pal[((uniform(&mut s) + 1.0) * 1.5) as usize % 3].clone()).collect()
}

// ---------------------------------------------------------------- helpers

pub fn cheb(i: usize, j: usize, w: usize) -> usize {
    let (yi, xi, yj, xj) = (i / w, i % w, j / w, j % w);
    yi.abs_diff(yj).max(xi.abs_diff(xj))
}

pub fn row(t: &[f32], c: usize, i: usize) -> &[f32] {
    &t[i * c..(i + 1) * c]
}

/// Member means and counts of an assignment, in f64.
pub fn ref_means(t: &[f32], c: usize, assign: &[usize], m: usize) -> (Vec<f64>, Vec<f64>) {
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
// ---------------------------------------------------------------- ailurus reference

#[derive(Clone, Copy)]
pub struct Knobs {
    pub k: usize,
    pub r: usize,
    pub delta_window: Option<usize>,
    pub spatial: bool,
}

impl Knobs {
    pub fn config(&self) -> AilurusConfig {
        AilurusConfig {
            k: self.k,
            radius: self.r,
            delta: if self.delta_window.is_some() { "window" } else { "global" }.into(),
            delta_radius: self.delta_window.unwrap_or(8),
            fallback: if self.spatial { "spatial" } else { "global" }.into(),
            // The paper's plain top-M (the coverage blocks are checked against the contract
            // reference, `cuda_reference.rs`).
            spread: 0,
        }
    }
}

pub fn ref_dist(t: &[f32], c: usize, i: usize, j: usize) -> f64 {
    if i == j {
        return 0.0;
    }
    let s: f64 = row(t, c, i).iter().zip(row(t, c, j)).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    (s / c as f64).sqrt()
}

/// rho_i = exp(-mean of the k smallest D^2 over the window of i).
pub fn ref_rho(t: &[f32], c: usize, (h, w): (usize, usize), kn: Knobs) -> Vec<f64> {
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
pub fn ref_order(rho: &[f32]) -> Vec<usize> {
    let key: Vec<f32> = rho.iter().enumerate().map(|(i, &r)| r + 1e-6 * jitter(i)).collect();
    let mut order: Vec<usize> = (0..rho.len()).collect();
    order.sort_by(|&a, &b| key[b].total_cmp(&key[a]).then(a.cmp(&b)));
    order
}

/// delta for a given density order (j is higher than i iff it comes earlier).
pub fn ref_delta(t: &[f32], c: usize, (h, w): (usize, usize), kn: Knobs, order: &[usize]) -> Vec<f64> {
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
pub fn ref_top(score: &[f64], m: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..score.len()).collect();
    idx.sort_by(|&a, &b| score[b].total_cmp(&score[a]).then(a.cmp(&b)));
    let mut top = idx[..m.min(score.len())].to_vec();
    top.sort();
    top
}

/// Cluster id of every token for the given centres, by the spec's assignment rule.
pub fn ref_assign(t: &[f32], c: usize, (h, w): (usize, usize), kn: Knobs, centers: &[usize]) -> Vec<usize> {
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
pub fn ref_ailurus(t: &[f32], c: usize, g: (usize, usize), m: usize, kn: Knobs) -> (Vec<usize>, Vec<usize>) {
    let rho = ref_rho(t, c, g, kn);
    let order = ref_order(&rho.iter().map(|&r| r as f32).collect::<Vec<_>>());
    let delta = ref_delta(t, c, g, kn, &order);
    let score: Vec<f64> = rho.iter().zip(&delta).map(|(r, d)| r * d).collect();
    let centers = ref_top(&score, m);
    let assign = ref_assign(t, c, g, kn, &centers);
    (centers, assign)
}

// ---------------------------------------------------------------- tome reference

/// ToMe rounds on f64 copies, exactly as documented in `reduce::tome`.
pub fn ref_tome(t: &[f32], c: usize, n0: usize, m: usize) -> (Vec<usize>, Vec<usize>) {
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
